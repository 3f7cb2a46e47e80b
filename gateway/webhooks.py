"""Stripe events: record each verified event once, and apply it exactly once.

A delivery (already verified by `gateway.providers.stripe.webhook`) is read into a
provider-neutral event (`gateway.providers.read_event`) and handled in one
transaction: the event is applied (`gateway.settlement` for invoices, `gateway.returns`
for refunds, credit notes and disputes) and its row, keyed by
the Stripe event id, written with the outcome in one upsert that refuses to touch
an event already processed or ignored. When it refuses, the delivery is a repeat
and its transaction is rolled back, so a repeat changes nothing, and the answer
is the stored outcome. An effect and "this event is done" commit together or not
at all.

A refund or dispute names a payment: when no purchase has stored it yet, the provider
is asked which invoice it paid (and, for a `charge.refunded` that does not list them,
the payment's refunds) before the transaction opens, never while a lock is held.

Concurrent deliveries of one event are serialised by settlement's row locks (wallet,
then purchase) and by the primary key: the second waits for the first to commit,
then its upsert finds the event done, and it is rolled back like any repeat.

If applying raises, that transaction rolls back and the failure (error, attempts)
is recorded in a transaction of its own, inserting the row if need be; the caller
answers 500 and Stripe delivers the event again later, which applies it again.
Operators re-run stored events with `gateway webhooks replay`.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from datetime import datetime, timedelta
from itertools import islice
from typing import Any, cast

from sqlalchemy import Table, bindparam, func, select
from sqlalchemy.dialects.postgresql import insert as postgresql_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.engine import Connection

from gateway import metrics, returns, settlement
from gateway.db import Database, in_batches
from gateway.errors import DomainError, NotFound
from gateway.models import Purchase, WebhookEvent, WebhookEventStatus
from gateway.providers import get_provider, read_event
from gateway.providers.base import (
    CreditNoteChanged,
    DisputeChanged,
    InvoiceChanged,
    InvoicePaymentFailed,
    InvoicePaymentMade,
    OtherEvent,
    ProviderEvent,
    Refund,
    RefundsChanged,
)

log = logging.getLogger(__name__)

_DONE = frozenset({WebhookEventStatus.PROCESSED, WebhookEventStatus.IGNORED})
_MAX_ERROR_CHARS = 2000


class LivemodeMismatch(DomainError):
    code = "livemode_mismatch"


class EventProcessingFailed(Exception):
    """Processing raised; the failure is recorded on the event row."""

    def __init__(self, event_id: str, error: str) -> None:
        super().__init__(f"event {event_id} failed: {error}")
        self.event_id = event_id
        self.error = error


@dataclass(frozen=True)
class EventResult:
    event_id: str
    type: str
    status: WebhookEventStatus
    duplicate: bool = False  # already processed or ignored: nothing was done
    detail: str | None = None
    purchase_id: str | None = None


def check_livemode(event: Mapping[str, Any], expected_livemode: bool) -> None:
    """Refuse a test-mode event on a live key and the other way round."""
    if event["livemode"] is not expected_livemode:
        expected, got = ("live", "test") if expected_livemode else ("test", "live")
        raise LivemodeMismatch(
            f"the event is a {got}-mode event but STRIPE_SECRET_KEY is a {expected}-mode key",
            details={"livemode": [f"must be {str(expected_livemode).lower()}"]},
        )


def receive_event(db: Database, event: Mapping[str, Any], now: datetime) -> EventResult:
    """Record a verified event once and apply it unless that already happened."""
    return _process(db, str(event["id"]), now, force=False, event=event)


def replay_event(db: Database, event_id: str, now: datetime) -> EventResult:
    """Process a stored event again, whatever its status (processing is idempotent)."""
    return _process(db, event_id, now, force=True)


def failed_event_ids(db: Database) -> list[str]:
    """Events whose last processing failed, oldest first."""
    with db.session() as session:
        query = (
            select(WebhookEvent.id)
            .where(WebhookEvent.status == WebhookEventStatus.FAILED)
            .order_by(WebhookEvent.received_at, WebhookEvent.id)
        )
        return list(session.execute(query).scalars())


def replay_failed(db: Database, now: datetime) -> Iterator[EventResult | EventProcessingFailed]:
    """Replay every failed event; yields each result or failure in turn."""
    for event_id in failed_event_ids(db):
        try:
            yield _process(db, event_id, now, force=False)
        except EventProcessingFailed as failure:
            yield failure


# --- retention --------------------------------------------------------------------

# Stored events whose processing is over and which nothing reads again: replay needs
# failed events (and `received` ones, whose processing never finished), so those stay
# whatever their age; reconciliation reads Stripe and the purchases, never this table.
PURGEABLE_STATUSES = (WebhookEventStatus.PROCESSED, WebhookEventStatus.IGNORED)
# Stripe redelivers an event for up to three days: a purged event that arrives again is
# only processed again (harmlessly, processing being idempotent), but the retention
# setting may not go below this.
MIN_RETENTION = timedelta(days=7)
PURGE_BATCH_SIZE = 1000


def purge_events(
    db: Database,
    *,
    now: datetime,
    retention: timedelta,
    batch_size: int = PURGE_BATCH_SIZE,
    max_batches: int | None = None,
) -> int:
    """Delete stored events processed or ignored more than `retention` before `now`;
    returns how many. For `gateway webhooks purge` and the worker's hourly run.

    In batches of `batch_size`, each its own short transaction that skips rows another
    transaction holds (PostgreSQL), so it may run at any time, on several hosts at once;
    `max_batches` bounds one call (the rest is left for the next). Failed and unfinished
    events are never deleted (`gateway webhooks replay` needs them).
    """
    if retention < MIN_RETENTION:
        raise ValueError(f"retention must be at least {MIN_RETENTION.days} days")
    cutoff = now - retention
    counts = in_batches(
        db,
        lambda session: _purge_batch(session.connection(), cutoff, batch_size),
        batch_size,
        handled=int,
    )
    deleted = sum(islice(counts, max_batches))
    if deleted:
        log.info("purged %d stored webhook event(s) received before %s", deleted, cutoff)
    return deleted


def _purge_batch(conn: Connection, cutoff: datetime, batch_size: int) -> int:
    ids = list(
        conn.execute(
            select(_events.c.id)
            .where(
                _events.c.status.in_([status.value for status in PURGEABLE_STATUSES]),
                _events.c.received_at < cutoff,
            )
            .order_by(_events.c.received_at, _events.c.id)
            .limit(batch_size)
            .with_for_update(skip_locked=True)
        ).scalars()
    )
    if ids:
        conn.execute(_events.delete().where(_events.c.id.in_(ids)))
    return len(ids)


_events = cast(Table, WebhookEvent.__table__)
_READ_EVENT = select(
    _events.c.id,
    _events.c.type,
    _events.c.status,
    _events.c.error,
    _events.c.purchase_id,
    _events.c.payload,
).where(_events.c.id == bindparam("event_id"))


def _outcome_upsert(dialect_insert: Any, *, guarded: bool) -> Any:
    """INSERT the event with its outcome, or (its id stored) UPDATE the row to it.

    Guarded, an event already processed or ignored is left as it is and no row comes
    back: a concurrent delivery of the same event got there first (what this one
    applied changed nothing, settlement being idempotent). Unguarded: a replay.
    """
    statement = dialect_insert(_events)
    done = [status.value for status in _DONE]
    return statement.on_conflict_do_update(
        index_elements=[_events.c.id],
        set_={
            "status": statement.excluded.status,
            "error": statement.excluded.error,
            "purchase_id": func.coalesce(statement.excluded.purchase_id, _events.c.purchase_id),
            "attempts": _events.c.attempts + 1,
            "processed_at": statement.excluded.processed_at,
        },
        where=_events.c.status.not_in(done) if guarded else None,
    ).returning(_events.c.id)


# Built once per dialect and guard: only the parameters change per delivery.
_WRITE_OUTCOME = {
    (name, guarded): _outcome_upsert(dialect_insert, guarded=guarded)
    for name, dialect_insert in (("sqlite", sqlite_insert), ("postgresql", postgresql_insert))
    for guarded in (True, False)
}


@dataclass(frozen=True)
class _EventRow:
    id: str
    type: str
    status: str
    error: str | None
    purchase_id: str | None
    payload: Mapping[str, Any]


def _read_event(conn: Connection, event_id: str) -> _EventRow | None:
    row = conn.execute(_READ_EVENT, {"event_id": event_id}).first()
    return None if row is None else _EventRow(**row._asdict())


def _write_outcome(
    conn: Connection,
    event: Mapping[str, Any],
    *,
    status: WebhookEventStatus,
    error: str | None,
    purchase_id: str | None,
    now: datetime,
    guarded: bool = True,
) -> bool:
    """Record what processing `event` did (see `_outcome_upsert`); False if a guarded
    write found the event already done."""
    written = conn.execute(
        _WRITE_OUTCOME[conn.dialect.name, guarded],
        {
            "id": event["id"],
            "provider": "stripe",
            "type": event["type"],
            "livemode": event["livemode"],
            "status": status,
            "error": error,
            "payload": event,
            "purchase_id": purchase_id,
            "attempts": 1,
            "received_at": now,
            "processed_at": now,
        },
    ).first()
    return written is not None


class _Repeat(Exception):
    """The event is already processed or ignored: this delivery's work is rolled back."""


