"""Wallet use cases: create, top up, update, terminate, expire.

Use cases run inside the caller's transaction and only flush (the caller commits: the
API's unit of work, the sweep once per batch); balances move only through
`gateway.ledger`.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from decimal import Decimal
from typing import Protocol

from sqlalchemy import func, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from gateway import actors, events, ledger, money, rules, transitions
from gateway.customers import get_customer, has_active_subscription
from gateway.errors import (
    CurrencyMismatch,
    NoActiveSubscription,
    NotFound,
    PaymentProviderUnavailable,
    ValidationFailed,
    WalletAlreadyExists,
    WalletIsTerminated,
)
from gateway.events import EventType, TerminationReason
from gateway.models import (
    Customer,
    Purchase,
    PurchaseStatus,
    Wallet,
    WalletStatus,
    WalletTransaction,
)
from gateway.providers.base import PaymentProvider

UNSET: object = object()


@dataclass(frozen=True)
class WalletInput:
    external_customer_id: str
    rate_amount: Decimal
    name: str | None = None
    currency: str | None = None
    paid_credits: Decimal | None = None
    granted_credits: Decimal | None = None
    expiration_at: datetime | None = None
    recurring_transaction_rules: Sequence[rules.RuleInput] = ()
    low_balance_threshold_credits: Decimal | None = None


@dataclass
class WalletResult:
    wallet: Wallet
    transactions: list[WalletTransaction] = field(default_factory=list)
    # The customer's expired wallet, ended to make room, failed its unpaid purchases:
    # their invoices are voided at the provider once this has committed.
    purchases_to_void: list[str] = field(default_factory=list)


@dataclass(frozen=True)
class TerminatedWallet:
    """A terminated wallet, and the purchases its ending failed: the caller voids their
    invoices at the provider once the transaction has committed."""

    wallet: Wallet
    purchases_to_void: list[str]


@dataclass(frozen=True)
class ExpiredWallets:
    """One batch of the expiry sweep: the wallets it ended, and the purchases whose
    invoices the caller voids once the batch has committed."""

    wallet_ids: list[str]
    purchases_to_void: list[str]


class PurchaseOpener(Protocol):
    """Where paid credits are handed (the purchases module's `PurchaseBatch.open` when a
    payment provider is configured). Without one, purchases are refused before anything
    is stored."""

    def __call__(
        self,
        session: Session,
        wallet: Wallet,
        credits: Decimal,
        now: datetime,
        /,
        *,
        created_by: str,
    ) -> WalletTransaction: ...


# The payment provider, asked for only when a top-up rule buys credits (its amounts are
# checked against the provider's limits). Without one: `payment_provider_unavailable`.
ProviderSource = Callable[[], PaymentProvider]


def provider_unavailable() -> PaymentProvider:
    raise PaymentProviderUnavailable(
        "automatic top-ups that buy credits need a payment provider: set STRIPE_SECRET_KEY",
        details={"setting": "STRIPE_SECRET_KEY"},
    )


def _check_rules(
    given: Sequence[rules.RuleInput], rate: Decimal, currency: str, provider: ProviderSource
) -> None:
    rules.validate_rules(given, rate, currency, provider() if rules.needs_provider(given) else None)


def paid_credits_unavailable(
    _session: Session, _wallet: Wallet, _credits: Decimal, _now: datetime, *, created_by: str
) -> WalletTransaction:
    raise PaymentProviderUnavailable(
        "paid credits need a payment provider: set STRIPE_SECRET_KEY",
        details={"setting": "STRIPE_SECRET_KEY"},
    )


def get_wallet(session: Session, wallet_id: str) -> Wallet:
    wallet = session.get(Wallet, wallet_id)
    if wallet is None:
        raise NotFound(f"wallet {wallet_id} does not exist", details={"wallet": ["not_found"]})
    return wallet


def _check_expiration(expiration_at: datetime | None, now: datetime) -> None:
    if expiration_at is not None and expiration_at <= now:
        raise ValidationFailed(
            "expiration_at must be in the future",
            details={"expiration_at": ["must be in the future"]},
        )


def ensure_usable(wallet: Wallet, now: datetime) -> None:
    """Refuse changes to a terminated wallet, or one past its expiration (swept or not)."""
    if wallet.status == WalletStatus.TERMINATED:
        raise WalletIsTerminated(
            f"wallet {wallet.id} is terminated", details={"wallet": ["terminated"]}
        )
    if wallet.is_expired(now):
        raise WalletIsTerminated(
            f"wallet {wallet.id} expired at {wallet.expiration_at:%Y-%m-%dT%H:%M:%SZ}",
            details={"wallet": ["expired"]},
        )


def _add_credits(
    session: Session,
    wallet: Wallet,
    *,
    granted: Decimal | None,
    paid: Decimal | None,
    now: datetime,
    open_purchase: PurchaseOpener,
    created_by: str,
) -> list[WalletTransaction]:
    if not granted and not paid:
        raise ValidationFailed(
            "give paid_credits or granted_credits (or both) greater than zero",
            details={"paid_credits": ["paid_credits or granted_credits is required"]},
        )
    transactions: list[WalletTransaction] = []
    if paid:
        transactions.append(open_purchase(session, wallet, paid, now, created_by=created_by))
    if granted:
        transactions.append(
            ledger.grant_credits(session, wallet, granted, now, created_by=created_by)
        )
    return transactions


def create_wallet(
    session: Session,
    data: WalletInput,
    now: datetime,
    *,
    created_by: str,
    open_purchase: PurchaseOpener = paid_credits_unavailable,
    provider: ProviderSource = provider_unavailable,
) -> WalletResult:
    """A new active wallet for a customer with an active subscription, with its credits
    (ledger entries made by `created_by`) and its automatic top-up rules (all checked
    before anything is stored).

    The customer's row is locked first (customer, then wallet: the order every path
    takes), so its currency, which the wallet takes, cannot change meanwhile: an upsert
    changing it waits, then finds the wallet and is refused.
    """
    customer = get_customer(session, data.external_customer_id, lock=True)
    if data.currency is not None and data.currency != customer.currency:
        raise CurrencyMismatch(
            f"the wallet's currency is the customer's ({customer.currency})",
            details={"currency": [f"must be {customer.currency}"]},
        )
    if not has_active_subscription(session, customer):
        raise NoActiveSubscription(
            f"customer {customer.external_id} has no active subscription",
            details={"external_customer_id": ["no active subscription"]},
        )
    _check_expiration(data.expiration_at, now)
    _check_rules(data.recurring_transaction_rules, data.rate_amount, customer.currency, provider)
    purchases_to_void: list[str] = []
    active_id = _active_wallet_id(session, customer)
    if active_id is not None:
        active = ledger.lock_wallet(session, active_id)
        # Re-read under the lock: the sweep or a DELETE may have ended it meanwhile.
        if active.status == WalletStatus.ACTIVE:
            if not active.is_expired(now):
                raise _already_exists(customer)
            # Expired but not swept yet: record its expiry now; then a new wallet may exist.
            assert active.expiration_at is not None
            purchases_to_void = _end_wallet(
                session, active, active.expiration_at, TerminationReason.EXPIRED, now,
                created_by=actors.SYSTEM,
            )  # fmt: skip
    wallet = Wallet(
        customer_id=customer.id,
        status=WalletStatus.ACTIVE,
        name=data.name,
        currency=customer.currency,
        rate_amount=data.rate_amount,
        credits_balance=Decimal("0"),
        consumed_credits=Decimal("0"),
        consumed_amount_cents=0,
        expiration_at=data.expiration_at,
        low_balance_threshold_credits=data.low_balance_threshold_credits,
        created_at=now,
    )
    try:
        # The partial unique index is the arbiter when two requests race past the check.
        with session.begin_nested():
            session.add(wallet)
    except IntegrityError as exc:
        raise _already_exists(customer) from exc
    if data.recurring_transaction_rules:
        rules.replace_rules(session, wallet, data.recurring_transaction_rules, now)
    events.emit_one(session, EventType.WALLET_CREATED, wallet.id, now)
    if not data.granted_credits and not data.paid_credits:
        return WalletResult(wallet, purchases_to_void=purchases_to_void)
    transactions = _add_credits(
        session,
        wallet,
        granted=data.granted_credits,
        paid=data.paid_credits,
        now=now,
        open_purchase=open_purchase,
        created_by=created_by,
    )
    return WalletResult(wallet, transactions, purchases_to_void)


def top_up(
    session: Session,
    wallet_id: str,
    *,
    granted: Decimal | None,
    paid: Decimal | None,
    now: datetime,
    created_by: str,
    open_purchase: PurchaseOpener = paid_credits_unavailable,
) -> list[WalletTransaction]:
    """Add granted and/or paid credits to an active, unexpired wallet."""
    wallet = ledger.lock_wallet(session, wallet_id)
    ensure_usable(wallet, now)
    return _add_credits(
        session,
        wallet,
        granted=granted,
        paid=paid,
        now=now,
        open_purchase=open_purchase,
        created_by=created_by,
    )


def void_credits(
    session: Session, wallet_id: str, credits: Decimal, now: datetime, *, created_by: str
) -> WalletTransaction:
    """Void some of an active wallet's credits now (Lago's `voided_credits`): at most
    what it holds, refused with `validation_errors` on `voided_credits` otherwise."""
    wallet = ledger.lock_wallet(session, wallet_id)
    ensure_usable(wallet, now)
    refuse_void_beyond(wallet.credits_balance, credits)
    return ledger.void_credits(session, wallet, credits, now, created_by=created_by)


def refuse_void_beyond(available: Decimal, credits: Decimal) -> None:
    """`voided_credits` can void at most what the wallet holds."""
    if credits > available:
        held = money.format_credits(available)
        raise ValidationFailed(
            f"the wallet holds {held} credits: {money.format_credits(credits)} cannot be voided",
            details={"voided_credits": [f"must be at most the balance, {held}"]},
        )


def update_wallet(
    session: Session,
    wallet_id: str,
    *,
    name: str | object | None = UNSET,
    expiration_at: datetime | object | None = UNSET,
    low_balance_threshold_credits: Decimal | object | None = UNSET,
    recurring_transaction_rules: Sequence[rules.RuleInput] | object = UNSET,
    now: datetime,
    provider: ProviderSource = provider_unavailable,
) -> Wallet:
    """Change the name, expiration, low-balance threshold (null removes them) and the
    automatic top-up rules (the list replaces the wallet's; [] removes them all, and a
    paused rule given again resumes) of an active wallet."""
    wallet = ledger.lock_wallet(session, wallet_id)
    ensure_usable(wallet, now)
    if recurring_transaction_rules is not UNSET:
        assert isinstance(recurring_transaction_rules, Sequence)
        _check_rules(recurring_transaction_rules, wallet.rate_amount, wallet.currency, provider)
        rules.replace_rules(session, wallet, recurring_transaction_rules, now)
    if low_balance_threshold_credits is not UNSET:
        assert low_balance_threshold_credits is None or isinstance(
            low_balance_threshold_credits, Decimal
        )
        wallet.low_balance_threshold_credits = low_balance_threshold_credits
    if expiration_at is not UNSET:
        assert expiration_at is None or isinstance(expiration_at, datetime)
        _check_expiration(expiration_at, now)
        wallet.expiration_at = expiration_at
    if name is not UNSET:
        assert name is None or isinstance(name, str)
        wallet.name = name
    wallet.updated_at = now
    events.emit_one(session, EventType.WALLET_UPDATED, wallet.id, now)
    return wallet


def terminate_wallet(
    session: Session, wallet_id: str, now: datetime, *, created_by: str
) -> TerminatedWallet:
    """Terminate now, voiding what is left. Repeating it changes nothing.

    Its unpaid purchases fail with it: the caller voids their invoices once this has
    committed (`purchases.terminate_wallet` does both)."""
    wallet = ledger.lock_wallet(session, wallet_id)
    if wallet.status == WalletStatus.TERMINATED:
        return TerminatedWallet(wallet, [])
    if wallet.is_expired(now):
        # Expired and not swept yet: it ended at its expiration, by itself.
        assert wallet.expiration_at is not None
        to_void = _end_wallet(
            session, wallet, wallet.expiration_at, TerminationReason.EXPIRED, now,
            created_by=actors.SYSTEM,
        )  # fmt: skip
    else:
        to_void = _end_wallet(
            session, wallet, now, TerminationReason.MANUAL, now, created_by=created_by
        )
    return TerminatedWallet(wallet, to_void)


def _end_wallet(
    session: Session,
    wallet: Wallet,
    at: datetime,
    reason: TerminationReason,
    now: datetime,
    *,
    created_by: str,
) -> list[str]:
    return _end_wallets(session, [(wallet, at)], reason, now, created_by=created_by)


def _end_wallets(
    session: Session,
    ending: Sequence[tuple[Wallet, datetime]],
    reason: TerminationReason,
    now: datetime,
    *,
    created_by: str,
) -> list[str]:
    """End each (locked) wallet at its time: remaining credits voided, terminated, its
    automatic top-up rules paused and its unpaid purchases failed. Returns the ids of
    the purchases whose invoices are to be voided at the provider once the caller has
    committed (they are flagged `provider_void_pending` until then).

    The ledger does it set-based (one INSERT of the voided entries, one UPDATE of the
    rows, whatever their number), and the rules and purchases follow in one statement
    each for all of them: a sweep pays a few statements per batch instead of a few per
    wallet. Last, one `wallet.terminated` event per wallet (`reason` manual or expired),
    written together.
    """
    ledger.terminate_and_void(session, ending, created_by=created_by, now=now)
    ended = [wallet for wallet, _ in ending]
    rules.pause_rules_of_ended_wallets(session, ended)
    to_void = _close_purchases_of_ended_wallets(session, ended)
    events.emit(
        session,
        [
            events.NewEvent(EventType.WALLET_TERMINATED, wallet.id, extra={"reason": reason.value})
            for wallet in ended
        ],
        now,
    )
    return to_void


def _close_purchases_of_ended_wallets(session: Session, wallets: Sequence[Wallet]) -> list[str]:
    """The unpaid purchases of the (locked, just terminated) wallets fail with them.

    Their entries fail in the ending transaction (a terminated wallet keeps no pending
    credits) and each purchase is flagged `provider_void_pending`; their ids are
    returned for the caller to void the invoices once it has committed, best effort. A
    payment that still lands later finds the wallet ended and is marked for refund. A
    purchase paid but waiting for review (`review_required`, its entry still pending)
    can no longer be credited: it becomes `refund_required` and its entry fails.
    """
    ended = {wallet.id: wallet for wallet in wallets}
    if not ended:
        return []
    purchases = (
        session.execute(
            select(Purchase)
            .where(
                Purchase.wallet_id.in_(list(ended)),
                Purchase.status.in_([*transitions.UNPAID_STATUSES, PurchaseStatus.REVIEW_REQUIRED]),
            )
            .order_by(Purchase.id)
            .with_for_update()
            .execution_options(populate_existing=True)
        )
        .scalars()
        .all()
    )
    if not purchases:
        return []
    conn = session.connection()
    to_void = []
    for purchase in purchases:
        at = ended[purchase.wallet_id].terminated_at
        assert at is not None, "the wallet is terminated first"
        if purchase.status == PurchaseStatus.REVIEW_REQUIRED:
            transitions.require_refund(
                conn,
                transitions.ref_of(purchase),
                f"wallet {purchase.wallet_id} ended while the payment waited for review "
                f"({purchase.attention_reason or 'no reason recorded'}): no credits can be "
                "added; refund the payment",
                at,
            )
            session.expire(purchase)
            continue
        to_void.append(purchase.id)
        transitions.fail(
            conn,
            transitions.ref_of(purchase),
            code="wallet_ended",
            message="the wallet ended before the invoice was paid",
            now=at,
            void_pending=True,
        )
        session.expire(purchase)  # written by the statement above: read again on use
    return to_void


def expire_due_wallets(session: Session, now: datetime, batch_size: int) -> ExpiredWallets:
    """Terminate one batch of wallets past their expiration.

    Rows another process is sweeping are skipped (SKIP LOCKED on PostgreSQL), so many
    hosts can run the sweep at once; the caller commits after each batch, then voids
    the invoices of the purchases it failed (`expiry.expire_wallets`).
    """
    wallets = (
        session.execute(
            select(Wallet)
            .where(
                Wallet.status == WalletStatus.ACTIVE,
                Wallet.expiration_at.is_not(None),
                Wallet.expiration_at <= now,
            )
            .order_by(Wallet.expiration_at, Wallet.id)
            .limit(batch_size)
            .with_for_update(skip_locked=True)
            .execution_options(populate_existing=True)  # what the lock protects, not a stale copy
        )
        .scalars()
        .all()
    )
    ending = []
    for wallet in wallets:
        assert wallet.expiration_at is not None
        ending.append((wallet, wallet.expiration_at))
    to_void: list[str] = []
    if ending:
        to_void = _end_wallets(
            session, ending, TerminationReason.EXPIRED, now, created_by=actors.SYSTEM
        )
    return ExpiredWallets([wallet.id for wallet in wallets], to_void)


def list_wallets(
    session: Session,
    *,
    external_customer_id: str | None,
    status: str | None,
    page: int,
    per_page: int,
) -> tuple[list[Wallet], int]:
    query = select(Wallet)
    if external_customer_id is not None:
        query = query.join(Customer, Customer.id == Wallet.customer_id).where(
            Customer.external_id == external_customer_id
        )
    if status is not None:
        query = query.where(Wallet.status == status)
    total = session.execute(select(func.count()).select_from(query.subquery())).scalar_one()
    rows = (
        session.execute(
            query.order_by(Wallet.created_at.desc(), Wallet.id.desc())
            .limit(per_page)
            .offset((page - 1) * per_page)
        )
        .scalars()
        .all()
    )
    return list(rows), int(total)


def _active_wallet_id(session: Session, customer: Customer) -> str | None:
    return session.execute(
        select(Wallet.id).where(
            Wallet.customer_id == customer.id, Wallet.status == WalletStatus.ACTIVE
        )
    ).scalar_one_or_none()


def _already_exists(customer: Customer) -> WalletAlreadyExists:
    return WalletAlreadyExists(
        f"customer {customer.external_id} already has an active wallet",
        details={"external_customer_id": ["already has an active wallet"]},
    )


def get_transaction(session: Session, transaction_id: str) -> WalletTransaction:
    entry = session.get(WalletTransaction, transaction_id)
    if entry is None:
        raise NotFound(
            f"wallet transaction {transaction_id} does not exist",
            details={"wallet_transaction": ["not_found"]},
        )
    return entry


def list_transactions(
    session: Session,
    wallet_id: str,
    *,
    status: str | None,
    transaction_status: str | None,
    page: int,
    per_page: int,
) -> tuple[list[WalletTransaction], int]:
    """A wallet's ledger entries, newest first, filtered by status and kind."""
    get_wallet(session, wallet_id)
    query = select(WalletTransaction).where(WalletTransaction.wallet_id == wallet_id)
    if status is not None:
        query = query.where(WalletTransaction.status == status)
    if transaction_status is not None:
        query = query.where(WalletTransaction.transaction_status == transaction_status)
    total = session.execute(select(func.count()).select_from(query.subquery())).scalar_one()
    rows = (
        session.execute(
            query.order_by(WalletTransaction.created_at.desc(), WalletTransaction.id.desc())
            .limit(per_page)
            .offset((page - 1) * per_page)
        )
        .scalars()
        .all()
    )
    return list(rows), int(total)
