"""The ledger: the only code that changes a wallet's balance.

Every function expects the wallet row to be locked by the caller (`lock_wallet`) and
runs inside the caller's transaction, so an entry and the balance it moves are
committed together or not at all. Each new entry writes its `wallet_transaction.created`
event (`gateway.events`) in that transaction too, and a spend that empties the wallet
`wallet.depleted`: a new kind of entry gets its events by going through `_record`.
Invariant: `wallet.credits_balance` equals the sum of the wallet's settled entries
(inbound minus outbound) and is never negative.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime
from decimal import Decimal
from functools import cache
from typing import Any

from sqlalchemy import (
    ColumnElement,
    DateTime,
    Numeric,
    String,
    Table,
    bindparam,
    case,
    cast,
    func,
    insert,
    literal,
    select,
    update,
)
from sqlalchemy import column as sql_column
from sqlalchemy.dialects.postgresql import ARRAY
from sqlalchemy.dialects.postgresql import insert as postgresql_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.engine import Connection
from sqlalchemy.orm import InstrumentedAttribute, Session
from sqlalchemy.orm.attributes import set_committed_value
from sqlalchemy.sql.dml import Update
from sqlalchemy.sql.selectable import CTE, ScalarSelect, TableValuedAlias
from sqlalchemy.types import TypeEngine

from gateway import actors, events, money
from gateway.db import new_id
from gateway.errors import NotFound
from gateway.models import (
    EntrySource,
    EntryStatus,
    TransactionStatus,
    TransactionType,
    Wallet,
    WalletStatus,
    WalletTransaction,
)

_WALLETS: Table = Wallet.__table__  # type: ignore[assignment]
_ENTRIES: Table = WalletTransaction.__table__  # type: ignore[assignment]


class LedgerError(RuntimeError):
    """A movement that would break the ledger's invariants: a bug, never user input."""


_ZERO = money.quantize_credits(Decimal("0"))


@dataclass(frozen=True)
class Origin:
    """What makes an entry: a caller (`manual`), or an automatic top-up rule and, for an
    interval rule, the period it buys (unique per rule: one top-up per period)."""

    source: EntrySource = EntrySource.MANUAL
    rule_id: str | None = None
    period_at: datetime | None = None


MANUAL = Origin()


def lock_wallet(session: Session, wallet_id: str) -> Wallet:
    """The wallet, locked for this transaction (FOR UPDATE; SQLite serialises writers)."""
    wallet = session.execute(
        select(Wallet)
        .where(Wallet.id == wallet_id)
        .with_for_update()
        .execution_options(populate_existing=True)
    ).scalar_one_or_none()
    if wallet is None:
        raise NotFound(f"wallet {wallet_id} does not exist", details={"wallet": ["not_found"]})
    return wallet


def _entry_values(
    wallet: Wallet,
    *,
    direction: TransactionType,
    kind: TransactionStatus,
    status: EntryStatus,
    credits: Decimal,
    now: datetime,
    created_by: str,
    origin: Origin = MANUAL,
) -> dict[str, Any]:
    """The columns of one entry, all but its id."""
    return _entry_columns(
        wallet.id,
        wallet.rate_amount,
        direction=direction,
        kind=kind,
        status=status,
        credits=credits,
        now=now,
        created_by=created_by,
        origin=origin,
    )


def _entry_columns(
    wallet_id: str,
    rate_amount: Decimal,
    *,
    direction: TransactionType,
    kind: TransactionStatus,
    status: EntryStatus,
    credits: Decimal,
    now: datetime,
    created_by: str,
    origin: Origin = MANUAL,
) -> dict[str, Any]:
    credits = money.quantize_credits(credits)
    if credits <= 0:
        raise LedgerError(f"a ledger entry moves a positive number of credits, not {credits}")
    return {
        "wallet_id": wallet_id,
        "transaction_type": direction,
        "transaction_status": kind,
        "status": status,
        "credit_amount": credits,
        "amount": money.credits_value(credits, rate_amount),
        "settled_at": now if status == EntryStatus.SETTLED else None,
        "failed_at": None,
        "created_at": now,
        "created_by": _author(created_by),
        "source": origin.source,
        "rule_id": origin.rule_id,
        "rule_period_at": origin.period_at,
    }