def _process(
    db: Database,
    event_id: str,
    now: datetime,
    *,
    force: bool,
    event: Mapping[str, Any] | None = None,
) -> EventResult:
    try:
        payload = event if event is not None else _stored_payload(db, event_id, force=force)
        meaning = read_event("stripe", payload)
        # What only the provider can tell (which invoice a payment paid), asked with
        # no transaction open.
        lookup = _look_up_payment(db, meaning)
        with db.begin() as conn:
            # A delivery is applied before its row is looked at (no read on the common
            # path): the guarded write tells a repeat apart, and a repeat's work is
            # rolled back with its transaction, so a repeat changes nothing.
            status, detail, purchase_id = apply_event(conn, payload, now, lookup=lookup)
            if not _write_outcome(
                conn,
                payload,
                status=status,
                error=detail if status == WebhookEventStatus.IGNORED else None,
                purchase_id=purchase_id,
                now=now,
                guarded=not force,
            ):
                raise _Repeat
            result = EventResult(event_id, str(payload["type"]), status, False, detail, purchase_id)
    except NotFound:
        raise
    except _Repeat:
        return _stored_outcome(db, event_id)
    except Exception as exc:
        error = f"{type(exc).__name__}: {exc}"[:_MAX_ERROR_CHARS]
        log.exception("processing webhook event %s failed", event_id)
        if not _record_failure(db, event_id, error, now, event, force=force):
            return _stored_outcome(db, event_id)  # a repeat of an event already done
        raise EventProcessingFailed(event_id, error) from exc
    metrics.WEBHOOK_EVENTS.labels(result.type, result.status).inc()
    return result


