"""Outgoing events: the one place that builds and writes them (the transactional outbox).

The owner of each change calls `emit` in the transaction that makes the change, after
the change is written: the event row commits with it or not at all. The worker
(`gateway.delivery`) sends the rows to the webhook endpoints; the feed lists them.

An event is `{"id", "type", "created_at", "data"}`. `data` holds the resources the
event is about under their API root keys (`wallet`, `wallet_transaction`,
`credit_application`), dumped by the API's own schemas from the rows as they are at
that moment, plus `sequence`: per wallet, one more with each event about it, assigned
under the wallet's row lock (the UPDATE that takes it), so a consumer can order a
wallet's events whatever order they arrive in.

Adding an event type: a member of `EventType`, then `emit(session, [NewEvent(...)])`
where the change happens. Batches (the expiry sweep) emit many events in a few
statements.
"""

from __future__ import annotations

import enum
import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from decimal import Decimal
from functools import cache
from typing import Any, cast

from sqlalchemy import (
    BigInteger,
    Numeric,
    Select,
    String,
    Table,
    Text,
    bindparam,
    func,
    insert,
    select,
    text,
    update,
)
from sqlalchemy import cast as sql_cast
from sqlalchemy.engine import Connection
from sqlalchemy.orm import Session, joinedload

from gateway.db import UTCDateTime, new_id
from gateway.models import CreditApplication, Event, Wallet, WalletTransaction


class EventType(enum.StrEnum):
    WALLET_CREATED = "wallet.created"
    WALLET_UPDATED = "wallet.updated"
    WALLET_TERMINATED = "wallet.terminated"
    WALLET_DEPLETED = "wallet.depleted"
    WALLET_BALANCE_LOW = "wallet.balance_low"
    WALLET_BALANCE_RECOVERED = "wallet.balance_recovered"
    WALLET_TRANSACTION_CREATED = "wallet_transaction.created"
    WALLET_TRANSACTION_SETTLED = "wallet_transaction.settled"
    WALLET_TRANSACTION_FAILED = "wallet_transaction.failed"
    CREDIT_APPLICATION_APPLIED = "credit_application.applied"
    PURCHASE_ATTENTION_REQUIRED = "purchase.attention_required"


EVENT_TYPES: tuple[str, ...] = tuple(member.value for member in EventType)


class TerminationReason(enum.StrEnum):
    MANUAL = "manual"
    EXPIRED = "expired"


@dataclass(frozen=True)
class NewEvent:
    """An event to write: its type, the wallet it is about, the other resources it
    carries (by id) and any extra fields of `data` (`reason`, `attention_reason`)."""

    type: EventType
    wallet_id: str
    transaction_id: str | None = None
    credit_application_id: str | None = None
    extra: Mapping[str, Any] = field(default_factory=dict)


_wallets = cast(Table, Wallet.__table__)
_events = cast(Table, Event.__table__)

_NEXT_SEQUENCE = (
    update(_wallets)
    .where(_wallets.c.id == bindparam("s_id"))
    .values(
        event_sequence=_wallets.c.event_sequence + bindparam("s_n", type_=BigInteger()),
        updated_at=_wallets.c.updated_at,  # an event is no change: no onupdate default
    )
    .returning(_wallets.c.event_sequence)
)


def _next_sequences_pg(conn: Connection, counts: dict[str, int]) -> dict[str, int]:
    """PostgreSQL: every wallet's sequence moved in one UPDATE over arrays."""
    from gateway.ledger import unnest_rows

    rows = unnest_rows("q", ("id", String()), ("n", Numeric()))
    statement = (
        update(_wallets)
        .where(_wallets.c.id == rows.c.id)
        .values(
            event_sequence=_wallets.c.event_sequence + sql_cast(rows.c.n, BigInteger()),
            updated_at=_wallets.c.updated_at,
        )
        .returning(_wallets.c.id, _wallets.c.event_sequence)
    )
    result = conn.execute(statement, {"q_ids": list(counts), "q_ns": list(counts.values())})
    return {row.id: int(row.event_sequence) for row in result}