def _author(created_by: str) -> str:
    """Every entry says who made it (`gateway.actors`): refuse an empty or oversized one."""
    if not created_by or len(created_by) > actors.MAX_LENGTH:
        raise LedgerError(f"created_by must be 1 to {actors.MAX_LENGTH} characters")
    return created_by


def _entry(
    wallet: Wallet,
    *,
    direction: TransactionType,
    kind: TransactionStatus,
    status: EntryStatus,
    credits: Decimal,
    now: datetime,
    created_by: str,
    origin: Origin = MANUAL,
) -> WalletTransaction:
    return WalletTransaction(
        **_entry_values(
            wallet,
            direction=direction,
            kind=kind,
            status=status,
            credits=credits,
            now=now,
            created_by=created_by,
            origin=origin,
        )
    )


def grant_credits(
    session: Session,
    wallet: Wallet,
    credits: Decimal,
    now: datetime,
    *,
    created_by: str,
    origin: Origin = MANUAL,
) -> WalletTransaction:
    """Free credits: a settled inbound `granted` entry, balance raised at once."""
    entry = _entry(
        wallet,
        direction=TransactionType.INBOUND,
        kind=TransactionStatus.GRANTED,
        status=EntryStatus.SETTLED,
        credits=credits,
        now=now,
        created_by=created_by,
        origin=origin,
    )
    wallet.credits_balance += entry.credit_amount
    return _record(session, wallet, entry, now)


@dataclass(frozen=True)
class EntryLabel:
    """The caller's name and metadata for the entries a request makes (Lago's `name` and
    `metadata`: a list of {"key", "value"} pairs)."""

    name: str | None
    metadata: list[dict[str, str]] | None


_LABEL = "gateway.ledger.entry_label"


@contextmanager
def labelled(session: Session, label: EntryLabel) -> Iterator[None]:
    """Entries recorded in `session` within it carry `label` from the start, so their
    `wallet_transaction.created` events show it as the API then answers it."""
    session.info[_LABEL] = label
    try:
        yield
    finally:
        session.info.pop(_LABEL, None)


def _add(session: Session, entry: WalletTransaction) -> None:
    """A new entry into the session, labelled if a `labelled` block is open, flushed."""
    label: EntryLabel | None = session.info.get(_LABEL)
    if label is not None:
        entry.name, entry.entry_metadata = label.name, label.metadata
    session.add(entry)
    session.flush()


def _record(
    session: Session, wallet: Wallet, entry: WalletTransaction, now: datetime
) -> WalletTransaction:
    """Write a new entry (its balance change already made on `wallet`) with its events:
    `wallet_transaction.created`, and `wallet.depleted` when a settled outbound entry
    leaves nothing."""
    _add(session, entry)
    events.emit(session, entry_events(wallet, entry), now)
    return entry


def entry_events(wallet: Wallet, entry: WalletTransaction) -> list[events.NewEvent]:
    """The events a new entry writes: `wallet_transaction.created`, `wallet.depleted`
    when a settled outbound entry leaves nothing, and a crossing of the wallet's low
    balance threshold (for a caller that writes them together with its own,
    `consume_credits(..., announce=False)`)."""
    announced = [events.NewEvent(events.EventType.WALLET_TRANSACTION_CREATED, wallet.id, entry.id)]
    if (
        entry.transaction_type == TransactionType.OUTBOUND
        and entry.status == EntryStatus.SETTLED
        and wallet.credits_balance == 0
    ):
        announced.append(events.NewEvent(events.EventType.WALLET_DEPLETED, wallet.id))
    # A wallet's opening credits (granted with it) are where it starts, not a crossing.
    if entry.status == EntryStatus.SETTLED and entry.created_at != wallet.created_at:
        moved = (
            entry.credit_amount
            if entry.transaction_type == TransactionType.INBOUND
            else (-entry.credit_amount)
        )
        announced += balance_crossings(
            wallet.id,
            wallet.credits_balance - moved,
            wallet.credits_balance,
            wallet.low_balance_threshold_credits,
        )
    return announced