def _stored_payload(db: Database, event_id: str, *, force: bool) -> Mapping[str, Any]:
    """A replay's event, as stored (`_Repeat` if it is done and not forced)."""
    with db.begin() as conn:
        stored = _read_event(conn, event_id)
    if stored is None:
        raise NotFound(f"webhook event {event_id} is not stored", details={"event": ["not_found"]})
    if stored.status in _DONE and not force:
        raise _Repeat
    return stored.payload


@dataclass(frozen=True)
class PaymentLookup:
    """What the provider said about a payment an event names, asked before the event's
    transaction: the purchase it paid (when no purchase stored its id yet), and its
    refunds (when the event did not list them)."""

    purchase_id: str | None = None
    refunds: tuple[Refund, ...] | None = None


_PURCHASE_OF_PAYMENT = select(Purchase.id).where(Purchase.payment_id == bindparam("payment_id"))
_PURCHASE_OF_INVOICE = select(Purchase.id).where(
    Purchase.provider_invoice_id == bindparam("invoice_id")
)


def _look_up_payment(db: Database, meaning: ProviderEvent) -> PaymentLookup | None:
    """For refunds and disputes: map their payment to our purchase. A purchase stores
    its payment when it settles (or on the first lookup), so this reads one row; for
    one settled before that, the provider is asked once (Invoice Payments)."""
    if isinstance(meaning, RefundsChanged):
        payment_id = meaning.payment_id
    elif isinstance(meaning, DisputeChanged):
        payment_id = meaning.dispute.payment_id
    else:
        return None
    if payment_id is None:
        return None
    with db.begin() as conn:
        known = conn.execute(_PURCHASE_OF_PAYMENT, {"payment_id": payment_id}).scalar()
    purchase_id = None
    if known is None:
        invoice_id = get_provider().invoice_paid_by(payment_id)
        if invoice_id is None:
            return PaymentLookup()
        with db.begin() as conn:
            purchase_id = conn.execute(_PURCHASE_OF_INVOICE, {"invoice_id": invoice_id}).scalar()
        if purchase_id is None:
            return PaymentLookup()
    refunds = None
    if isinstance(meaning, RefundsChanged) and not meaning.complete:
        refunds = tuple(get_provider().list_payment_refunds(payment_id))
    return PaymentLookup(purchase_id, refunds)


