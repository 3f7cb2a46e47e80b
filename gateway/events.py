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
from types import SimpleNamespace
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
from sqlalchemy import inspect as sa_inspect
from sqlalchemy.engine import Connection
from sqlalchemy.orm import Session
from sqlalchemy.sql import ColumnElement, FromClause

from gateway import money
from gateway.db import UTCDateTime, new_id
from gateway.models import (
    CreditApplication,
    Customer,
    Event,
    Purchase,
    RecurringTransactionRule,
    Wallet,
    WalletTransaction,
)


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


class _Row(SimpleNamespace):
    """A row read for an event's body: the attributes the answer schemas read, as the
    mapped class names them (an entry's `wallet` and `purchase`, a wallet's `customer`
    and `recurring_transaction_rules`, and its `pending_credits`)."""


def _columns(
    model: type[Any],
    prefix: str,
    keys: Sequence[str] | None = None,
    source: FromClause | None = None,
) -> list[Any]:
    """`model`'s columns (those named by `keys`, else all), labelled `prefix` + the
    attribute's name; taken from `source` (rows with the table's columns, such as a
    statement's RETURNING) instead of the table when given."""
    return [
        (source.c[prop.columns[0].name] if source is not None else prop.columns[0]).label(
            f"{prefix}{prop.key}"
        )
        for prop in sa_inspect(model).column_attrs
        if keys is None or prop.key in keys
    ]


# What the invoice block of a purchased entry reads of its purchase.
_INVOICE_KEYS = (
    "provider",
    "provider_invoice_id",
    "status",
    "invoice_status",
    "currency",
    "subtotal_cents",
    "tax_cents",
    "total_cents",
    "hosted_invoice_url",
    "returned_cents",
    "dispute_status",
)
# What a wallet's and an entry's JSON read of their rows (all columns but bookkeeping).
WALLET_KEYS = tuple(
    prop.key
    for prop in sa_inspect(Wallet).column_attrs
    if prop.key not in ("updated_at", "event_sequence")
)
ENTRY_KEYS = tuple(
    prop.key
    for prop in sa_inspect(WalletTransaction).column_attrs
    if prop.key not in ("rule_id", "rule_period_at")
)


def column_name(model: type[Any], key: str) -> str:
    """The name of the column behind attribute `key` of `model` (`entry_metadata`: `metadata`)."""
    return str(sa_inspect(model).column_attrs[key].columns[0].name)


def invoice_columns(purchases: Table) -> list[Any]:
    """The columns of `purchases` an entry's invoice block reads."""
    return [purchases.c[key] for key in _INVOICE_KEYS]


_rules = cast(Table, RecurringTransactionRule.__table__)
_customers = cast(Table, Customer.__table__)
_entries = cast(Table, WalletTransaction.__table__)
_purchases = cast(Table, Purchase.__table__)


def wallet_columns(wallet: FromClause, pending: ColumnElement[Any]) -> list[Any]:
    """What a wallet's JSON reads, from `wallet` (the table, or rows with its columns):
    its columns, its customer's external id, `pending` (its pending credits) and its
    rules, one row per rule (`with_rules` joins them)."""
    return [
        *_columns(Wallet, "w_", WALLET_KEYS, source=wallet),
        select(_customers.c.external_id)
        .where(_customers.c.id == wallet.c.customer_id)
        .scalar_subquery()
        .label("c_external_id"),
        pending.label("w_pending_credits"),
        *_columns(RecurringTransactionRule, "r_", source=_rules),
    ]


def with_rules(rows: FromClause, wallet: FromClause) -> FromClause:
    """`rows` with the rules of `wallet` outer-joined (for `wallet_columns`)."""
    return rows.outerjoin(_rules, _rules.c.wallet_id == wallet.c.id)


RULES_ORDER = _rules.c.trigger  # as the API lists a wallet's rules


def entry_columns(
    entry: FromClause, purchase: FromClause, wallet: FromClause, pending: ColumnElement[Any]
) -> list[Any]:
    """What an entry's JSON reads (and its wallet's, as `wallet_columns`), from `entry`,
    its `purchase` (outer-joined: null for an entry that is no purchase) and `wallet`."""
    return [
        *_columns(WalletTransaction, "e_", ENTRY_KEYS, source=entry),
        *_columns(Purchase, "p_", _INVOICE_KEYS, source=purchase),
        *wallet_columns(wallet, pending),
    ]