def balance_crossings(
    wallet_id: str, before: Decimal, after: Decimal, threshold: Decimal | None
) -> list[events.NewEvent]:
    """`wallet.balance_low` when a balance goes from above the wallet's
    `low_balance_threshold_credits` to at or below it, `wallet.balance_recovered` when it
    goes back above: once per crossing, since only a move across the line makes one."""
    if threshold is None:
        return []
    if before > threshold >= after:
        return [events.NewEvent(events.EventType.WALLET_BALANCE_LOW, wallet_id)]
    if before <= threshold < after:
        return [events.NewEvent(events.EventType.WALLET_BALANCE_RECOVERED, wallet_id)]
    return []


def open_purchase_entry(
    session: Session,
    wallet: Wallet,
    credits: Decimal,
    now: datetime,
    *,
    created_by: str,
    origin: Origin = MANUAL,
) -> WalletTransaction:
    """Purchased credits awaiting payment: a pending inbound entry; the balance waits.

    Its `wallet_transaction.created` event is the purchase's to write
    (`announce_purchase_entry`), once the purchase row exists and the entry's invoice
    block can show it."""
    entry = _entry(
        wallet,
        direction=TransactionType.INBOUND,
        kind=TransactionStatus.PURCHASED,
        status=EntryStatus.PENDING,
        credits=credits,
        now=now,
        created_by=created_by,
        origin=origin,
    )
    _add(session, entry)
    return entry


def announce_purchase_entry(session: Session, entry: WalletTransaction, now: datetime) -> None:
    """`wallet_transaction.created` for a purchase entry, once its purchase row exists."""
    events.emit_one(
        session, events.EventType.WALLET_TRANSACTION_CREATED, entry.wallet_id, now,
        transaction_id=entry.id,
    )  # fmt: skip


def _settled_outbound(
    wallet: Wallet, kind: TransactionStatus, credits: Decimal, now: datetime, created_by: str
) -> WalletTransaction:
    """A settled outbound entry of `kind`, the balance lowered by it at once (the caller
    checked the wallet holds the credits)."""
    entry = _entry(
        wallet,
        direction=TransactionType.OUTBOUND,
        kind=kind,
        status=EntryStatus.SETTLED,
        credits=credits,
        now=now,
        created_by=created_by,
    )
    wallet.credits_balance -= entry.credit_amount
    return entry


def void_credits(
    session: Session,
    wallet: Wallet,
    credits: Decimal,
    now: datetime,
    *,
    created_by: str,
) -> WalletTransaction:
    """Credits voided at the caller's request (Lago's `voided_credits`): a settled
    outbound `voided` entry, the balance lowered at once; never below zero."""
    if credits > wallet.credits_balance:
        raise LedgerError(
            f"wallet {wallet.id} holds {wallet.credits_balance} credits, {credits} cannot be voided"
        )
    entry = _settled_outbound(wallet, TransactionStatus.VOIDED, credits, now, created_by)
    return _record(session, wallet, entry, now)


def terminate_and_void(
    session: Session,
    ending: Sequence[tuple[Wallet, datetime]],
    *,
    created_by: str,
    now: datetime | None = None,
) -> int:
    """Wallets end: each (locked, active) wallet is terminated at its time and what it
    held is voided, the entries made by `created_by`. Returns the number of `voided`
    entries written.

    For each `(wallet, at)`: a positive balance becomes a settled outbound `voided`
    entry of exactly that balance (valued at the wallet's rate), created and settled at
    `at`; the row gets balance 0, status terminated, `terminated_at` and `updated_at`
    `at`. The entry lowers the settled sum by the balance the row loses, so the
    invariant holds for each wallet, and a terminated wallet holds nothing.

    Set-based, whatever the number of wallets, with Core statements rather than ORM
    flushes (`bench/PROFILES.md`, expire-wallets, says why). Each `voided` entry writes
    its `wallet_transaction.created` event, dated
    `now` (default: the latest ending time), all in one `events.emit`. The UPDATE only
    matches a row that is still active with the balance just voided: if any does not
    (the caller held no lock, or its object was stale), this raises `LedgerError` and
    the caller's transaction must be rolled back. The wallet objects get their new
    state as committed values: nothing is left to flush.
    """
    if not ending:
        return 0
    if len({wallet.id for wallet, _ in ending}) != len(ending):
        raise LedgerError("a wallet ends once: the same wallet was given twice")
    session.flush()  # the statements below bypass the unit of work: pending changes first
    entries = [_voided_on_ending(wallet, at, created_by) for wallet, at in ending]
    voided = [entry for entry in entries if entry is not None]
    matched = _write_ending(session.connection(), ending, voided, created_by)
    if matched != len(ending):
        raise LedgerError(
            f"{len(ending) - matched} of {len(ending)} wallet(s) changed under the caller: "
            "lock them and read them under the lock before ending them"
        )
    for wallet, at in ending:
        set_committed_value(wallet, "status", WalletStatus.TERMINATED)
        set_committed_value(wallet, "credits_balance", _ZERO)
        set_committed_value(wallet, "terminated_at", at)
        set_committed_value(wallet, "updated_at", at)
    if voided:
        events.emit(
            session,
            [
                events.NewEvent(
                    events.EventType.WALLET_TRANSACTION_CREATED, entry["wallet_id"], entry["id"]
                )
                for entry in voided
            ],
            now or max(at for _, at in ending),
        )
    return len(voided)


