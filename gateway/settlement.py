"""Settling purchases from what the payment provider says about their invoice.

`apply_invoice` is the one code path that credits purchased credits or gives up on
them: the Stripe webhook and the reconciliation run both hand it an
`InvoiceSnapshot`, and the invoice's status decides.

- `paid`: the purchase settles (entry pending → settled, balance raised) exactly
  once, if its wallet is still usable and the payment is acceptable: the purchase's
  currency, at least the expected total (the stored invoice total, else the credits'
  amount) net of anything credited back after payment, no discount. A wallet that
  has ended (terminated, or expired even before the sweep) makes it `refund_required`
  (entry failed); an unacceptable payment makes it `review_required` (entry left
  pending for the person who decides). Nothing is credited in either case.
- `void` / `uncollectible`: the purchase fails (entry failed), unless it settled or
  was flagged: nothing undoes a settlement.
- `open` / `draft`: nothing to settle; the invoice id is linked if it was not yet.

A paid invoice wins over an earlier void or uncollectible one (Stripe lets an
uncollectible invoice be paid later: the money arrived, the credits follow), which
also makes the end state independent of the order events are delivered in.

Locks: wallet, then purchase (the ledger's order). Every webhook delivery runs this
path, so it is written as a few SQL statements on the caller's connection (no ORM
objects): one that locks and reads the purchase with its wallet and entry, the
ledger's move, and one UPDATE of the purchase. Callers own
the transaction. The provider is never called while a lock is held: invoices of
ended wallets are voided after the ending transaction commits, by its caller
(`void_invoices_of_ended_wallets`).
"""

from __future__ import annotations

import enum
import logging
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime
from decimal import Decimal
from typing import Any, cast

from sqlalchemy import ColumnElement, Select, Table, bindparam, select, update
from sqlalchemy.engine import Connection
from sqlalchemy.orm import Session

from gateway import metrics, returns, rules, transitions
from gateway.db import utcnow
from gateway.models import (
    EntryStatus,
    Purchase,
    PurchaseStatus,
    Wallet,
    WalletStatus,
    WalletTransaction,
    wallet_usable,
)
from gateway.providers.base import (
    InvoiceSnapshot,
    PaymentProvider,
    ProviderError,
)

log = logging.getLogger(__name__)

InvoiceStatus = transitions.InvoiceStatus


class SettlementAction(enum.StrEnum):
    SETTLED = "settled"
    REVIEW_REQUIRED = "review_required"
    REFUND_REQUIRED = "refund_required"
    FAILED = "failed"
    PAYMENT_FAILURE_RECORDED = "payment_failure_recorded"
    LINKED = "linked"  # invoice id stored / purchase marked open, nothing else to do
    UNCHANGED = "unchanged"
    NOT_OURS = "not_ours"  # no purchase of ours goes with this invoice


@dataclass(frozen=True)
class SettlementOutcome:
    action: SettlementAction
    purchase_id: str | None = None
    reason: str | None = None


# --- the locked rows ---------------------------------------------------------------

_wallets = cast(Table, Wallet.__table__)
_purchases = cast(Table, Purchase.__table__)
_entries = cast(Table, WalletTransaction.__table__)


def _lock_purchase_where(condition: ColumnElement[bool]) -> Select[Any]:
    """The purchase matching `condition` with its wallet and ledger entry, all three
    locked in one statement.

    PostgreSQL takes the row locks in the order of the `FOR UPDATE OF` list, the
    ledger's order (wallet, then purchase), and after waiting for a lock it reads the
    rows as the holder committed them (tests/settlement/test_settlement_locks.py holds it to
    both). SQLite has no row locks: its writers are serialised by BEGIN IMMEDIATE.
    """
    return (
        select(
            _wallets.c.id.label("wallet_id"),
            _wallets.c.status.label("wallet_status"),
            _wallets.c.expiration_at.label("wallet_expiration_at"),
            _purchases.c.id,
            _purchases.c.status,
            _purchases.c.currency,
            _purchases.c.amount_cents,
            _purchases.c.total_cents,
            _purchases.c.provider_invoice_id,
            _purchases.c.invoice_status,
            _purchases.c.provider_void_pending,
            _purchases.c.transaction_id,
            _purchases.c.credit_amount,
            _purchases.c.amount_paid_cents,
            _purchases.c.payment_id,
            _purchases.c.returned_cents,
            _purchases.c.dispute_status,
            _purchases.c.reclaimed_credits,
            _purchases.c.shortfall_credits,
            _purchases.c.attention_reason,
            _entries.c.status.label("entry_status"),
        )
        .join_from(_wallets, _purchases, _purchases.c.wallet_id == _wallets.c.id)
        .join(_entries, _entries.c.id == _purchases.c.transaction_id)
        .where(condition)
        .with_for_update(of=[_wallets, _purchases, _entries])
    )


