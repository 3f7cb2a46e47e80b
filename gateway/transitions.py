"""Purchase state transitions: the only code that changes a purchase's status.

As `gateway.ledger` is the only code that moves a balance, this module is the only
one that moves a purchase from one status to another, together with its ledger entry
when the move involves one: one function per transition. Callers decide *which*
transition applies (settlement from an invoice, the create call, reconciliation,
a wallet ending, money going back); the functions here make it, in the caller's
transaction, on rows the caller has locked in the ledger's order (wallet, then
purchase; `lock_purchase`).

The functions work on a `Connection` with Core statements built once, the way the
settlement path (every webhook delivery) needs them. Callers holding ORM objects
flush first and pass `session.connection()`, then read the rows again
(`sync_purchase`). Each transition writes the purchase row in one UPDATE, together
with any other column changes the caller gathered (`changes`: the invoice's id,
status and amounts, read in the same delivery), then its outgoing events
(`gateway.events`: `wallet_transaction.settled` / `.failed`,
`purchase.attention_required`), so the entry's `invoice` block in them is current.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass
from datetime import datetime
from decimal import Decimal
from functools import cache
from typing import Any, cast

from sqlalchemy import Select, Table, bindparam, select, update
from sqlalchemy import inspect as sa_inspect
from sqlalchemy.engine import Connection
from sqlalchemy.orm import Session

from gateway import events, ledger, rules
from gateway.models import EntryStatus, Purchase, PurchaseStatus, WalletTransaction

# Failure texts are kept, but not without bound.
MESSAGE_LIMIT = 2000
CODE_LIMIT = 64


class InvoiceStatus(enum.StrEnum):
    """A provider invoice's status, as the boundary reports it (Stripe's vocabulary)."""

    DRAFT = "draft"
    OPEN = "open"
    PAID = "paid"
    VOID = "void"
    UNCOLLECTIBLE = "uncollectible"


# An invoice in one of these will not be paid as it stands: its purchase fails.
FAILED_INVOICE_STATUSES = frozenset({InvoiceStatus.VOID, InvoiceStatus.UNCOLLECTIBLE})

# Statuses a later invoice event may no longer change: credited, waiting for a person,
# or its money gone back.
FINAL_STATUSES = frozenset(
    {
        PurchaseStatus.SETTLED,
        PurchaseStatus.REFUND_REQUIRED,
        PurchaseStatus.REVIEW_REQUIRED,
        PurchaseStatus.REFUNDED,
    }
)
UNPAID_STATUSES = frozenset({PurchaseStatus.CREATING, PurchaseStatus.OPEN})


class TransitionError(RuntimeError):
    """Purchase and ledger disagree (a bug, never input): the caller's work rolls back."""


@dataclass(frozen=True)
class PurchaseRef:
    """The ids a transition needs: the purchase, its wallet and its ledger entry."""

    purchase_id: str
    wallet_id: str
    transaction_id: str


_purchases = cast(Table, Purchase.__table__)
# SET columns come from each execution's parameters.
_UPDATE_PURCHASE = update(_purchases).where(_purchases.c.id == bindparam("b_purchase_id"))


class AttentionReason(enum.StrEnum):
    """`attention_reason` of a `purchase.attention_required` event."""

    REFUND_REQUIRED = "refund_required"
    REVIEW_REQUIRED = "review_required"


def _announce(
    conn: Connection,
    purchase: PurchaseRef,
    now: datetime,
    *types: events.EventType,
    attention: tuple[AttentionReason, str] | None = None,
) -> None:
    """The transition's events, about the purchase's entry (and its wallet)."""
    announced = [events.NewEvent(t, purchase.wallet_id, purchase.transaction_id) for t in types]
    if attention is not None:
        reason, detail = attention
        announced.append(
            events.NewEvent(
                events.EventType.PURCHASE_ATTENTION_REQUIRED,
                purchase.wallet_id,
                purchase.transaction_id,
                extra={"attention_reason": reason.value, "detail": detail},
            )
        )
    events.emit_on_connection(conn, announced, now)