def _voided_on_ending(wallet: Wallet, at: datetime, created_by: str) -> dict[str, Any] | None:
    """The `voided` entry's values for a wallet ending at `at` (None: it holds nothing),
    once the wallet is checked able to end."""
    if wallet.status != WalletStatus.ACTIVE:
        raise LedgerError(f"wallet {wallet.id} is not active: it cannot end again")
    if at.tzinfo is None:
        raise LedgerError("a wallet ends at a UTC-aware time, not a naive one")
    if wallet.credits_balance < 0:
        raise LedgerError(f"wallet {wallet.id} has a negative balance")
    if wallet.credits_balance == 0:
        return None
    entry = _entry_values(
        wallet,
        direction=TransactionType.OUTBOUND,
        kind=TransactionStatus.VOIDED,
        status=EntryStatus.SETTLED,
        credits=wallet.credits_balance,
        now=at,
        created_by=created_by,
    )
    return {"id": new_id("wtx"), **entry}  # the column default, per row


def _write_ending(
    conn: Connection,
    ending: Sequence[tuple[Wallet, datetime]],
    entries: list[dict[str, Any]],
    created_by: str,
) -> int:
    """The voided entries inserted and the wallets terminated, one statement each;
    returns how many wallets the UPDATE matched (still active with the balance voided)."""
    if conn.dialect.name != "postgresql":
        if entries:
            conn.execute(insert(_ENTRIES), entries)
        return conn.execute(
            _TERMINATE_ONE,
            [
                {"t_id": wallet.id, "t_held": wallet.credits_balance, "t_at": at}
                for wallet, at in ending
            ],
        ).rowcount
    if entries:
        conn.execute(
            _INSERT_VOIDED_PG,
            {
                "v_ids": [entry["id"] for entry in entries],
                "v_wallet_ids": [entry["wallet_id"] for entry in entries],
                "v_credits": [entry["credit_amount"] for entry in entries],
                "v_amounts": [entry["amount"] for entry in entries],
                "v_ats": [entry["created_at"] for entry in entries],
                "v_created_by": _author(created_by),
            },
        )
    return conn.execute(
        _TERMINATE_PG,
        {
            "t_ids": [wallet.id for wallet, _ in ending],
            "t_helds": [wallet.credits_balance for wallet, _ in ending],
            "t_ats": [at for _, at in ending],
        },
    ).rowcount


def unnest_rows(name: str, *columns: tuple[str, TypeEngine[Any]]) -> TableValuedAlias:
    """PostgreSQL: rows from parallel arrays, one bound parameter (`{name}_{column}s`)
    per column."""
    return (
        func.unnest(
            *(cast(bindparam(f"{name}_{column}s"), ARRAY(type_)) for column, type_ in columns)
        )
        .table_valued(*(sql_column(column, type_) for column, type_ in columns))
        .render_derived(name=name)
    )