# Built once: a statement object is reused, only its parameters change per delivery.
_LOCK_PURCHASE_BY_INVOICE = _lock_purchase_where(
    _purchases.c.provider_invoice_id == bindparam("invoice_id")
)
_LOCK_PURCHASE_BY_ID = _lock_purchase_where(_purchases.c.id == bindparam("purchase_id"))
_LOCK_PURCHASE_BY_PAYMENT = _lock_purchase_where(_purchases.c.payment_id == bindparam("payment_id"))


@dataclass(frozen=True)
class LockedWallet:
    id: str
    status: str
    expiration_at: datetime | None


@dataclass(frozen=True)
class LockedPurchase:
    """A purchase as read under its lock, with the status of its ledger entry."""

    id: str
    status: str
    currency: str
    amount_cents: int
    total_cents: int | None
    provider_invoice_id: str | None
    invoice_status: str | None
    provider_void_pending: bool
    transaction_id: str
    credit_amount: Decimal
    amount_paid_cents: int | None
    payment_id: str | None
    returned_cents: int
    dispute_status: str | None
    reclaimed_credits: Decimal
    shortfall_credits: Decimal
    attention_reason: str | None
    entry_status: str


@dataclass(frozen=True)
class LockedRows:
    """A purchase with its wallet and entry, locked, and the changes to write to it."""

    wallet: LockedWallet
    purchase: LockedPurchase
    # Columns of the purchase to write with the transition the invoice makes (one
    # UPDATE), or on their own if it makes none.
    changes: dict[str, Any]

    @property
    def ref(self) -> transitions.PurchaseRef:
        return transitions.PurchaseRef(
            self.purchase.id, self.wallet.id, self.purchase.transaction_id
        )

    def take_changes(self) -> dict[str, Any]:
        """The gathered changes, handed to a transition that writes them."""
        taken = dict(self.changes)
        self.changes.clear()
        return taken


def _lock_purchase_of(conn: Connection, invoice: InvoiceSnapshot) -> LockedRows | SettlementOutcome:
    """Locks the purchase of `invoice` (wallet, purchase and entry, in one statement):
    found by its stored invoice id, or by the purchase id in the invoice's metadata (an
    event can arrive before the create call stored the invoice id, which is then linked).

    A `SettlementOutcome` (NOT_OURS) when no purchase of ours goes with the invoice.
    """
    row = conn.execute(_LOCK_PURCHASE_BY_INVOICE, {"invoice_id": invoice.id}).first()
    if row is None:
        purchase_id = invoice.purchase_id
        if not purchase_id:
            return SettlementOutcome(
                SettlementAction.NOT_OURS,
                reason=f"invoice {invoice.id} carries no purchase id and is not one of ours",
            )
        row = conn.execute(_LOCK_PURCHASE_BY_ID, {"purchase_id": purchase_id}).first()
        if row is None:
            return SettlementOutcome(
                SettlementAction.NOT_OURS,
                reason=f"invoice {invoice.id} names purchase {purchase_id}, "
                "which does not exist here",
            )
    return _locked(row, invoice)