def entries_with_their_rows(
    entry: FromClause, purchase: FromClause, wallet: FromClause
) -> Select[Any]:
    """What an event carries about entries: each `entry` with its `purchase`'s invoice
    columns, its `wallet`, the customer's external id, the wallet's pending credits and
    its rules (one row per rule). The sources are the tables, or rows with their columns
    (a statement's RETURNING, as settlement's one statement reads them)."""
    from gateway.ledger import pending_credits_of

    rows = entry.join(wallet, wallet.c.id == entry.c.wallet_id).outerjoin(
        purchase, purchase.c.transaction_id == entry.c.id
    )
    return (
        select(*entry_columns(entry, purchase, wallet, pending_credits_of(wallet.c.id)))
        .select_from(with_rules(rows, wallet))
        .order_by(RULES_ORDER)
    )


@cache
def _entries_with_their_rows() -> Select[Any]:
    """The entries named by `transaction_ids`, with what their events carry: one Core
    SELECT, built once."""
    return entries_with_their_rows(_entries, _purchases, _wallets).where(
        _entries.c.id.in_(bindparam("transaction_ids", expanding=True))
    )


@cache
def _wallets_with_their_rows() -> Select[Any]:
    """The wallets named by `wallet_ids`, read as `_entries_with_their_rows` reads an
    entry's wallet."""
    from gateway.ledger import pending_credits_of

    return (
        select(*wallet_columns(_wallets, pending_credits_of(_wallets.c.id)))
        .select_from(with_rules(_wallets, _wallets))
        .where(_wallets.c.id.in_(bindparam("wallet_ids", expanding=True)))
        .order_by(RULES_ORDER)
    )