_voided = unnest_rows(
    "v",
    ("id", String()),
    ("wallet_id", String()),
    ("credit", Numeric()),
    ("amount", Numeric()),
    ("at", DateTime(timezone=True)),
)
_INSERT_VOIDED_PG = insert(_ENTRIES).from_select(
    [
        "id",
        "wallet_id",
        "transaction_type",
        "transaction_status",
        "status",
        "credit_amount",
        "amount",
        "settled_at",
        "created_at",
        "created_by",
    ],
    select(
        _voided.c.id,
        _voided.c.wallet_id,
        literal(TransactionType.OUTBOUND.value),
        literal(TransactionStatus.VOIDED.value),
        literal(EntryStatus.SETTLED.value),
        _voided.c.credit,
        _voided.c.amount,
        _voided.c.at,
        _voided.c.at,
        bindparam("v_created_by", type_=String()),
    ),
)
_ended = unnest_rows("t", ("id", String()), ("held", Numeric()), ("at", DateTime(timezone=True)))
_TERMINATE_PG = (
    update(_WALLETS)
    .where(
        _WALLETS.c.id == _ended.c.id,
        _WALLETS.c.status == WalletStatus.ACTIVE.value,
        _WALLETS.c.credits_balance == _ended.c.held,
    )
    .values(
        status=WalletStatus.TERMINATED.value,
        credits_balance=_ZERO,
        terminated_at=_ended.c.at,
        updated_at=_ended.c.at,
    )
)
_TERMINATE_ONE = (
    update(_WALLETS)
    .where(
        _WALLETS.c.id == bindparam("t_id"),
        _WALLETS.c.status == WalletStatus.ACTIVE.value,
        _WALLETS.c.credits_balance == bindparam("t_held"),
    )
    .values(
        status=WalletStatus.TERMINATED.value,
        credits_balance=_ZERO,
        terminated_at=bindparam("t_at"),
        updated_at=bindparam("t_at"),
    )
)


def consume_credits(
    session: Session,
    wallet: Wallet,
    credits: Decimal,
    amount_cents: int,
    now: datetime,
    *,
    created_by: str,
    announce: bool = True,
) -> WalletTransaction:
    """Credits deducted from an invoice: a settled outbound `invoiced` entry.

    `announce=False`: its events (`entry_events`) are the caller's to write, in this
    transaction, with its own (a credit application writes all of them at once)."""
    if credits > wallet.credits_balance:
        raise LedgerError("consumption larger than the balance")
    entry = _settled_outbound(wallet, TransactionStatus.INVOICED, credits, now, created_by)
    wallet.consumed_credits += entry.credit_amount
    wallet.consumed_amount_cents += amount_cents
    if not announce:
        _add(session, entry)
        return entry
    return _record(session, wallet, entry, now)


def settled_sum_expression() -> ColumnElement[Decimal]:
    """SQL: the signed sum of settled entries (the balance the ledger proves)."""
    return func.coalesce(
        func.sum(
            case(
                (
                    WalletTransaction.transaction_type == TransactionType.INBOUND,
                    WalletTransaction.credit_amount,
                ),
                else_=-WalletTransaction.credit_amount,
            )
        ),
        0,
    )


def ledger_balance(session: Session, wallet_id: str) -> Decimal:
    """The balance the settled entries of `wallet_id` add up to."""
    total = session.execute(
        select(settled_sum_expression()).where(
            WalletTransaction.wallet_id == wallet_id,
            WalletTransaction.status == EntryStatus.SETTLED,
        )
    ).scalar_one()
    return money.quantize_credits(Decimal(total))


def pending_credits_of(
    wallet_id: ColumnElement[str] | InstrumentedAttribute[str],
) -> ScalarSelect[Decimal]:
    """SQL: the pending credits of the wallet `wallet_id` names (a correlated subquery,
    to read them in the same SELECT as the wallet)."""
    # Aliased: correlated to an outer SELECT of entries (the events' load), the bare
    # table would be that SELECT's own row, and `wallet_id = wallet_id` would sum the
    # pending credits of every wallet (a sequential scan per event, and a wrong figure).
    entries = _ENTRIES.alias("pending_entries")
    return (
        select(func.coalesce(func.sum(entries.c.credit_amount), 0))
        .where(
            entries.c.wallet_id == wallet_id,
            entries.c.status == EntryStatus.PENDING,
            entries.c.transaction_status == TransactionStatus.PURCHASED,
        )
        .scalar_subquery()
    )