def lock_purchase_rows(
    conn: Connection,
    *,
    purchase_id: str | None = None,
    payment_id: str | None = None,
    invoice_id: str | None = None,
) -> LockedRows | None:
    """The purchase with `purchase_id` (else paid by `payment_id`, else billed by
    `invoice_id`), its wallet and entry, locked in the ledger's order; None if none."""
    if purchase_id is not None:
        row = conn.execute(_LOCK_PURCHASE_BY_ID, {"purchase_id": purchase_id}).first()
    elif payment_id is not None:
        row = conn.execute(_LOCK_PURCHASE_BY_PAYMENT, {"payment_id": payment_id}).first()
    else:
        row = conn.execute(_LOCK_PURCHASE_BY_INVOICE, {"invoice_id": invoice_id}).first()
    if row is None:
        return None
    locked = _locked(row, None)
    assert isinstance(locked, LockedRows)
    return locked


def _locked(row: Any, invoice: InvoiceSnapshot | None) -> LockedRows | SettlementOutcome:
    values = row._asdict()
    wallet = LockedWallet(
        values.pop("wallet_id"), values.pop("wallet_status"), values.pop("wallet_expiration_at")
    )
    purchase = LockedPurchase(**values)
    changes: dict[str, Any] = {}
    if invoice is None:
        return LockedRows(wallet, purchase, changes)
    if purchase.provider_invoice_id is None:
        # The event beat the create call: store the id now; the create call finds it set.
        changes["provider_invoice_id"] = invoice.id
    elif purchase.provider_invoice_id != invoice.id:
        reason = (
            f"invoice {invoice.id} names purchase {purchase.id}, "
            f"whose invoice is {purchase.provider_invoice_id}"
        )
        log.warning("%s; left for reconciliation", reason)
        return SettlementOutcome(SettlementAction.NOT_OURS, purchase.id, reason)
    return LockedRows(wallet, purchase, changes)


# --- applying an invoice -----------------------------------------------------------


def apply_invoice(
    conn: Connection, invoice: InvoiceSnapshot, now: datetime, source: str
) -> SettlementOutcome:
    """Bring the purchase of `invoice` in line with the invoice's status (see module doc).

    Runs in the caller's transaction on `conn`. Idempotent: applying the same invoice
    again changes nothing. `source` names the caller in logs ("webhook evt_…",
    "reconcile").
    """
    locked = _lock_purchase_of(conn, invoice)
    if isinstance(locked, SettlementOutcome):
        return locked
    linked = bool(locked.changes)
    if invoice.status == InvoiceStatus.PAID:
        result = _apply_payment(conn, locked, invoice, now)
    elif invoice.status in transitions.FAILED_INVOICE_STATUSES:
        result = _apply_failure(conn, locked, invoice, now)
    else:
        result = _apply_open(conn, locked, invoice, now, linked=linked)
    transitions.record(conn, locked.purchase.id, locked.changes)
    if result.action not in (SettlementAction.UNCHANGED, SettlementAction.LINKED):
        log.info(
            "%s: purchase %s %s (invoice %s)%s",
            source,
            locked.purchase.id,
            result.action,
            invoice.id,
            f": {result.reason}" if result.reason else "",
        )
    return result


def record_payment_failure(
    conn: Connection, invoice: InvoiceSnapshot, message: str, now: datetime, source: str
) -> SettlementOutcome:
    """A failed charge attempt: remembered on the purchase; the entry stays pending,
    since the provider retries the charge (or the customer pays another way)."""
    locked = _lock_purchase_of(conn, invoice)
    if isinstance(locked, SettlementOutcome):
        return locked
    purchase = locked.purchase
    locked.changes.update(last_payment_error=message, updated_at=now)
    if purchase.status == PurchaseStatus.CREATING and invoice.status == InvoiceStatus.OPEN:
        locked.changes.update(invoice_columns(invoice))
        transitions.open_invoice(conn, locked.ref, now, locked.take_changes())
    transitions.record(conn, purchase.id, locked.changes)
    if purchase.status in transitions.UNPAID_STATUSES:
        # An automatic top-up is not charged again and again: its rule pauses.
        rules.pause_rule_of_entry(
            conn, purchase.transaction_id, f"{rules.PausedReason.PAYMENT_FAILED}: {message}", now
        )
    log.info("%s: purchase %s payment failed: %s", source, purchase.id, message)
    return SettlementOutcome(SettlementAction.PAYMENT_FAILURE_RECORDED, purchase.id, message)


