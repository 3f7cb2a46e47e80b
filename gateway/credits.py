"""Applying prepaid credits to an invoice the billing core is about to issue.

The billing core sends the invoice's subtotal; the answer says how much to deduct
before tax, and what the taxes and total become. Each `invoice_external_id` gets one
answer, stored in `credit_applications`: asking again returns the stored answer, so
the same invoice never consumes credits twice.

Rounding (see README, "Money and rounding"): the wallet's spendable value is its
balance x rate floored to the minor unit. An invoice at least that large takes the
whole balance (no dust left behind); a smaller one is covered by the credits its
subtotal is worth, rounded up to 5 places.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass
from datetime import datetime
from decimal import Decimal

from sqlalchemy import select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from gateway import events, ledger, money, topups
from gateway.customers import get_customer
from gateway.errors import CurrencyMismatch, DomainError
from gateway.models import CreditApplication, Customer, Wallet, WalletStatus


class InvoiceType(enum.StrEnum):
    SUBSCRIPTION = "subscription"
    USAGE = "usage"
    ADD_ON = "add_on"
    ONE_OFF = "one_off"
    CREDIT = "credit"


# Add-on (one-off) invoices and credit-purchase invoices never use prepaid credits.
ELIGIBLE_INVOICE_TYPES = frozenset({InvoiceType.SUBSCRIPTION, InvoiceType.USAGE})


class ApplicationStatus(enum.StrEnum):
    APPLIED = "applied"
    NOT_APPLICABLE = "not_applicable"


class NotApplicableReason(enum.StrEnum):
    """Why an invoice got no credits (`reason` of a `not_applicable` answer)."""

    INVOICE_TYPE_NOT_ELIGIBLE = "invoice_type_not_eligible"
    NO_WALLET = "no_wallet"
    WALLET_TERMINATED = "wallet_terminated"
    WALLET_EXPIRED = "wallet_expired"
    ZERO_BALANCE = "zero_balance"
    BALANCE_BELOW_MINOR_UNIT = "balance_below_minor_unit"
    ZERO_SUBTOTAL = "zero_subtotal"


class InvoiceAlreadyApplied(DomainError):
    """The invoice was answered before, for a different request: the first answer stands."""

    code = "invoice_already_applied"


@dataclass(frozen=True)
class CreditApplicationInput:
    invoice_external_id: str
    external_customer_id: str
    invoice_type: str
    currency: str
    subtotal_amount_cents: int
    tax_rate: Decimal | None = None  # a percentage: Decimal("20") is 20 %


@dataclass(frozen=True)
class ApplicationResult:
    application: CreditApplication
    created: bool  # False: the stored answer of an earlier identical request


@dataclass(frozen=True)
class Deduction:
    """How much of a subtotal a balance covers, and the credits that costs."""

    amount_cents: int
    credits: Decimal

    @property
    def consumes(self) -> bool:
        return self.amount_cents > 0


def compute_deduction(
    balance: Decimal, rate: Decimal, currency: str, subtotal_cents: int
) -> Deduction:
    """The deduction a balance of `balance` credits at `rate` makes from a subtotal.

    - value = balance x rate in minor units, rounded down (never more than is held);
    - subtotal >= value: deduct the whole value and consume the whole balance, so a
      wallet that is used up is left at exactly zero (no dust);
    - otherwise deduct the whole subtotal and consume the credits it is worth,
      rounded up to 5 places (the wallet never gives value it did not pay for),
      never more than the balance.

    Always 0 <= amount_cents <= min(subtotal, value) and 0 <= credits <= balance.
    """
    if subtotal_cents < 0:
        raise ValueError("a subtotal is never negative")
    value_cents = money.balance_minor(balance, rate, currency)
    if value_cents <= 0 or subtotal_cents == 0:
        return Deduction(amount_cents=0, credits=Decimal("0"))
    if subtotal_cents >= value_cents:
        return Deduction(amount_cents=value_cents, credits=balance)
    credits = min(balance, money.credits_for_minor(subtotal_cents, rate, currency))
    return Deduction(amount_cents=subtotal_cents, credits=credits)


def taxes_and_total(taxable_cents: int, tax_rate: Decimal | None) -> tuple[int, int]:
    """(taxes, total) on what remains of the subtotal; no rate means no tax."""
    taxes = money.tax_minor(taxable_cents, tax_rate) if tax_rate is not None else 0
    return taxes, taxable_cents + taxes


def apply_credits(
    session: Session, request: CreditApplicationInput, now: datetime, *, created_by: str
) -> ApplicationResult:
    """Answer an invoice: deduct from its subtotal what the customer's wallet covers.

    Unknown customer: `not_found`. Invoice currency other than the customer's (and so
    the wallet's): `currency_mismatch`, nothing stored. Otherwise an answer is stored:
    `applied` with a settled outbound `invoiced` ledger entry, or `not_applicable`
    with a reason (ineligible invoice type, no usable wallet, nothing to deduct).

    The invoice id is the idempotency key of this use case. The wallet row is locked
    before its balance is read, and the unique invoice id settles any race, so one
    invoice consumes credits at most once and concurrent invoices never overdraw.
    A repeat of an identical request returns the stored answer (`created=False`); a
    repeat with other values is refused with `invoice_already_applied`.
    """
    # The customer with its latest wallet, that wallet locked, and whether the invoice
    # is answered, in one statement: the balance is read under the lock. A request
    # for the same invoice that held the lock meanwhile may have answered it without
    # this statement seeing it: its answer's unique invoice id stops this one's write
    # (`_answer`), which then returns the stored answer.
    customer, wallet, answered = _customer_and_locked_wallet(session, request)
    if answered is not False:
        stored = _find(session, request.invoice_external_id)
        if stored is not None:
            return _repeat(stored, request)
    if request.currency != customer.currency:
        raise CurrencyMismatch(
            f"the invoice is in {request.currency}; customer "
            f"{customer.external_id}'s credits are valued in {customer.currency}",
            details={"currency": [f"must be {customer.currency}"]},
        )

    if request.invoice_type not in ELIGIBLE_INVOICE_TYPES:
        return _answer(
            session,
            request,
            now,
            wallet=wallet,
            reason=NotApplicableReason.INVOICE_TYPE_NOT_ELIGIBLE,
        )
    if wallet is None:
        return _answer(session, request, now, wallet=None, reason=NotApplicableReason.NO_WALLET)

    reason = _unusable_reason(wallet, now)
    if reason is None and request.subtotal_amount_cents == 0:
        reason = NotApplicableReason.ZERO_SUBTOTAL
    if reason is not None:
        return _answer(session, request, now, wallet=wallet, reason=reason)

    deduction = compute_deduction(
        wallet.credits_balance, wallet.rate_amount, wallet.currency, request.subtotal_amount_cents
    )
    if not deduction.consumes:
        return _answer(
            session,
            request,
            now,
            wallet=wallet,
            reason=NotApplicableReason.BALANCE_BELOW_MINOR_UNIT,
        )
    return _answer(session, request, now, wallet=wallet, deduction=deduction, created_by=created_by)


def _find(session: Session, invoice_external_id: str) -> CreditApplication | None:
    return session.execute(
        select(CreditApplication)
        .where(CreditApplication.invoice_external_id == invoice_external_id)
        .execution_options(populate_existing=True)
    ).scalar_one_or_none()


def _customer_and_locked_wallet(
    session: Session, request: CreditApplicationInput
) -> tuple[Customer, Wallet | None, bool | None]:
    """The customer and its active wallet, else its most recently created ended one,
    the wallet locked (FOR UPDATE; SQLite serialises writers) and read under the lock,
    and whether the invoice has an answer already (None: not read, the customer having
    no wallet). Unknown customer: `not_found`."""
    answered = (
        select(CreditApplication.id)
        .where(CreditApplication.invoice_external_id == request.invoice_external_id)
        .exists()
    )
    row = session.execute(
        select(Customer, Wallet, answered)
        .join(Wallet, Wallet.customer_id == Customer.id)
        .where(Customer.external_id == request.external_customer_id)
        .order_by((Wallet.status == WalletStatus.ACTIVE).desc(), Wallet.created_at.desc())
        .limit(1)
        .with_for_update(of=Wallet)
        .execution_options(populate_existing=True)
    ).first()
    if row is None:  # no such customer, or one without a wallet
        return get_customer(session, request.external_customer_id), None, None
    return row[0], row[1], bool(row[2])


def _unusable_reason(wallet: Wallet, now: datetime) -> NotApplicableReason | None:
    if wallet.status == WalletStatus.TERMINATED:
        ended_by_expiry = (
            wallet.expiration_at is not None
            and wallet.terminated_at is not None
            and wallet.terminated_at >= wallet.expiration_at
        )
        if ended_by_expiry:
            return NotApplicableReason.WALLET_EXPIRED
        return NotApplicableReason.WALLET_TERMINATED
    if wallet.is_expired(now):
        # Past its expiration, whether or not the sweep has recorded it yet.
        return NotApplicableReason.WALLET_EXPIRED
    if wallet.credits_balance <= 0:
        return NotApplicableReason.ZERO_BALANCE
    return None


def _answer(
    session: Session,
    request: CreditApplicationInput,
    now: datetime,
    *,
    wallet: Wallet | None,
    reason: NotApplicableReason | None = None,
    deduction: Deduction | None = None,
    created_by: str | None = None,
) -> ApplicationResult:
    """Store the answer (and, when credits apply, the ledger entry) for this invoice."""
    amount_cents = deduction.amount_cents if deduction is not None else 0
    after_cents = request.subtotal_amount_cents - amount_cents
    taxes, total = taxes_and_total(after_cents, request.tax_rate)
    application = CreditApplication(
        invoice_external_id=request.invoice_external_id,
        external_customer_id=request.external_customer_id,
        wallet_id=wallet.id if wallet is not None else None,
        invoice_type=request.invoice_type,
        currency=request.currency,
        status=ApplicationStatus.APPLIED
        if deduction is not None
        else ApplicationStatus.NOT_APPLICABLE,
        reason=reason.value if reason is not None else None,
        credit_amount=deduction.credits if deduction is not None else Decimal("0"),
        amount_cents=amount_cents,
        subtotal_amount_cents=request.subtotal_amount_cents,
        subtotal_after_credits_amount_cents=after_cents,
        tax_rate=request.tax_rate,
        taxes_amount_cents=taxes,
        total_amount_cents=total,
        created_at=now,
    )
    entry = None
    try:
        # The unique invoice id decides between racing requests for one invoice
        # (on PostgreSQL the loser's insert waits for the winner, then fails here;
        # the entry and the balance written with it go back with the savepoint).
        with session.begin_nested():
            if deduction is not None:
                assert wallet is not None and created_by is not None
                entry = ledger.consume_credits(
                    session,
                    wallet,
                    deduction.credits,
                    deduction.amount_cents,
                    now,
                    created_by=created_by,
                    announce=False,
                )
                application.transaction_id = entry.id
            session.add(application)
    except IntegrityError:
        stored = _find(session, request.invoice_external_id)
        if stored is None:
            raise
        return _repeat(stored, request)
    if entry is not None:
        assert wallet is not None
        # The entry's events and the answer's, in one write (gateway.events); the
        # answer as just written, the entry and wallet read back with what they carry.
        loaded = events.Loaded(applications={application.id: application})
        events.emit_on_connection(
            session.connection(),
            [
                *ledger.entry_events(wallet, entry),
                events.NewEvent(
                    events.EventType.CREDIT_APPLICATION_APPLIED,
                    wallet.id,
                    entry.id,
                    application.id,
                ),
            ],
            now,
            loaded,
        )
        # Still under the wallet's lock: a threshold reached starts its top-up here,
        # committed with this answer (the provider is called later, by the worker).
        topups.after_balance_lowered(
            session, wallet, now, rules=loaded.wallets[wallet.id].recurring_transaction_rules
        )
    return ApplicationResult(application, created=True)


def _repeat(stored: CreditApplication, request: CreditApplicationInput) -> ApplicationResult:
    """The stored answer, if `request` asks the same question as the first time."""
    # Only which fields differ: the first request's values (its customer above all)
    # are not this caller's to learn.
    differences = {
        name: ["differs from the first request for this invoice"]
        for name, first, now_sent in (
            ("external_customer_id", stored.external_customer_id, request.external_customer_id),
            ("invoice_type", stored.invoice_type, request.invoice_type),
            ("currency", stored.currency, request.currency),
            (
                "subtotal_amount_cents",
                stored.subtotal_amount_cents,
                request.subtotal_amount_cents,
            ),
            ("tax_rate", _rate_text(stored.tax_rate), _rate_text(request.tax_rate)),
        )
        if first != now_sent
    }
    if differences:
        raise InvoiceAlreadyApplied(
            f"invoice {stored.invoice_external_id} was already answered with other values; "
            "an invoice is answered once and its first answer stands",
            details=differences,
        )
    return ApplicationResult(stored, created=False)


def _rate_text(rate: Decimal | None) -> str | None:
    return None if rate is None else f"{rate.normalize():f}"