# What `pending_credits` reads: the same definition, for one wallet by id.
_PENDING_CREDITS = select(pending_credits_of(bindparam("wallet_id")))


def pending_credits(session: Session, wallet_id: str) -> Decimal:
    """Credits bought for `wallet_id` and not paid yet (its pending purchase entries)."""
    total = session.execute(_PENDING_CREDITS, {"wallet_id": wallet_id}).scalar_one()
    return money.quantize_credits(Decimal(total))


# --- purchase entries by id, on a connection (the settlement path) -------------------
# Settlement reads the rows it needs under their locks and moves the entry with these
# statements, built once: no ORM objects on the path every webhook delivery takes.

_purchase_entry = (
    (_ENTRIES.c.id == bindparam("b_entry_id"))
    & (_ENTRIES.c.wallet_id == bindparam("b_wallet_id"))
    & (_ENTRIES.c.transaction_status == TransactionStatus.PURCHASED)
)
# The entry's settlement (from `b_from_status`), answering what the caller asks of it.
_SETTLE_ENTRY = (
    update(_ENTRIES)
    .where(_purchase_entry, _ENTRIES.c.status == bindparam("b_from_status"))
    .values(status=EntryStatus.SETTLED, settled_at=bindparam("b_now"), failed_at=None)
)
_SETTLE_PURCHASE_ENTRY = _SETTLE_ENTRY.returning(_ENTRIES.c.credit_amount)
# A balance moved by `b_delta` (negative: taken out); the second form answers the balance
# after the move and the wallet's low-balance threshold, what a crossing of it
# (`balance_crossings`) is read from.
_MOVE_BALANCE = (
    update(_WALLETS)
    .where(_WALLETS.c.id == bindparam("b_wallet_id"))
    .values(
        credits_balance=_WALLETS.c.credits_balance
        + bindparam("b_delta", type_=_WALLETS.c.credits_balance.type),
        updated_at=bindparam("b_now"),
    )
)
_MOVE_BALANCE_READ = _MOVE_BALANCE.returning(
    _WALLETS.c.credits_balance, _WALLETS.c.low_balance_threshold_credits
)


def _raised_by(entry: CTE) -> Update:
    """The balance of the settled `entry`'s wallet raised by its credits."""
    return (
        update(_WALLETS)
        .where(_WALLETS.c.id == entry.c.wallet_id)
        .values(
            credits_balance=_WALLETS.c.credits_balance + entry.c.credit_amount,
            updated_at=bindparam("b_now"),
        )
    )


_FAIL_PURCHASE_ENTRY = (
    update(_ENTRIES)
    .where(_purchase_entry, _ENTRIES.c.status == EntryStatus.PENDING)
    .values(status=EntryStatus.FAILED, failed_at=bindparam("b_now"))
)


@cache
def settled_purchase_ctes() -> tuple[CTE, CTE]:
    """PostgreSQL: a purchase entry settled and the balance it raises (as
    `settle_purchase` does, with the same parameters) as two data-modifying CTEs that
    answer the entry and the wallet as they now are, for the purchase's transition to
    write the purchase in the same statement and read what its events carry. No entry
    in `b_from_status`: both are empty and nothing changed."""
    entry = _SETTLE_ENTRY.returning(
        *(_ENTRIES.c[events.column_name(WalletTransaction, key)] for key in events.ENTRY_KEYS)
    ).cte("entry")
    wallet = (
        _raised_by(entry).returning(*(_WALLETS.c[key] for key in events.WALLET_KEYS)).cte("wallet")
    )
    return entry, wallet


def settle_purchase(
    conn: Connection, wallet_id: str, entry_id: str, from_status: EntryStatus, now: datetime
) -> tuple[Decimal, list[events.NewEvent]] | None:
    """Purchase entry `entry_id` of (locked) `wallet_id` → settled, balance raised by it.

    `from_status` is the status the caller read under the lock: `pending`, or `failed`
    for an invoice paid after all (Stripe lets an uncollectible invoice be paid later:
    the money arrived, so the credits do too). Returns the credits added and the
    balance's crossings of the wallet's low-balance threshold (events for the caller to
    write with its own), or None if the entry was not a purchase of that wallet in that
    status (nothing changed).
    """
    if from_status not in (EntryStatus.PENDING, EntryStatus.FAILED):
        return None
    entry = {"b_entry_id": entry_id, "b_wallet_id": wallet_id, "b_from_status": from_status,
             "b_now": now}  # fmt: skip
    credited = conn.execute(_SETTLE_PURCHASE_ENTRY, entry).scalar()
    if credited is None:
        return None
    after, threshold = conn.execute(
        _MOVE_BALANCE_READ, {"b_wallet_id": wallet_id, "b_delta": credited, "b_now": now}
    ).one()
    return Decimal(credited), balance_crossings(wallet_id, after - credited, after, threshold)