_LINK_PAYMENT = (
    update(_purchases)
    .where(
        _purchases.c.provider_invoice_id == bindparam("b_invoice_id"),
        _purchases.c.payment_id.is_(None),
    )
    .values(payment_id=bindparam("b_payment_id"))
    .returning(_purchases.c.id)
)
_PURCHASE_OF_INVOICE = select(_purchases.c.id).where(
    _purchases.c.provider_invoice_id == bindparam("b_invoice_id")
)


def record_payment(
    conn: Connection, invoice_id: str, payment_id: str, source: str
) -> SettlementOutcome:
    """The payment that paid a purchase's invoice, stored on the purchase (once) so its
    refunds and disputes map to it without asking the provider. One UPDATE of the
    purchase row: no status changes, no other lock is taken."""
    linked = conn.execute(
        _LINK_PAYMENT, {"b_invoice_id": invoice_id, "b_payment_id": payment_id}
    ).scalar()
    if linked is not None:
        log.info("%s: purchase %s paid by %s", source, linked, payment_id)
        return SettlementOutcome(SettlementAction.LINKED, linked)
    known = conn.execute(_PURCHASE_OF_INVOICE, {"b_invoice_id": invoice_id}).scalar()
    if known is None:
        return SettlementOutcome(
            SettlementAction.NOT_OURS, reason=f"invoice {invoice_id} is not a purchase of ours"
        )
    return SettlementOutcome(SettlementAction.UNCHANGED, known, "payment already known")


def invoice_columns(invoice: InvoiceSnapshot) -> dict[str, Any]:
    """The purchase's copy of the invoice's status and amounts (the hosted page's URL
    only when the invoice has one: a later event without it keeps the stored one)."""
    columns: dict[str, Any] = {
        "invoice_status": invoice.status,
        "subtotal_cents": invoice.subtotal_cents,
        "tax_cents": invoice.tax_cents,
        "total_cents": invoice.total_cents,
        "amount_paid_cents": invoice.amount_paid_cents,
    }
    if invoice.hosted_invoice_url:
        columns["hosted_invoice_url"] = invoice.hosted_invoice_url
    if invoice.payment_id:
        columns["payment_id"] = invoice.payment_id
    return columns


def payment_problem(purchase: LockedPurchase, invoice: InvoiceSnapshot) -> str | None:
    """Why a paid invoice cannot be accepted for `purchase`, or None if it can."""
    if invoice.currency.upper() != purchase.currency.upper():
        return f"paid in {invoice.currency.upper()}, but the purchase is in {purchase.currency}"
    if invoice.has_discount:
        return "the invoice carries a discount; credit purchases never take one"
    expected = purchase.total_cents if purchase.total_cents is not None else purchase.amount_cents
    kept = invoice.amount_paid_cents - invoice.credited_after_payment_cents
    if kept < expected:
        credited = (
            f" ({invoice.credited_after_payment_cents} credited back after payment)"
            if invoice.credited_after_payment_cents
            else ""
        )
        return (
            f"paid {kept} in minor units of {purchase.currency}{credited}, "
            f"expected at least {expected}"
        )
    return None


def _apply_payment(
    conn: Connection, locked: LockedRows, invoice: InvoiceSnapshot, now: datetime
) -> SettlementOutcome:
    wallet, purchase = locked.wallet, locked.purchase
    if purchase.status in transitions.FINAL_STATUSES:
        return SettlementOutcome(
            SettlementAction.UNCHANGED, purchase.id, f"already {purchase.status}"
        )
    # CREATING, OPEN, or FAILED (voided or uncollectible here, then paid at the provider).
    problem = payment_problem(purchase, invoice)
    locked.changes.update(invoice_columns(invoice))
    if not wallet_usable(wallet.status, wallet.expiration_at, now):
        ended = "terminated" if wallet.status == WalletStatus.TERMINATED else "expired"
        reason = (
            f"invoice {invoice.id} was paid but wallet {wallet.id} is {ended}: "
            "no credits were added; refund the payment"
        )
        transitions.require_refund(conn, locked.ref, reason, now, locked.take_changes())
        return SettlementOutcome(SettlementAction.REFUND_REQUIRED, purchase.id, reason)
    if problem is not None:
        reason = f"invoice {invoice.id}: {problem}; no credits were added"
        transitions.require_review(conn, locked.ref, reason, now, locked.take_changes())
        return SettlementOutcome(SettlementAction.REVIEW_REQUIRED, purchase.id, reason)
    credited = transitions.settle(
        conn, locked.ref, EntryStatus(purchase.entry_status), now, locked.take_changes()
    )
    metrics.CREDITS_MOVED.labels("purchased").inc(float(credited))
    if purchase.returned_cents or purchase.dispute_status:
        # Money went back before the payment was seen here (events in any order): its
        # credits follow it out now. Rare, so the common settlement reads nothing more.
        returns.follow_after_settlement(conn, purchase.id, now)
    return SettlementOutcome(SettlementAction.SETTLED, purchase.id)