def _split(values: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """A row's values by the prefix of their labels (`e_`, `p_`, `w_`, `c_`, `r_`)."""
    parts: dict[str, dict[str, Any]] = {"e_": {}, "p_": {}, "w_": {}, "c_": {}, "r_": {}}
    for key, value in values.items():
        parts[key[:2]][key[2:]] = value
    return parts


@dataclass
class Loaded:
    """The rows events carry, by id, read with `entry_columns` / `wallet_columns`: one
    row per rule of the wallet (or one, without rules)."""

    wallets: dict[str, _Row] = field(default_factory=dict)
    transactions: dict[str, _Row] = field(default_factory=dict)
    # Credit applications as written (an answer never changes once stored).
    applications: dict[str, Any] = field(default_factory=dict)

    def add(self, values: dict[str, Any]) -> None:
        """One row of `entry_columns` or `wallet_columns`."""
        parts = _split(values)
        wallet_values = parts["w_"]
        wallet = self.wallets.get(wallet_values["id"])
        if wallet is None:
            wallet = _Row(**wallet_values)
            wallet.pending_credits = money.quantize_credits(Decimal(wallet.pending_credits))
            wallet.customer = _Row(id=wallet.customer_id, external_id=parts["c_"]["external_id"])
            wallet.recurring_transaction_rules = []
            self.wallets[wallet.id] = wallet
        rule = parts["r_"]
        if rule["id"] is not None and all(
            r.id != rule["id"] for r in wallet.recurring_transaction_rules
        ):
            wallet.recurring_transaction_rules.append(_Row(**rule))
        entry_values = parts["e_"]
        if entry_values and entry_values["id"] not in self.transactions:
            entry = _Row(**entry_values)
            purchase = parts["p_"]
            entry.purchase = _Row(**purchase) if purchase["status"] is not None else None
            entry.wallet = wallet
            self.transactions[entry.id] = entry


def _load(
    conn: Connection, wallet_ids: list[str], events: Sequence[NewEvent], loaded: Loaded
) -> None:
    """The wallets and entries the events carry that `loaded` lacks, as they now are
    in this transaction: the entries with their purchase and wallet in one SELECT, the
    wallets no entry brought in another."""
    transaction_ids = list(
        {e.transaction_id for e in events if e.transaction_id} - set(loaded.transactions)
    )
    if transaction_ids:
        for row in conn.execute(_entries_with_their_rows(), {"transaction_ids": transaction_ids}):
            loaded.add(row._asdict())
    missing = [wallet_id for wallet_id in wallet_ids if wallet_id not in loaded.wallets]
    if missing:
        for row in conn.execute(_wallets_with_their_rows(), {"wallet_ids": missing}):
            loaded.add(row._asdict())
    unknown = set(wallet_ids) - set(loaded.wallets)
    if unknown:
        raise LookupError(f"events about unknown wallet(s): {', '.join(sorted(unknown))}")


# PostgreSQL, one wallet: its sequence moves and the events are written in one
# statement; each body is its prefix (the JSON up to `"sequence":`) + the number + `}}`.
# The events come as one JSON array of [id, type, prefix] (a text array would make
# psycopg escape every quote of every body).
_SEQUENCE_AND_INSERT_PG = text(
    """
    WITH s AS (
        UPDATE wallets SET event_sequence = event_sequence + :n
        WHERE id = :wallet_id RETURNING event_sequence
    )
    INSERT INTO events (id, type, wallet_id, sequence, body, txid, dispatched, created_at)
    SELECT v.e ->> 0, v.e ->> 1, :wallet_id, s.event_sequence - :n + v.ord,
           (v.e ->> 2) || (s.event_sequence - :n + v.ord)::text || '}}',
           pg_current_xact_id()::text::bigint, false, :created_at
    FROM s, json_array_elements(CAST(:events AS json)) WITH ORDINALITY AS v(e, ord)
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


@cache
def _applications_by_id() -> Select[Any]:
    applications = cast(Table, CreditApplication.__table__)
    return select(*_columns(CreditApplication, "")).where(
        applications.c.id.in_(bindparam("application_ids", expanding=True))
    )


def emit(session: Session, events: Sequence[NewEvent], now: datetime) -> list[str]:
    """Write `events`, in order, in the session's transaction; returns their ids.

    Pending ORM changes are flushed first, so payloads show the change being reported.
    """
    if not events:
        return []
    session.flush()
    return emit_on_connection(session.connection(), events, now)


def _bodies(
    conn: Connection, events: Sequence[NewEvent], now: datetime, loaded: Loaded
) -> list[tuple[str, str]]:
    """Each event's id and body up to its `sequence`, from the rows as they now are."""
    _load(conn, list(dict.fromkeys(event.wallet_id for event in events)), events, loaded)
    wallets, transactions = loaded.wallets, loaded.transactions
    applications = loaded.applications
    application_ids = [
        event.credit_application_id
        for event in events
        if event.credit_application_id and event.credit_application_id not in applications
    ]
    if application_ids:
        for row in conn.execute(_applications_by_id(), {"application_ids": application_ids}):
            applications[row.id] = _Row(**row._asdict())

    wallet_schema, transaction_schema, application_schema = _schemas()
    dumped_wallets = {wallet_id: wallet_schema.dump(w) for wallet_id, w in wallets.items()}
    created_at = format_time(now)
    prepared: list[tuple[str, str]] = []
    for event in events:
        data: dict[str, Any] = {"wallet": dumped_wallets[event.wallet_id]}
        if event.transaction_id is not None:
            data["wallet_transaction"] = transaction_schema.dump(transactions[event.transaction_id])
        if event.credit_application_id is not None:
            data["credit_application"] = application_schema.dump(
                applications[event.credit_application_id]
            )
        data.update(event.extra)
        data.pop("sequence", None)
        event_id = new_id("evt")
        prepared.append((event_id, _body_prefix(event_id, event.type.value, created_at, data)))
    return prepared


def emit_on_connection(
    conn: Connection, events: Sequence[NewEvent], now: datetime, loaded: Loaded | None = None
) -> list[str]:
    """`emit` on a connection, in its transaction (the Core paths, such as settlement).

    `loaded`: rows the caller already read in this transaction, after its change (with
    `entry_columns`, say from the RETURNING of the statement that made it): not read again.
    """
    if not events:
        return []
    prepared = _bodies(conn, events, now, loaded or Loaded())
    counts: dict[str, int] = {}
    for event in events:
        counts[event.wallet_id] = counts.get(event.wallet_id, 0) + 1

    if conn.dialect.name == "postgresql" and len(counts) == 1:
        [(wallet_id, n)] = counts.items()
        written = conn.execute(
            _SEQUENCE_AND_INSERT_PG,
            {
                "n": n,
                "wallet_id": wallet_id,
                "created_at": now,
                "events": json.dumps(
                    [
                        [event_id, event.type.value, prefix]
                        for (event_id, prefix), event in zip(prepared, events, strict=True)
                    ],
                    ensure_ascii=False,
                ),
            },
        ).rowcount
        if written != n:
            raise LookupError(f"events about unknown wallet {wallet_id}")
        return [event_id for event_id, _ in prepared]

    last = _last_sequences(conn, counts)
    next_sequence = {wallet_id: last[wallet_id] - n + 1 for wallet_id, n in counts.items()}
    rows: list[dict[str, Any]] = []
    for (event_id, prefix), event in zip(prepared, events, strict=True):
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