def fail_pending_purchase(conn: Connection, wallet_id: str, entry_id: str, now: datetime) -> bool:
    """Pending purchase entry `entry_id` of (locked) `wallet_id` → failed; the balance
    never saw it. False if it was not pending (nothing changed)."""
    result = conn.execute(
        _FAIL_PURCHASE_ENTRY, {"b_entry_id": entry_id, "b_wallet_id": wallet_id, "b_now": now}
    )
    return bool(result.rowcount == 1)


# --- credits following money back out (refunds, credit notes, disputes) -------------

_WALLET_HOLDING = select(_WALLETS.c.credits_balance, _WALLETS.c.rate_amount).where(
    _WALLETS.c.id == bindparam("b_wallet_id")
)
_TAKEN_BACK = frozenset({TransactionStatus.REFUNDED, TransactionStatus.DISPUTED})


def _write_settled_entry(
    conn: Connection,
    wallet_id: str,
    rate_amount: Decimal,
    *,
    direction: TransactionType,
    kind: TransactionStatus,
    credits: Decimal,
    now: datetime,
    empties: bool = False,
) -> None:
    """A settled entry written with Core statements (the returns path), with its
    events: `wallet_transaction.created`, and `wallet.depleted` when it `empties` the
    wallet."""
    entry = _entry_columns(
        wallet_id,
        rate_amount,
        direction=direction,
        kind=kind,
        status=EntryStatus.SETTLED,
        credits=credits,
        now=now,
        # Money going back is Stripe's doing, applied by the service on its own.
        created_by=actors.SYSTEM,
    )
    entry_id = new_id("wtx")
    conn.execute(insert(_ENTRIES), {"id": entry_id, **entry})
    credited = entry["credit_amount"]
    delta = credited if direction == TransactionType.INBOUND else -credited
    after, threshold = conn.execute(
        _MOVE_BALANCE_READ, {"b_wallet_id": wallet_id, "b_delta": delta, "b_now": now}
    ).one()
    announced = [events.NewEvent(events.EventType.WALLET_TRANSACTION_CREATED, wallet_id, entry_id)]
    if empties:
        announced.append(events.NewEvent(events.EventType.WALLET_DEPLETED, wallet_id))
    announced += balance_crossings(wallet_id, after - delta, after, threshold)
    events.emit_on_connection(conn, announced, now)


def take_back(
    conn: Connection, wallet_id: str, credits: Decimal, kind: TransactionStatus, now: datetime
) -> Decimal:
    """Credits following money back out of (locked) `wallet_id`: a settled outbound
    `refunded` or `disputed` entry of `credits`, or of the whole balance if that is
    smaller (never below zero). Returns the credits taken (0: no entry)."""
    if kind not in _TAKEN_BACK:
        raise LedgerError(f"credits are taken back as refunded or disputed, not {kind}")
    balance, rate = conn.execute(_WALLET_HOLDING, {"b_wallet_id": wallet_id}).one()
    taken = min(money.quantize_credits(credits), Decimal(balance))
    if taken <= 0:
        return _ZERO
    _write_settled_entry(
        conn,
        wallet_id,
        Decimal(rate),
        direction=TransactionType.OUTBOUND,
        kind=kind,
        credits=taken,
        now=now,
        empties=taken == Decimal(balance),
    )
    return money.quantize_credits(taken)


def reinstate(conn: Connection, wallet_id: str, credits: Decimal, now: datetime) -> None:
    """Credits come back to (locked, usable) `wallet_id` (a dispute won, a refund that
    failed after it succeeded, a credit note voided):
    a settled inbound `reinstated` entry."""
    _, rate = conn.execute(_WALLET_HOLDING, {"b_wallet_id": wallet_id}).one()
    _write_settled_entry(
        conn,
        wallet_id,
        Decimal(rate),
        direction=TransactionType.INBOUND,
        kind=TransactionStatus.REINSTATED,
        credits=credits,
        now=now,
    )


