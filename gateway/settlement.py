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

Locks: wallet, then purchase (the ledger's order). Use cases only flush; callers
commit. The provider is never called while a lock is held: invoices of ended
wallets are voided after the ending transaction commits (`close_purchases_of_ended_wallets`).
"""

from __future__ import annotations

import enum
import logging
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import event, select
from sqlalchemy.orm import Session, SessionTransaction

from gateway import ledger, metrics
from gateway.db import utcnow
from gateway.models import (
    EntryStatus,
    Purchase,
    PurchaseStatus,
    Wallet,
    WalletStatus,
    WalletTransaction,
)
from gateway.providers.base import (
    InvoiceSnapshot,
    PaymentProvider,
    ProviderError,
    ProviderNotConfigured,
)

log = logging.getLogger(__name__)

# Statuses a later event may no longer change: credited, or waiting for a person.
_FINAL = frozenset(
    {PurchaseStatus.SETTLED, PurchaseStatus.REFUND_REQUIRED, PurchaseStatus.REVIEW_REQUIRED}
)
_UNPAID = frozenset({PurchaseStatus.CREATING, PurchaseStatus.OPEN})
_FAILED_INVOICE_STATUSES = frozenset({"void", "uncollectible"})


class SettlementError(RuntimeError):
    """Purchase and ledger disagree (a bug, never input): processing stops, nothing applied."""


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


@dataclass
class _Locked:
    wallet: Wallet
    purchase: Purchase
    entry: WalletTransaction


def find_purchase(session: Session, invoice: InvoiceSnapshot) -> tuple[Purchase | None, str]:
    """The purchase `invoice` pays, by stored invoice id or by the purchase id in its
    metadata (an event can arrive before the create call stored the invoice id)."""
    purchase = session.execute(
        select(Purchase).where(Purchase.provider_invoice_id == invoice.id)
    ).scalar_one_or_none()
    if purchase is not None:
        return purchase, "invoice id"
    purchase_id = invoice.purchase_id
    if not purchase_id:
        return None, f"invoice {invoice.id} carries no purchase id and is not one of ours"
    purchase = session.get(Purchase, purchase_id)
    if purchase is None:
        return None, f"invoice {invoice.id} names purchase {purchase_id}, which does not exist here"
    return purchase, "metadata"


def apply_invoice(
    session: Session, invoice: InvoiceSnapshot, now: datetime, source: str
) -> SettlementOutcome:
    """Bring the purchase of `invoice` in line with the invoice's status (see module doc).

    Idempotent: applying the same invoice again changes nothing. `source` names the
    caller in logs ("webhook evt_…", "reconcile").
    """
    locked, outcome = _lock_purchase_of(session, invoice)
    if locked is None:
        assert outcome is not None
        return outcome
    if invoice.status == "paid":
        result = _apply_payment(locked, invoice, now)
    elif invoice.status in _FAILED_INVOICE_STATUSES:
        result = _apply_failure(locked, invoice, now)
    else:
        result = _apply_open(locked, invoice, linked=outcome is not None)
    session.flush()
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
    session: Session, invoice: InvoiceSnapshot, message: str, now: datetime, source: str
) -> SettlementOutcome:
    """A failed charge attempt: remembered on the purchase; the entry stays pending,
    since the provider retries the charge (or the customer pays another way)."""
    locked, outcome = _lock_purchase_of(session, invoice)
    if locked is None:
        assert outcome is not None
        return outcome
    purchase = locked.purchase
    purchase.last_payment_error = message
    if purchase.status == PurchaseStatus.CREATING and invoice.status == "open":
        _store_invoice(purchase, invoice)
        purchase.status = PurchaseStatus.OPEN
    purchase.updated_at = now
    session.flush()
    log.info("%s: purchase %s payment failed: %s", source, purchase.id, message)
    return SettlementOutcome(SettlementAction.PAYMENT_FAILURE_RECORDED, purchase.id, message)


def _lock_purchase_of(
    session: Session, invoice: InvoiceSnapshot
) -> tuple[_Locked | None, SettlementOutcome | None]:
    """Locks (wallet, then purchase) the purchase of `invoice` and links the invoice id.

    Returns (None, NOT_OURS outcome) when no purchase goes with the invoice, and
    (locked, LINKED outcome) when the invoice id was stored just now.
    """
    found, how = find_purchase(session, invoice)
    if found is None:
        return None, SettlementOutcome(SettlementAction.NOT_OURS, reason=how)
    purchase_id, wallet_id = found.id, found.wallet_id
    wallet = ledger.lock_wallet(session, wallet_id)
    purchase = session.execute(
        select(Purchase)
        .where(Purchase.id == purchase_id)
        .with_for_update()
        .execution_options(populate_existing=True)
    ).scalar_one()
    entry = session.execute(
        select(WalletTransaction)
        .where(WalletTransaction.id == purchase.transaction_id)
        .execution_options(populate_existing=True)
    ).scalar_one()
    linked: SettlementOutcome | None = None
    if purchase.provider_invoice_id is None:
        # The event beat the create call: store the id now; the create call finds it set.
        purchase.provider_invoice_id = invoice.id
        linked = SettlementOutcome(SettlementAction.LINKED, purchase.id)
    elif purchase.provider_invoice_id != invoice.id:
        reason = (
            f"invoice {invoice.id} names purchase {purchase.id}, "
            f"whose invoice is {purchase.provider_invoice_id}"
        )
        log.warning("%s; left for reconciliation", reason)
        return None, SettlementOutcome(SettlementAction.NOT_OURS, purchase.id, reason)
    return _Locked(wallet, purchase, entry), linked


def _store_invoice(purchase: Purchase, invoice: InvoiceSnapshot) -> None:
    purchase.invoice_status = invoice.status
    purchase.subtotal_cents = invoice.subtotal_cents
    purchase.tax_cents = invoice.tax_cents
    purchase.total_cents = invoice.total_cents
    purchase.amount_paid_cents = invoice.amount_paid_cents
    if invoice.hosted_invoice_url:
        purchase.hosted_invoice_url = invoice.hosted_invoice_url


def payment_problem(purchase: Purchase, invoice: InvoiceSnapshot) -> str | None:
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


def _unchanged(purchase: Purchase) -> SettlementOutcome:
    return SettlementOutcome(SettlementAction.UNCHANGED, purchase.id, f"already {purchase.status}")


def _apply_payment(locked: _Locked, invoice: InvoiceSnapshot, now: datetime) -> SettlementOutcome:
    wallet, purchase, entry = locked.wallet, locked.purchase, locked.entry
    if purchase.status in _FINAL:
        return SettlementOutcome(
            SettlementAction.UNCHANGED, purchase.id, f"already {purchase.status}"
        )
    # CREATING, OPEN, or FAILED (voided or uncollectible here, then paid at the provider).
    problem = payment_problem(purchase, invoice)
    _store_invoice(purchase, invoice)
    purchase.updated_at = now
    if not wallet.is_usable(now):
        ended = "terminated" if wallet.status == WalletStatus.TERMINATED else "expired"
        purchase.status = PurchaseStatus.REFUND_REQUIRED
        purchase.attention_reason = (
            f"invoice {invoice.id} was paid but wallet {wallet.id} is {ended}: "
            "no credits were added; refund the payment"
        )
        ledger.fail_purchase_entry(wallet, entry, now)
        return SettlementOutcome(
            SettlementAction.REFUND_REQUIRED, purchase.id, purchase.attention_reason
        )
    if problem is not None:
        purchase.status = PurchaseStatus.REVIEW_REQUIRED
        purchase.attention_reason = f"invoice {invoice.id}: {problem}; no credits were added"
        return SettlementOutcome(
            SettlementAction.REVIEW_REQUIRED, purchase.id, purchase.attention_reason
        )
    if entry.status == EntryStatus.PENDING:
        moved = ledger.settle_purchase_entry(wallet, entry, now)
    else:
        moved = ledger.settle_failed_purchase_entry(wallet, entry, now)
    if not moved:
        raise SettlementError(
            f"purchase {purchase.id} is {purchase.status}, its entry {entry.id} {entry.status}"
        )
    purchase.status = PurchaseStatus.SETTLED
    purchase.failure_code = None
    purchase.failure_message = None
    purchase.provider_void_pending = False
    metrics.CREDITS_MOVED.labels("purchased").inc(float(entry.credit_amount))
    return SettlementOutcome(SettlementAction.SETTLED, purchase.id)


def _apply_failure(locked: _Locked, invoice: InvoiceSnapshot, now: datetime) -> SettlementOutcome:
    wallet, purchase, entry = locked.wallet, locked.purchase, locked.entry
    if purchase.status == PurchaseStatus.FAILED:
        changed = False
        if _is_later(invoice.status, purchase.invoice_status):
            purchase.invoice_status = invoice.status
            changed = True
        if invoice.status == "void" and purchase.provider_void_pending:
            purchase.provider_void_pending = False  # the void we asked for has happened
            changed = True
        action = SettlementAction.LINKED if changed else SettlementAction.UNCHANGED
        return SettlementOutcome(action, purchase.id, "already failed")
    if purchase.status in _FINAL:
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
    purchase.status = PurchaseStatus.FAILED
    purchase.invoice_status = invoice.status
    purchase.failure_code = f"invoice_{invoice.status}"
    purchase.failure_message = f"the invoice was marked {invoice.status} at the provider"
    purchase.provider_void_pending = False
    purchase.updated_at = now
    ledger.fail_purchase_entry(wallet, entry, now)
    return SettlementOutcome(SettlementAction.FAILED, purchase.id, purchase.failure_message)


# Where an invoice is in its life: an uncollectible invoice can still be voided or
# paid, void and paid are final. An older event never moves the recorded status back.
_INVOICE_STAGE = {"draft": 1, "open": 2, "uncollectible": 3, "void": 4, "paid": 4}


def _is_later(status: str, than: str | None) -> bool:
    return _INVOICE_STAGE.get(status, 0) > _INVOICE_STAGE.get(than or "", 0)


def _apply_open(locked: _Locked, invoice: InvoiceSnapshot, *, linked: bool) -> SettlementOutcome:
    purchase = locked.purchase
    if purchase.status == PurchaseStatus.CREATING and invoice.status == "open":
        _store_invoice(purchase, invoice)
        purchase.status = PurchaseStatus.OPEN
        return SettlementOutcome(SettlementAction.LINKED, purchase.id)
    action = SettlementAction.LINKED if linked else SettlementAction.UNCHANGED
    return SettlementOutcome(action, purchase.id)


# --- wallets that end ---------------------------------------------------------------

_VOIDS_KEY = "gateway.purchases_to_void"
_LISTENING_KEY = "gateway.voids_listening"

SessionFactory = Callable[[], Session]


def close_purchases_of_ended_wallets(session: Session, wallets: Sequence[Wallet]) -> None:
    """`WALLET_ENDED_HOOKS`: the unpaid purchases of the (locked) wallets fail with them.

    Their entries fail in the ending transaction (a terminated wallet keeps no pending
    credits) and each purchase is flagged `provider_void_pending`; once that transaction
    commits, their invoices are voided at the provider, best effort. A payment that
    still lands later finds the wallet ended and is marked for refund. One query for
    all the wallets, so the expiry sweep pays it once per batch.
    """
    ended = {wallet.id: wallet for wallet in wallets}
    if not ended:
        return
    purchases = (
        session.execute(
            select(Purchase)
            .where(Purchase.wallet_id.in_(list(ended)), Purchase.status.in_(list(_UNPAID)))
            .order_by(Purchase.id)
            .with_for_update()
            .execution_options(populate_existing=True)
        )
        .scalars()
        .all()
    )
    if not purchases:
        return
    for purchase in purchases:
        wallet = ended[purchase.wallet_id]
        at = wallet.terminated_at
        assert at is not None, "hooks run once the wallet is terminated"
        entry = session.get_one(WalletTransaction, purchase.transaction_id)
        ledger.fail_purchase_entry(wallet, entry, at)
        purchase.status = PurchaseStatus.FAILED
        purchase.failure_code = "wallet_ended"
        purchase.failure_message = "the wallet ended before the invoice was paid"
        purchase.provider_void_pending = True
        purchase.updated_at = at
    session.flush()
    _void_after_commit(session, [purchase.id for purchase in purchases])


def _void_after_commit(session: Session, purchase_ids: list[str]) -> None:
    if not session.info.get(_LISTENING_KEY):
        event.listen(session, "after_commit", _after_commit)
        event.listen(session, "after_soft_rollback", _after_soft_rollback)
        session.info[_LISTENING_KEY] = True
    session.info.setdefault(_VOIDS_KEY, []).extend(purchase_ids)


def _after_soft_rollback(session: Session, previous_transaction: SessionTransaction) -> None:
    if previous_transaction.parent is None:  # the whole transaction, not a savepoint in it
        session.info.pop(_VOIDS_KEY, None)


def _after_commit(session: Session) -> None:
    purchase_ids: list[str] = session.info.pop(_VOIDS_KEY, None) or []
    if not purchase_ids:
        return
    provider = _app_provider()
    if provider is None:
        log.warning(
            "no payment provider: invoices of %d purchase(s) left flagged for reconciliation",
            len(purchase_ids),
        )
        return
    try:
        void_flagged_invoices(sessions_like(session), provider, purchase_ids)
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


def _app_provider() -> PaymentProvider | None:
    """The current app's provider; None outside an app or without a configured key."""
    from flask import has_app_context

    from gateway.providers import get_provider

    if not has_app_context():
        return None
    try:
        return get_provider()
    except ProviderNotConfigured:
        return None


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
            if invoice.status == "draft":
                # Still being made by the create call, which voids it once finalized;
                # asking now would only get a refusal (cached under the void's key).
                left.append(purchase_id)
                continue
            if invoice.status in ("open", "uncollectible"):
                invoice = provider.void_invoice(invoice_id)
        except ProviderError as exc:
            log.warning("voiding the invoice of purchase %s failed: %s", purchase_id, exc)
            left.append(purchase_id)
            continue
        if invoice.status not in ("void", "paid"):
            left.append(purchase_id)
            continue
        with new_session() as session, session.begin():
            outcome = apply_invoice(
                session, invoice, now or utcnow(), source=f"void of purchase {purchase_id}"
            )
            if outcome.action != SettlementAction.NOT_OURS:
                session.get_one(Purchase, purchase_id).provider_void_pending = False
        if outcome.action == SettlementAction.NOT_OURS:
            left.append(purchase_id)
        else:
            voided.append(purchase_id)
    return VoidResult(voided=voided, left_flagged=left)


def _register_wallet_hook() -> None:
    from gateway.wallets import WALLET_ENDED_HOOKS

    if close_purchases_of_ended_wallets not in WALLET_ENDED_HOOKS:
        WALLET_ENDED_HOOKS.append(close_purchases_of_ended_wallets)


_register_wallet_hook()