def _last_sequences(conn: Connection, counts: dict[str, int]) -> dict[str, int]:
    """Raise each wallet's `event_sequence` by its number of new events (taking or
    keeping the row lock) and return the new values: the last sequence of each."""
    if len(counts) > 1 and conn.dialect.name == "postgresql":
        last = _next_sequences_pg(conn, counts)
    else:
        last = {}
        for wallet_id, n in counts.items():
            value = conn.execute(_NEXT_SEQUENCE, {"s_id": wallet_id, "s_n": n}).scalar_one_or_none()
            if value is not None:
                last[wallet_id] = int(value)
    missing = set(counts) - set(last)
    if missing:
        raise LookupError(f"events about unknown wallet(s): {', '.join(sorted(missing))}")
    return last


def _txid(conn: Connection) -> Any:
    """The writing transaction's id on PostgreSQL (the feed's order), 0 elsewhere."""
    if conn.dialect.name == "postgresql":
        return sql_cast(sql_cast(func.pg_current_xact_id(), Text()), BigInteger())
    return 0


def _wallet_loading() -> tuple[Any, ...]:
    """What a wallet's JSON reads besides its row: its customer and its rules."""
    return (joinedload(Wallet.customer), joinedload(Wallet.recurring_transaction_rules))


@cache
def _entries_with_their_rows() -> Select[WalletTransaction, Decimal]:
    """The entries named by `transaction_ids` with their purchase and wallet (and its
    customer and rules) and the wallet's pending credits: built once, as every
    delivery reads it."""
    from gateway.ledger import pending_credits_of

    return (
        select(WalletTransaction, pending_credits_of(WalletTransaction.wallet_id))
        .where(WalletTransaction.id.in_(bindparam("transaction_ids", expanding=True)))
        .options(
            joinedload(WalletTransaction.purchase),
            joinedload(WalletTransaction.wallet).options(*_wallet_loading()),
        )
        .execution_options(populate_existing=True)
    )


@cache
def _wallets_with_their_rows() -> Select[Wallet, Decimal]:
    """The wallets named by `wallet_ids` with their customer, rules and pending credits."""
    from gateway.ledger import pending_credits_of

    return (
        select(Wallet, pending_credits_of(Wallet.id))
        .where(Wallet.id.in_(bindparam("wallet_ids", expanding=True)))
        .options(*_wallet_loading())
        .execution_options(populate_existing=True)
    )


def _load(
    session: Session, wallet_ids: list[str], events: Sequence[NewEvent]
) -> tuple[dict[str, Wallet], dict[str, WalletTransaction], dict[str, Any]]:
    """The wallets and entries the events carry, as they now are, and each wallet's
    pending credits, in as few SELECTs as possible: the entries with their purchase and
    wallet (and its customer and rules) in one, the wallets no entry brought in
    another."""
    wallets: dict[str, Wallet] = {}
    transactions: dict[str, WalletTransaction] = {}
    pending: dict[str, Any] = {}
    transaction_ids = list({event.transaction_id for event in events if event.transaction_id})
    if transaction_ids:
        for entry, entry_pending in session.execute(
            _entries_with_their_rows(), {"transaction_ids": transaction_ids}
        ).unique():
            transactions[entry.id] = entry
            wallets[entry.wallet_id] = entry.wallet
            pending[entry.wallet_id] = entry_pending
    missing = [wallet_id for wallet_id in wallet_ids if wallet_id not in wallets]
    if missing:
        for wallet, wallet_pending in session.execute(
            _wallets_with_their_rows(), {"wallet_ids": missing}
        ).unique():
            wallets[wallet.id] = wallet
            pending[wallet.id] = wallet_pending
    unknown = set(wallet_ids) - set(wallets)
    if unknown:
        raise LookupError(f"events about unknown wallet(s): {', '.join(sorted(unknown))}")
    return wallets, transactions, pending