def _apply_failure(
    conn: Connection, locked: LockedRows, invoice: InvoiceSnapshot, now: datetime
) -> SettlementOutcome:
    purchase, changes = locked.purchase, locked.changes
    if purchase.status == PurchaseStatus.FAILED:
        changed = False
        if _is_later(invoice.status, purchase.invoice_status):
            changes["invoice_status"] = invoice.status
            changed = True
        if invoice.status == InvoiceStatus.VOID and purchase.provider_void_pending:
            changes["provider_void_pending"] = False  # the void we asked for has happened
            changed = True
        action = SettlementAction.LINKED if changed else SettlementAction.UNCHANGED
        return SettlementOutcome(action, purchase.id, "already failed")
    if purchase.status in transitions.FINAL_STATUSES:
        if purchase.status == PurchaseStatus.SETTLED:
            log.warning(
                "invoice %s is %s but purchase %s settled: left as is for reconciliation",
                invoice.id,
                invoice.status,
                purchase.id,
            )
        return SettlementOutcome(
            SettlementAction.UNCHANGED, purchase.id, f"already {purchase.status}"
        )
    message = f"the invoice was marked {invoice.status} at the provider"
    changes["invoice_status"] = invoice.status
    transitions.fail(
        conn,
        locked.ref,
        code=f"invoice_{invoice.status}",
        message=message,
        now=now,
        changes=locked.take_changes(),
    )
    return SettlementOutcome(SettlementAction.FAILED, purchase.id, message)


# Where an invoice is in its life: an uncollectible invoice can still be voided or
# paid, void and paid are final. An older event never moves the recorded status back.
_INVOICE_STAGE: dict[str, int] = {
    InvoiceStatus.DRAFT: 1,
    InvoiceStatus.OPEN: 2,
    InvoiceStatus.UNCOLLECTIBLE: 3,
    InvoiceStatus.VOID: 4,
    InvoiceStatus.PAID: 4,
}


def _is_later(status: str, than: str | None) -> bool:
    return _INVOICE_STAGE.get(status, 0) > _INVOICE_STAGE.get(than or "", 0)


def _apply_open(
    conn: Connection, locked: LockedRows, invoice: InvoiceSnapshot, now: datetime, *, linked: bool
) -> SettlementOutcome:
    purchase = locked.purchase
    if purchase.status == PurchaseStatus.CREATING and invoice.status == InvoiceStatus.OPEN:
        locked.changes.update(invoice_columns(invoice))
        transitions.open_invoice(conn, locked.ref, now, locked.take_changes())
        return SettlementOutcome(SettlementAction.LINKED, purchase.id)
    action = SettlementAction.LINKED if linked else SettlementAction.UNCHANGED
    return SettlementOutcome(action, purchase.id)


# --- wallets that end ---------------------------------------------------------------

SessionFactory = Callable[[], Session]