# --- interval top-ups, a batch at a time (the worker's duty) ---------------------------


@dataclass(frozen=True)
class RuleTopUp:
    """One period's top-up of an interval rule into a (locked) wallet: purchased
    credits (a pending entry) and/or granted ones (settled at once)."""

    wallet_id: str
    rate_amount: Decimal
    origin: Origin  # the rule and the period: unique per (rule, period, kind)
    paid: Decimal | None
    granted: Decimal | None


_RULE_ENTRY_KEY = [_ENTRIES.c.rule_id, _ENTRIES.c.rule_period_at, _ENTRIES.c.transaction_status]
# A period already bought makes no row and no error: the unique index decides.
_INSERT_RULE_ENTRIES = {
    name: dialect_insert(_ENTRIES)
    .on_conflict_do_nothing(
        index_elements=_RULE_ENTRY_KEY, index_where=_ENTRIES.c.rule_period_at.is_not(None)
    )
    .returning(
        _ENTRIES.c.id,
        _ENTRIES.c.wallet_id,
        _ENTRIES.c.rule_id,
        _ENTRIES.c.transaction_status,
        _ENTRIES.c.credit_amount,
    )
    for name, dialect_insert in (("sqlite", sqlite_insert), ("postgresql", postgresql_insert))
}


@dataclass(frozen=True)
class RuleEntry:
    """An entry `open_rule_top_ups` wrote."""

    id: str
    wallet_id: str
    rule_id: str
    transaction_status: str


def open_rule_top_ups(
    conn: Connection, top_ups: Sequence[RuleTopUp], now: datetime, *, created_by: str
) -> list[RuleEntry]:
    """The entries of `top_ups` (wallets locked by the caller), set-based: one INSERT
    of every entry, then one balance UPDATE per granted wallet, in one round trip.

    A top-up whose (rule, period) already has its entries is skipped whole. Returns the
    entries written; their `wallet_transaction.created` events are the caller's to
    write (`announce_rule_entries`), once the purchases of the purchased ones exist.
    """
    rows: list[dict[str, Any]] = []
    for top_up in top_ups:
        if top_up.origin.rule_id is None or top_up.origin.period_at is None:
            raise LedgerError("an interval top-up names its rule and its period")
        for kind, status, credits in (
            (TransactionStatus.PURCHASED, EntryStatus.PENDING, top_up.paid),
            (TransactionStatus.GRANTED, EntryStatus.SETTLED, top_up.granted),
        ):
            if credits:
                entry = _entry_columns(
                    top_up.wallet_id,
                    top_up.rate_amount,
                    direction=TransactionType.INBOUND,
                    kind=kind,
                    status=status,
                    credits=credits,
                    now=now,
                    created_by=created_by,
                    origin=top_up.origin,
                )
                rows.append({"id": new_id("wtx"), **entry})
    if not rows:
        return []
    written = conn.execute(_INSERT_RULE_ENTRIES[conn.dialect.name], rows).all()
    raised = [
        {"b_wallet_id": row.wallet_id, "b_delta": row.credit_amount, "b_now": now}
        for row in written
        if row.transaction_status == TransactionStatus.GRANTED
    ]
    if raised:
        conn.execute(_MOVE_BALANCE, raised)
    return [RuleEntry(row.id, row.wallet_id, row.rule_id, row.transaction_status)
            for row in written]  # fmt: skip


def announce_rule_entries(
    session: Session,
    entries: Sequence[RuleEntry],
    now: datetime,
    then: Sequence[events.NewEvent] = (),
) -> None:
    """`wallet_transaction.created` for entries `open_rule_top_ups` wrote, then `then`
    (the balance crossings the top-ups made), in one emit."""
    events.emit(
        session,
        [
            *(
                events.NewEvent(
                    events.EventType.WALLET_TRANSACTION_CREATED, entry.wallet_id, entry.id
                )
                for entry in entries
            ),
            *then,
        ],
        now,
    )