def announce_attention(
    conn: Connection, purchase: PurchaseRef, reason: str, detail: str, now: datetime
) -> None:
    """`purchase.attention_required` for a purchase that needs a person for `reason`
    (a status-preserving change, such as a refund shortfall)."""
    events.emit_on_connection(
        conn,
        [
            events.NewEvent(
                events.EventType.PURCHASE_ATTENTION_REQUIRED,
                purchase.wallet_id,
                purchase.transaction_id,
                extra={"attention_reason": reason, "detail": detail},
            )
        ],
        now,
    )


def lock_purchase(session: Session, purchase_id: str) -> Purchase:
    """The purchase, locked for this transaction (its wallet must be locked first)."""
    return session.execute(
        select(Purchase)
        .where(Purchase.id == purchase_id)
        .with_for_update()
        .execution_options(populate_existing=True)
    ).scalar_one()


def record(conn: Connection, purchase_id: str, changes: dict[str, Any]) -> None:
    """Columns of the purchase that are not its status (the invoice's link, status and
    amounts, a payment error, the void flag): written as they are, in one UPDATE."""
    if changes:
        if "status" in changes:
            raise TransitionError("a purchase's status changes through its transition")
        conn.execute(_UPDATE_PURCHASE, {"b_purchase_id": purchase_id, **changes})


def _write(
    conn: Connection,
    purchase_id: str,
    status: PurchaseStatus,
    now: datetime,
    changes: dict[str, Any] | None,
    **columns: Any,
) -> None:
    values = {**(changes or {}), **columns, "status": status, "updated_at": now}
    conn.execute(_UPDATE_PURCHASE, {"b_purchase_id": purchase_id, **values})


def open_invoice(
    conn: Connection, purchase: PurchaseRef, now: datetime, changes: dict[str, Any]
) -> None:
    """creating → open: the finalized invoice is stored (`changes` holds its columns)."""
    _write(conn, purchase.purchase_id, PurchaseStatus.OPEN, now, changes)


_SETTLED_COLUMNS = {
    "failure_code": None,
    "failure_message": None,
    "provider_void_pending": False,
}


def settle(
    conn: Connection,
    purchase: PurchaseRef,
    entry_status: EntryStatus,
    now: datetime,
    changes: dict[str, Any] | None = None,
) -> Decimal:
    """creating / open / failed → settled: the entry settles, the balance rises by it.

    `entry_status` is the entry's status as read under the lock (a failed entry
    settles when an uncollectible invoice is paid after all). Returns the credits
    added; raises `TransitionError` if the entry was not in that status.
    """
    if entry_status in (EntryStatus.PENDING, EntryStatus.FAILED) and uses_one_statement(conn):
        return _settle_in_one_statement(conn, purchase, entry_status, now, changes or {})
    settled = ledger.settle_purchase(
        conn, purchase.wallet_id, purchase.transaction_id, entry_status, now
    )
    if settled is None:
        raise _not_in(purchase, entry_status)
    credited, crossed = settled
    _write(conn, purchase.purchase_id, PurchaseStatus.SETTLED, now, changes, **_SETTLED_COLUMNS)
    events.emit_on_connection(conn, [*crossed, _settled_event(purchase)], now)
    return credited


def _settled_event(purchase: PurchaseRef) -> events.NewEvent:
    return events.NewEvent(
        events.EventType.WALLET_TRANSACTION_SETTLED, purchase.wallet_id, purchase.transaction_id
    )


def _not_in(purchase: PurchaseRef, entry_status: EntryStatus) -> TransitionError:
    return TransitionError(
        f"purchase {purchase.purchase_id}: its entry {purchase.transaction_id} "
        f"is not {entry_status}"
    )


# The connection option that keeps a PostgreSQL connection on the portable statements
# (the differential test runs the same events through both and compares the outcome).
PORTABLE_ONLY = "gateway_portable_only"