# PostgreSQL, one wallet: its sequence moves and the events are written in one
# statement; each body is its prefix (the JSON up to `"sequence":`) + the number + `}}`.
_SEQUENCE_AND_INSERT_PG = text(
    """
    WITH s AS (
        UPDATE wallets SET event_sequence = event_sequence + :n
        WHERE id = :wallet_id RETURNING event_sequence
    )
    INSERT INTO events (id, type, wallet_id, sequence, body, txid, dispatched, created_at)
    SELECT v.id, v.type, :wallet_id, s.event_sequence - :n + v.ord,
           v.prefix || (s.event_sequence - :n + v.ord)::text || '}}',
           pg_current_xact_id()::text::bigint, false, :created_at
    FROM s, unnest(CAST(:ids AS text[]), CAST(:types AS text[]), CAST(:prefixes AS text[]),
                   CAST(:ords AS integer[])) AS v(id, type, prefix, ord)
    """
).bindparams(bindparam("created_at", type_=UTCDateTime()))


def _body_prefix(event_id: str, type_: str, created_at: str, data: dict[str, Any]) -> str:
    """The event's JSON up to its `sequence`, the last member of `data`."""
    head = json.dumps(
        {"id": event_id, "type": type_, "created_at": created_at},
        separators=(",", ":"),
        ensure_ascii=False,
    )
    members = json.dumps(data, separators=(",", ":"), ensure_ascii=False)
    return f'{head[:-1]},"data":{members[:-1]},"sequence":'


def format_time(value: datetime) -> str:
    return value.astimezone(UTC).isoformat(timespec="seconds").replace("+00:00", "Z")


@cache
def _schemas() -> tuple[Any, Any, Any]:
    """The answer schemas events are dumped with, built once: building one copies every
    field, which was about a tenth of a webhook delivery's CPU when done per event."""
    from gateway.api.schemas import (
        CreditApplicationSchema,
        WalletSchema,
        WalletTransactionSchema,
    )

    return WalletSchema(), WalletTransactionSchema(), CreditApplicationSchema()


def emit(session: Session, events: Sequence[NewEvent], now: datetime) -> list[str]:
    """Write `events`, in order, in the session's transaction; returns their ids.

    Pending ORM changes are flushed first, so payloads show the change being reported.
    Rows changed by Core statements are read again (the session's objects refreshed).
    """
    if not events:
        return []
    from gateway.ledger import known_pending_credits

    session.flush()
    conn = session.connection()
    counts: dict[str, int] = {}
    for event in events:
        counts[event.wallet_id] = counts.get(event.wallet_id, 0) + 1
    wallets, transactions, pending = _load(session, list(counts), events)
    application_ids = [event.credit_application_id for event in events]
    applications = {
        application.id: application
        for application in session.execute(
            select(CreditApplication).where(
                CreditApplication.id.in_([i for i in application_ids if i])
            )
        ).scalars()
    } if any(application_ids) else {}  # fmt: skip

    wallet_schema, transaction_schema, application_schema = _schemas()
    with known_pending_credits(session, pending):
        dumped_wallets = {wallet_id: wallet_schema.dump(w) for wallet_id, w in wallets.items()}
        created_at = format_time(now)
        prepared: list[tuple[str, NewEvent, str]] = []  # id, event, body prefix
        for event in events:
            data: dict[str, Any] = {"wallet": dumped_wallets[event.wallet_id]}
            if event.transaction_id is not None:
                data["wallet_transaction"] = transaction_schema.dump(
                    transactions[event.transaction_id]
                )
            if event.credit_application_id is not None:
                data["credit_application"] = application_schema.dump(
                    applications[event.credit_application_id]
                )
            data.update(event.extra)
            data.pop("sequence", None)
            event_id = new_id("evt")
            prepared.append(
                (event_id, event, _body_prefix(event_id, event.type.value, created_at, data))
            )

    if conn.dialect.name == "postgresql" and len(counts) == 1:
        [(wallet_id, n)] = counts.items()
        written = conn.execute(
            _SEQUENCE_AND_INSERT_PG,
            {
                "n": n,
                "wallet_id": wallet_id,
                "created_at": now,
                "ids": [event_id for event_id, _, _ in prepared],
                "types": [event.type.value for _, event, _ in prepared],
                "prefixes": [prefix for _, _, prefix in prepared],
                "ords": list(range(1, n + 1)),
            },
        ).rowcount
        if written != n:
            raise LookupError(f"events about unknown wallet {wallet_id}")
        return [event_id for event_id, _, _ in prepared]

    last = _last_sequences(conn, counts)
    next_sequence = {wallet_id: last[wallet_id] - n + 1 for wallet_id, n in counts.items()}
    rows: list[dict[str, Any]] = []
    for event_id, event, prefix in prepared:
        sequence = next_sequence[event.wallet_id]
        next_sequence[event.wallet_id] += 1
        rows.append(
            {
                "id": event_id,
                "type": event.type.value,
                "wallet_id": event.wallet_id,
                "sequence": sequence,
                "body": f"{prefix}{sequence}}}}}",
                "dispatched": False,
                "created_at": now,
            }
        )
    conn.execute(insert(_events).values(txid=_txid(conn)), rows)
    return [row["id"] for row in rows]