def void_invoices_of_ended_wallets(
    new_session: SessionFactory, provider: PaymentProvider | None, purchase_ids: Sequence[str]
) -> None:
    """Once the transaction that ended their wallets has committed: void the invoices
    of `purchase_ids` (what `wallets` flagged `provider_void_pending`), best effort.

    Without a provider, or when a call fails, the flags stay for reconciliation; the
    ending stands either way.
    """
    if not purchase_ids:
        return
    if provider is None:
        log.warning(
            "no payment provider: invoices of %d purchase(s) left flagged for reconciliation",
            len(purchase_ids),
        )
        return
    try:
        void_flagged_invoices(new_session, provider, purchase_ids)
    except Exception:
        # Best effort: the commit already happened, the flags stay for reconciliation.
        log.exception("voiding invoices of ended wallets failed; left for reconciliation")


def sessions_like(session: Session) -> SessionFactory:
    """New sessions on `session`'s engine (or test connection), for short transactions."""
    bind = session.get_bind()

    def new_session() -> Session:
        return Session(bind=bind, expire_on_commit=False, join_transaction_mode="create_savepoint")

    return new_session


def void_if_flagged(session: Session, provider: PaymentProvider, purchase_id: str) -> None:
    """For the create call, once it has stored the invoice and committed: if the wallet
    ended meanwhile, the purchase is flagged and its new invoice is voided now."""
    flagged = session.execute(
        select(Purchase.provider_void_pending).where(Purchase.id == purchase_id)
    ).scalar_one_or_none()
    session.commit()  # no transaction stays open across the provider call
    if flagged:
        try:
            void_flagged_invoices(sessions_like(session), provider, [purchase_id])
        except Exception:
            log.exception("voiding the invoice of purchase %s failed; left flagged", purchase_id)


@dataclass(frozen=True)
class VoidResult:
    voided: list[str]
    left_flagged: list[str]


def void_flagged_invoices(
    new_session: SessionFactory,
    provider: PaymentProvider,
    purchase_ids: Iterable[str] | None = None,
    *,
    now: datetime | None = None,
) -> VoidResult:
    """Void at the provider the invoices of purchases flagged `provider_void_pending`.

    Every flagged purchase (or those of `purchase_ids`): read in a short transaction,
    the provider called with no transaction open (a draft is left alone: the create
    call still making it voids it after finalizing), then what the provider answered is
    applied through `apply_invoice` (a payment that beat the void is marked for refund)
    and the flag cleared, in another short transaction. Failures leave the flag for
    the next run (reconciliation).
    """
    if purchase_ids is None:
        with new_session() as session:
            purchase_ids = list(
                session.execute(
                    select(Purchase.id)
                    .where(Purchase.provider_void_pending.is_(True))
                    .order_by(Purchase.id)
                ).scalars()
            )
    voided: list[str] = []
    left: list[str] = []
    for purchase_id in purchase_ids:
        with new_session() as session:
            purchase = session.get(Purchase, purchase_id)
            if purchase is None or not purchase.provider_void_pending:
                continue
            invoice_id = purchase.provider_invoice_id
        try:
            if invoice_id is None:
                found = provider.find_purchase_invoice(purchase_id)
                if found is None:
                    left.append(purchase_id)  # not created (yet): reconciliation decides
                    continue
                invoice_id = found.id
            invoice = provider.retrieve_invoice(invoice_id)
            if invoice.status == InvoiceStatus.DRAFT:
                # Still being made by the create call, which voids it once finalized;
                # asking now would only get a refusal (cached under the void's key).
                left.append(purchase_id)
                continue
            if invoice.status in (InvoiceStatus.OPEN, InvoiceStatus.UNCOLLECTIBLE):
                invoice = provider.void_invoice(invoice_id)
        except ProviderError as exc:
            log.warning("voiding the invoice of purchase %s failed: %s", purchase_id, exc)
            left.append(purchase_id)
            continue
        if invoice.status not in (InvoiceStatus.VOID, InvoiceStatus.PAID):
            left.append(purchase_id)
            continue
        with new_session() as session, session.begin():
            outcome = apply_invoice(
                session.connection(),
                invoice,
                now or utcnow(),
                source=f"void of purchase {purchase_id}",
            )
            if outcome.action != SettlementAction.NOT_OURS:
                session.get_one(Purchase, purchase_id).provider_void_pending = False
        if outcome.action == SettlementAction.NOT_OURS:
            left.append(purchase_id)
        else:
            voided.append(purchase_id)
    return VoidResult(voided=voided, left_flagged=left)
