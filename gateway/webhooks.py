"""Stripe events: record each verified event once, and apply it exactly once.

A delivery (already verified by `gateway.providers.stripe.webhook`) is handled in
one transaction: the event row is inserted by its Stripe id unless it exists (the
primary key settles races between concurrent deliveries), locked, and unless it was
already processed or ignored the event is applied (`gateway.settlement`) and the
row marked. An effect and "this event is done" commit together or not at all.

If applying raises, that transaction rolls back and the failure (error, attempts)
is recorded in a transaction of its own, inserting the row if need be; the caller
answers 500 and Stripe delivers the event again later, which applies it again.
The row lock serialises concurrent deliveries of one event; a repeat after success
changes nothing. Operators re-run stored events with `gateway webhooks replay`.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import select
from sqlalchemy.dialects.postgresql import insert as postgresql_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.orm import Session

from gateway import metrics, settlement
from gateway.db import Database, is_sqlite, unit_of_work
from gateway.errors import DomainError, NotFound
from gateway.models import WebhookEvent, WebhookEventStatus
from gateway.providers.stripe.client import invoice_snapshot

log = logging.getLogger(__name__)

# Event types that move a purchase; every other type is recorded as ignored.
SETTLING_TYPES = frozenset(
    {"invoice.paid", "invoice.payment_succeeded", "invoice.voided", "invoice.marked_uncollectible"}
)
PAYMENT_FAILED_TYPE = "invoice.payment_failed"
HANDLED_TYPES = SETTLING_TYPES | {PAYMENT_FAILED_TYPE}

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


def failed_event_ids(db: Database, *, limit: int | None = None) -> list[str]:
    """Events whose last processing failed, oldest first."""
    with db.session() as session:
        query = (
            select(WebhookEvent.id)
            .where(WebhookEvent.status == WebhookEventStatus.FAILED)
            .order_by(WebhookEvent.received_at, WebhookEvent.id)
        )
        if limit is not None:
            query = query.limit(limit)
        return list(session.execute(query).scalars())


def replay_failed(db: Database, now: datetime) -> Iterator[EventResult | EventProcessingFailed]:
    """Replay every failed event; yields each result or failure in turn."""
    for event_id in failed_event_ids(db):
        try:
            yield _process(db, event_id, now, force=False)
        except EventProcessingFailed as failure:
            yield failure


def _insert_if_absent(
    session: Session, event: Mapping[str, Any], now: datetime, status: WebhookEventStatus
) -> None:
    """INSERT … ON CONFLICT DO NOTHING (PostgreSQL and SQLite alike): one statement.

    A concurrent delivery inserting the same id makes it wait for that delivery's
    outcome; committed, nothing is inserted and the row is read as it was left.
    """
    dialect_insert = sqlite_insert if is_sqlite(session) else postgresql_insert
    session.execute(
        dialect_insert(WebhookEvent)
        .values(
            id=event["id"],
            provider="stripe",
            type=event["type"],
            livemode=event["livemode"],
            status=status,
            payload=dict(event),
            attempts=0,
            received_at=now,
        )
        .on_conflict_do_nothing(index_elements=[WebhookEvent.id])
    )


def _process(
    db: Database,
    event_id: str,
    now: datetime,
    *,
    force: bool,
    event: Mapping[str, Any] | None = None,
) -> EventResult:
    session = db.session()
    try:
        with unit_of_work(session):
            if event is not None:
                _insert_if_absent(session, event, now, WebhookEventStatus.RECEIVED)
            row = _lock_event(session, event_id)
            if row is None:
                raise NotFound(
                    f"webhook event {event_id} is not stored", details={"event": ["not_found"]}
                )
            if row.status in _DONE and not force:
                return EventResult(
                    row.id,
                    row.type,
                    WebhookEventStatus(row.status),
                    True,
                    row.error,
                    row.purchase_id,
                )
            status, detail, purchase_id = apply_event(session, row.payload, now)
            row.status = status
            row.error = detail if status == WebhookEventStatus.IGNORED else None
            row.purchase_id = purchase_id or row.purchase_id
            row.attempts += 1
            row.processed_at = now
            result = EventResult(row.id, row.type, status, False, detail, purchase_id)
    except NotFound:
        raise
    except Exception as exc:
        error = f"{type(exc).__name__}: {exc}"[:_MAX_ERROR_CHARS]
        log.exception("processing webhook event %s failed", event_id)
        _record_failure(db, event_id, error, now, event)
        raise EventProcessingFailed(event_id, error) from exc
    finally:
        session.close()
    metrics.WEBHOOK_EVENTS.labels(result.type, result.status).inc()
    return result


def _lock_event(session: Session, event_id: str) -> WebhookEvent | None:
    return session.execute(
        select(WebhookEvent)
        .where(WebhookEvent.id == event_id)
        .with_for_update()
        .execution_options(populate_existing=True)
    ).scalar_one_or_none()


def _record_failure(
    db: Database,
    event_id: str,
    error: str,
    now: datetime,
    event: Mapping[str, Any] | None,
) -> None:
    session = db.session()
    try:
        with unit_of_work(session):
            if event is not None:  # its insert was rolled back with the rest
                _insert_if_absent(session, event, now, WebhookEventStatus.FAILED)
            row = _lock_event(session, event_id)
            if row is None:
                return
            row.status = WebhookEventStatus.FAILED
            row.error = error
            row.attempts += 1
            row.processed_at = now
        metrics.WEBHOOK_EVENTS.labels(row.type, WebhookEventStatus.FAILED).inc()
    finally:
        session.close()


def apply_event(
    session: Session, event: Mapping[str, Any], now: datetime
) -> tuple[WebhookEventStatus, str | None, str | None]:
    """What one event does: (status for the log, detail, purchase id). Only flushes."""
    event_type = str(event["type"])
    if event_type not in HANDLED_TYPES:
        return WebhookEventStatus.IGNORED, f"{event_type} events are not used", None
    invoice = invoice_snapshot(event["data"]["object"])
    source = f"webhook {event['id']}"
    if event_type == PAYMENT_FAILED_TYPE:
        outcome = settlement.record_payment_failure(
            session, invoice, payment_error(event["data"]["object"], event), now, source
        )
    else:
        outcome = settlement.apply_invoice(session, invoice, now, source)
    if outcome.action == settlement.SettlementAction.NOT_OURS:
        return WebhookEventStatus.IGNORED, outcome.reason, outcome.purchase_id
    detail = outcome.action.value + (f": {outcome.reason}" if outcome.reason else "")
    return WebhookEventStatus.PROCESSED, detail, outcome.purchase_id


def payment_error(invoice: Mapping[str, Any], event: Mapping[str, Any]) -> str:
    """A line for `last_payment_error` from an `invoice.payment_failed` event."""
    message = f"payment attempt {invoice.get('attempt_count') or '?'} failed"
    created = _timestamp(event.get("created"))
    if created:
        message += f" at {created}"
    intent = invoice.get("payment_intent")
    if isinstance(intent, Mapping):  # only when the event carries it expanded
        error = intent.get("last_payment_error")
        if isinstance(error, Mapping) and error.get("message"):
            message += f" ({error.get('code') or 'error'}: {error['message']})"
    next_attempt = _timestamp(invoice.get("next_payment_attempt"))
    message += f"; next attempt {next_attempt}" if next_attempt else "; no retry scheduled"
    return message


def _timestamp(value: Any) -> str | None:
    if isinstance(value, int) and not isinstance(value, bool):
        return f"{datetime.fromtimestamp(value, UTC):%Y-%m-%dT%H:%M:%SZ}"
    return None