def emit_one(
    session: Session,
    type_: EventType,
    wallet_id: str,
    now: datetime,
    *,
    transaction_id: str | None = None,
    credit_application_id: str | None = None,
    **extra: Any,
) -> str:
    """`emit` for a single event."""
    [event_id] = emit(
        session,
        [NewEvent(type_, wallet_id, transaction_id, credit_application_id, extra)],
        now,
    )
    return event_id


def emit_on_connection(conn: Connection, events: Sequence[NewEvent], now: datetime) -> list[str]:
    """`emit` for callers holding only a connection (the Core settlement path): a
    throwaway session joins the connection's transaction and never ends it."""
    session = Session(bind=conn, join_transaction_mode="rollback_only")
    try:
        return emit(session, events, now)
    finally:
        session.close()


# --- the feed -----------------------------------------------------------------------


def _visible(conn: Connection) -> Any:
    """PostgreSQL: only events of transactions older than every one still running (and
    this transaction's own), so the feed's order never gains an event behind a position
    already shown. SQLite serialises writers: every committed event is in order."""
    if conn.dialect.name != "postgresql":
        return None
    xmin = sql_cast(
        sql_cast(func.pg_snapshot_xmin(func.pg_current_snapshot()), Text()), BigInteger()
    )
    own = sql_cast(sql_cast(func.pg_current_xact_id_if_assigned(), Text()), BigInteger())
    return (Event.txid < xmin) | (Event.txid == own)


def list_events(
    session: Session, *, after: str | None, type_: str | None, limit: int
) -> tuple[list[dict[str, Any]], bool]:
    """Events in creation order after the event `after` (all when None), at most
    `limit`; and whether more follow."""
    from gateway.errors import ValidationFailed

    query = select(Event.body)
    visible = _visible(session.connection())
    if visible is not None:
        query = query.where(visible)
    if after is not None:
        cursor = session.execute(
            select(Event.txid, Event.position).where(Event.id == after)
        ).one_or_none()
        if cursor is None:
            raise ValidationFailed(
                f"event {after} does not exist (or was purged)",
                details={"after": ["unknown event"]},
            )
        query = query.where(
            (Event.txid > cursor.txid)
            | ((Event.txid == cursor.txid) & (Event.position > cursor.position))
        )
    if type_ is not None:
        query = query.where(Event.type == type_)
    bodies = list(
        session.execute(query.order_by(Event.txid, Event.position).limit(limit + 1)).scalars()
    )
    return [json.loads(body) for body in bodies[:limit]], len(bodies) > limit


def get_event(session: Session, event_id: str) -> Event:
    from gateway.errors import NotFound

    event = session.execute(select(Event).where(Event.id == event_id)).scalar_one_or_none()
    if event is None:
        raise NotFound(f"event {event_id} does not exist", details={"event": ["not_found"]})
    return event