def uses_one_statement(conn: Connection) -> bool:
    """Whether `settle` writes in one PostgreSQL statement on `conn`."""
    return conn.dialect.name == "postgresql" and not conn.get_execution_options().get(
        PORTABLE_ONLY, False
    )


@cache
def _settle_statement(change_keys: tuple[str, ...]) -> Select[Any]:
    """PostgreSQL: `settle`'s writes in one statement: the ledger's settlement of the
    entry and its balance (`ledger.settled_purchase_ctes`), the purchase's row, and a
    read of what the events carry (the entry, its purchase and its wallet as they now
    are). The wallet's pending credits come from the statement's snapshot, where the
    entry is still in its old status. Built once per set of changed columns."""
    entry, wallet = ledger.settled_purchase_ctes()
    written = (
        update(_purchases)
        .where(_purchases.c.id == bindparam("b_purchase_id"))
        .where(_purchases.c.transaction_id == entry.c.id)
        .values(
            {
                **{key: bindparam(f"c_{key}", type_=_purchases.c[key].type) for key in change_keys},
                **_SETTLED_COLUMNS,
                "status": PurchaseStatus.SETTLED,
                "updated_at": bindparam("b_now"),
            }
        )
        .returning(_purchases.c.transaction_id, *events.invoice_columns(_purchases))
        .cte("purchase")
    )
    return events.entries_with_their_rows(entry, written, wallet)


def _settle_in_one_statement(
    conn: Connection,
    purchase: PurchaseRef,
    entry_status: EntryStatus,
    now: datetime,
    changes: dict[str, Any],
) -> Decimal:
    changes = {key: value for key, value in changes.items() if key not in _SETTLED_COLUMNS}
    if "status" in changes or "updated_at" in changes:
        raise TransitionError("a purchase's status changes through its transition")
    keys = tuple(sorted(changes))
    rows = [
        row._asdict()
        for row in conn.execute(
            _settle_statement(keys),
            {
                "b_entry_id": purchase.transaction_id,
                "b_wallet_id": purchase.wallet_id,
                "b_from_status": entry_status,
                "b_now": now,
                "b_purchase_id": purchase.purchase_id,
                **{f"c_{key}": changes[key] for key in keys},
            },
        )
    ]  # one per rule of the wallet, or one
    if not rows:
        raise _not_in(purchase, entry_status)
    values = rows[0]
    if values["p_status"] is None:
        raise TransitionError(
            f"purchase {purchase.purchase_id} does not own entry {purchase.transaction_id}"
        )
    credited = Decimal(values["e_credit_amount"])
    if entry_status == EntryStatus.PENDING:
        for each in rows:
            each["w_pending_credits"] -= credited  # read before the entry settled
    after = Decimal(values["w_credits_balance"])
    announced = [
        *ledger.balance_crossings(
            purchase.wallet_id, after - credited, after, values["w_low_balance_threshold_credits"]
        ),
        _settled_event(purchase),
    ]
    loaded = events.Loaded()
    for each in rows:
        loaded.add(each)
    events.emit_on_connection(conn, announced, now, loaded)
    return credited


def fail(
    conn: Connection,
    purchase: PurchaseRef,
    *,
    code: str,
    message: str,
    now: datetime,
    changes: dict[str, Any] | None = None,
    void_pending: bool = False,
) -> None:
    """→ failed: the purchase and its pending entry fail; the balance never saw it.

    `code` says why (`invoice_void`, `invoice_uncollectible`, the provider's refusal,
    `creation_abandoned`, `wallet_ended`); `void_pending` flags an invoice still to be
    voided at the provider (a wallet that ended).
    """
    failed = ledger.fail_pending_purchase(conn, purchase.wallet_id, purchase.transaction_id, now)
    _write(
        conn,
        purchase.purchase_id,
        PurchaseStatus.FAILED,
        now,
        changes,
        failure_code=code[:CODE_LIMIT],
        failure_message=message[:MESSAGE_LIMIT],
        provider_void_pending=void_pending,
    )
    if failed:
        _announce(conn, purchase, now, events.EventType.WALLET_TRANSACTION_FAILED)
    # An automatic top-up that failed is not bought again and again: its rule pauses.
    rules.pause_rule_of_entry(conn, purchase.transaction_id, f"{code}: {message}", now)