def _stored_outcome(db: Database, event_id: str) -> EventResult:
    """A repeat of an event already processed or ignored: its recorded outcome."""
    with db.begin() as conn:
        row = _read_event(conn, event_id)
    assert row is not None, "an event found done is stored"
    return EventResult(
        row.id, row.type, WebhookEventStatus(row.status), True, row.error, row.purchase_id
    )


def _record_failure(
    db: Database,
    event_id: str,
    error: str,
    now: datetime,
    event: Mapping[str, Any] | None,
    *,
    force: bool,
) -> bool:
    """Record a failed processing (inserting the event if its row went with the
    rolled-back work). False, recording nothing, if the event was already processed
    or ignored (unless `force`: a replay's failure is always recorded)."""
    with db.begin() as conn:
        payload = event
        if payload is None:
            stored = _read_event(conn, event_id)
            if stored is None:
                return True
            payload = stored.payload
        written = _write_outcome(
            conn,
            payload,
            status=WebhookEventStatus.FAILED,
            error=error,
            purchase_id=None,
            now=now,
            guarded=not force,
        )
    if written:
        metrics.WEBHOOK_EVENTS.labels(str(payload["type"]), WebhookEventStatus.FAILED).inc()
    return written


def apply_event(
    conn: Connection,
    event: Mapping[str, Any],
    now: datetime,
    *,
    lookup: PaymentLookup | None = None,
) -> tuple[WebhookEventStatus, str | None, str | None]:
    """What one event does: (status for the log, detail, purchase id), in the caller's
    transaction on `conn`. `lookup` is what the provider said of the event's payment."""
    meaning = read_event("stripe", event)
    source = f"webhook {event['id']}"
    if isinstance(meaning, InvoicePaymentFailed):
        outcome = settlement.record_payment_failure(
            conn, meaning.invoice, meaning.message, now, source
        )
    elif isinstance(meaning, InvoiceChanged):
        outcome = settlement.apply_invoice(conn, meaning.invoice, now, source)
    elif isinstance(meaning, InvoicePaymentMade):
        outcome = settlement.record_payment(conn, meaning.invoice_id, meaning.payment_id, source)
    elif isinstance(meaning, RefundsChanged | CreditNoteChanged | DisputeChanged):
        return _returned(conn, meaning, lookup or PaymentLookup(), now, source)
    else:
        return (
            WebhookEventStatus.IGNORED,
            (meaning.reason if isinstance(meaning, OtherEvent) else None)
            or f"{event['type']} events are not used",
            None,
        )
    if outcome.action == settlement.SettlementAction.NOT_OURS:
        return WebhookEventStatus.IGNORED, outcome.reason, outcome.purchase_id
    detail = outcome.action.value + (f": {outcome.reason}" if outcome.reason else "")
    return WebhookEventStatus.PROCESSED, detail, outcome.purchase_id


def _returned(
    conn: Connection,
    meaning: RefundsChanged | CreditNoteChanged | DisputeChanged,
    lookup: PaymentLookup,
    now: datetime,
    source: str,
) -> tuple[WebhookEventStatus, str | None, str | None]:
    """Money going back: a refund, a credit note or a dispute (`gateway.returns`)."""
    if isinstance(meaning, RefundsChanged):
        outcome = returns.apply_refunds(
            conn,
            lookup.refunds if lookup.refunds is not None else meaning.refunds,
            now,
            source,
            payment_id=meaning.payment_id,
            purchase_id=lookup.purchase_id,
        )
    elif isinstance(meaning, CreditNoteChanged):
        outcome = returns.apply_credit_note(conn, meaning.credit_note, now, source)
    else:
        outcome = returns.apply_dispute(
            conn, meaning.dispute, now, source, purchase_id=lookup.purchase_id
        )
    if outcome.action == returns.ReturnAction.NOT_OURS:
        return WebhookEventStatus.IGNORED, outcome.reason, None
    detail = outcome.action.value + (f": {outcome.reason}" if outcome.reason else "")
    return WebhookEventStatus.PROCESSED, detail, outcome.purchase_id