def require_refund(
    conn: Connection,
    purchase: PurchaseRef,
    reason: str,
    now: datetime,
    changes: dict[str, Any] | None = None,
) -> None:
    """→ refund_required: paid, but for a wallet that has ended; the entry fails and
    nothing is credited. A person refunds the payment (`refunded` resolves it)."""
    failed = ledger.fail_pending_purchase(conn, purchase.wallet_id, purchase.transaction_id, now)
    _write(
        conn,
        purchase.purchase_id,
        PurchaseStatus.REFUND_REQUIRED,
        now,
        changes,
        attention_reason=reason[:MESSAGE_LIMIT],
    )
    _announce(
        conn,
        purchase,
        now,
        *([events.EventType.WALLET_TRANSACTION_FAILED] if failed else []),
        attention=(AttentionReason.REFUND_REQUIRED, reason),
    )


def require_review(
    conn: Connection,
    purchase: PurchaseRef,
    reason: str,
    now: datetime,
    changes: dict[str, Any] | None = None,
) -> None:
    """→ review_required: paid in a way we cannot accept (currency, amount, discount);
    the entry stays pending for the person who decides."""
    _write(
        conn,
        purchase.purchase_id,
        PurchaseStatus.REVIEW_REQUIRED,
        now,
        changes,
        attention_reason=reason[:MESSAGE_LIMIT],
    )
    _announce(conn, purchase, now, attention=(AttentionReason.REVIEW_REQUIRED, reason))


def mark_refunded(
    conn: Connection,
    purchase: PurchaseRef,
    now: datetime,
    changes: dict[str, Any] | None = None,
) -> None:
    """settled / refund_required → refunded: everything that was paid went back. The
    credits that followed the money out moved through `gateway.returns` and the
    ledger; a `refund_required` purchase never had any."""
    _write(conn, purchase.purchase_id, PurchaseStatus.REFUNDED, now, changes)


def reverse_refund(
    conn: Connection,
    purchase: PurchaseRef,
    back_to: PurchaseStatus,
    now: datetime,
    changes: dict[str, Any] | None = None,
) -> None:
    """refunded → settled / refund_required: money counted as gone back did not go
    (a refund failed after it succeeded, a credit note was voided). A purchase that
    held credits is `settled` again, with the credits `gateway.returns` put back; one
    paid for an ended wallet needs its refund again, and says so."""
    if back_to not in (PurchaseStatus.SETTLED, PurchaseStatus.REFUND_REQUIRED):
        raise TransitionError(f"a refunded purchase does not go back to {back_to}")
    _write(conn, purchase.purchase_id, back_to, now, changes)
    if back_to == PurchaseStatus.REFUND_REQUIRED:
        _announce(
            conn,
            purchase,
            now,
            attention=(
                AttentionReason.REFUND_REQUIRED,
                "money counted as refunded did not go back (a refund failed or a credit "
                "note was voided): refund the payment",
            ),
        )


def sync_purchase(session: Session, purchase: Purchase) -> None:
    """Read a purchase and its entry again after a transition made on the session's
    connection, so ORM objects (an API answer) show the rows as they now are. Only
    their columns: relationships already set stay set (no lazy load later)."""
    session.refresh(purchase, _PURCHASE_COLUMNS)
    key = session.identity_key(WalletTransaction, purchase.transaction_id)
    entry = session.identity_map.get(key)
    if entry is not None:
        session.refresh(entry, _ENTRY_COLUMNS)


_PURCHASE_COLUMNS = [column.key for column in sa_inspect(Purchase).column_attrs]
_ENTRY_COLUMNS = [column.key for column in sa_inspect(WalletTransaction).column_attrs]


def ref_of(purchase: Purchase) -> PurchaseRef:
    return PurchaseRef(purchase.id, purchase.wallet_id, purchase.transaction_id)
