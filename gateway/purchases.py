"""Paid credits: the purchase row first, then the payment provider, then the result.

A purchase runs in three phases, so that nothing is lost if the process dies between
two of them and no database lock is held while the provider is waited on:

1. In the request's transaction (`PurchaseBatch.open`, the wallets module's
   `PurchaseOpener`): the amount is checked against the provider's limits, then the
   pending `purchased` ledger entry and the `purchases` row are written and committed
   together with everything else the request did (a new wallet, granted credits).
2. With no transaction open: the provider's customer (on a customer's first
   purchase; its id stored at once in a short transaction), the draft invoice, its
   one line, finalization; each write carries an idempotency key derived from our ids.
3. A short transaction (wallet, then purchase locked) stores the finalized invoice.
   Until then the webhook finds the purchase by the ids in the invoice's metadata.

If the provider cannot be reached in phase 2 the purchase stays `creating` and the
caller gets `payment_provider_unavailable`; only the same request repeated with the
same Idempotency-Key (before the key expires: `claimable_until`) takes it up where it
stopped, and the provider's idempotency keys make sure it still ends up with exactly
one invoice. A caller told the purchase failed who cannot claim it that way (no key,
a new key, an expired key, another API key) has no purchase left to be billed for:
reconciliation never resumes a purchase, it fails (and voids the invoice of) one no
caller can claim. If the provider refuses, the purchase and its ledger entry fail.
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from decimal import Decimal
from typing import Any, cast

from sqlalchemy import Table, bindparam, insert, or_, select, update
from sqlalchemy.dialects.postgresql import insert as postgresql_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.engine import Connection, Row
from sqlalchemy.orm import Session, make_transient_to_detached
from sqlalchemy.orm.attributes import set_committed_value

from gateway import ledger, money, settlement, transitions, wallets
from gateway.db import new_id, utcnow
from gateway.errors import (
    AmountTooLarge,
    AmountTooSmall,
    IdempotencyKeyInProgress,
    IdempotencyKeyReused,
    NotFound,
    PaymentProviderRejected,
    PaymentProviderUnavailable,
    ValidationFailed,
)
from gateway.models import (
    Customer,
    EntrySource,
    Purchase,
    PurchaseStatus,
    TransactionStatus,
    Wallet,
    WalletTransaction,
)
from gateway.providers import get_provider, provider_if_configured
from gateway.providers.base import (
    CustomerRequest,
    InvoiceSnapshot,
    PaymentProvider,
    ProviderNotConfigured,
    ProviderRejected,
    ProviderUnavailable,
    PurchaseInvoiceRequest,
)

log = logging.getLogger(__name__)

Clock = Callable[[], datetime]

# Stripe remembers idempotency keys for at least 24 hours. A purchase older than this
# whose invoice id was never stored is looked up by its metadata before a new invoice
# is created, since its key may have been forgotten.
PROVIDER_IDEMPOTENCY_WINDOW = timedelta(hours=23)
# One request opens at most this many purchases (today: one, `paid_credits`): a retry
# looks for that many `request_key`s, so `PurchaseBatch.open` refuses one more.
MAX_PURCHASES_PER_REQUEST = 4
# Nobody is there to pay an emailed invoice for a top-up nobody asked for just now:
# automatic top-ups charge the customer's default payment method.
AUTOMATIC_COLLECTION_METHOD = "charge_automatically"


_shown = money.format_minor


def check_purchase_amount(
    provider: PaymentProvider, credits: Decimal, rate: Decimal, currency: str
) -> int:
    """What buying `credits` at `rate` bills (minor units), if the provider can charge it."""
    amount = money.purchase_amount_minor(credits, rate, currency)
    if amount <= 0:
        raise AmountTooSmall(
            f"{money.format_credits(credits)} credits at {rate} {currency} round to "
            f"{_shown(0, currency)}",
            details={"paid_credits": [f"bills {_shown(0, currency)} once rounded"]},
        )
    minimum = provider.minimum_charge_cents(currency)
    if amount < minimum:
        raise AmountTooSmall(
            f"the paid credits bill {_shown(amount, currency)}, below the smallest charge "
            f"{provider.name} accepts in {currency} ({_shown(minimum, currency)})",
            details={"paid_credits": [f"must bill at least {_shown(minimum, currency)}"]},
        )
    maximum = provider.maximum_charge_cents(currency)
    if amount > maximum:
        raise AmountTooLarge(
            f"the paid credits bill {_shown(amount, currency)}, above the largest charge "
            f"{provider.name} accepts in {currency} ({_shown(maximum, currency)})",
            details={"paid_credits": [f"must bill at most {_shown(maximum, currency)}"]},
        )
    step = provider.charge_step_cents(currency)
    if amount % step:
        # Never rounded here: the amount is what the credits are worth.
        shown_step = _shown(step, currency)
        raise ValidationFailed(
            f"the paid credits bill {_shown(amount, currency)}; {provider.name} charges "
            f"{currency} only in steps of {shown_step}: choose credits whose price is a "
            f"multiple of {shown_step}",
            details={"paid_credits": [f"must bill a multiple of {shown_step}"]},
        )
    return amount


def invoice_description(credits: Decimal, rate: Decimal, currency: str) -> str:
    """The invoice line's text: fixed by the purchase, so a retry sends the same one."""
    return (
        f"{money.format_credits(credits).rstrip('0').rstrip('.')} prepaid credits "
        f"at {money.format_amount(rate, currency)} {currency} each"
    )


@dataclass(frozen=True)
class _PurchaseWork:
    """What phases 2 and 3 need, read while the row was at hand (no lazy loads later)."""

    purchase_id: str
    wallet_id: str
    transaction_id: str
    created_at: datetime
    currency: str
    amount_cents: int
    credits: Decimal
    rate_amount: Decimal
    # The provider's customer if it exists; else ours, to create it from in phase 2.
    provider_customer_id: str | None
    customer: CustomerRequest | None
    invoice_id: str | None
    collection_method: str | None = None  # None: the configured one
    resumed: bool = False  # an earlier attempt may have called the provider already

    @classmethod
    def of(
        cls,
        purchase: Purchase,
        wallet: Wallet,
        provider_customer_id: str | None,
        customer: Customer | None,
    ) -> _PurchaseWork:
        return cls(
            purchase_id=purchase.id,
            wallet_id=wallet.id,
            transaction_id=purchase.transaction_id,
            created_at=purchase.created_at,
            currency=purchase.currency,
            amount_cents=purchase.amount_cents,
            credits=purchase.credit_amount,
            rate_amount=wallet.rate_amount,
            provider_customer_id=provider_customer_id,
            customer=(
                None
                if customer is None
                else CustomerRequest(
                    customer_id=customer.id,
                    external_id=customer.external_id,
                    name=customer.name,
                    email=customer.email,
                )
            ),
            invoice_id=purchase.provider_invoice_id,
            collection_method=purchase.collection_method,
        )

    def invoice_request(self, provider_customer_id: str) -> PurchaseInvoiceRequest:
        return PurchaseInvoiceRequest(
            purchase_id=self.purchase_id,
            wallet_id=self.wallet_id,
            transaction_id=self.transaction_id,
            provider_customer_id=provider_customer_id,
            currency=self.currency,
            amount_cents=self.amount_cents,
            credits=self.credits,
            rate_amount=self.rate_amount,
            description=invoice_description(self.credits, self.rate_amount, self.currency),
            collection_method=self.collection_method,
        )

    def error_details(self) -> dict[str, Any]:
        return {
            "purchase_id": self.purchase_id,
            "wallet_id": self.wallet_id,
            "wallet_transaction_id": self.transaction_id,
        }


def configured_provider() -> PaymentProvider:
    """The app's provider; `payment_provider_unavailable` naming the setting if none."""
    try:
        return get_provider()
    except ProviderNotConfigured as exc:
        raise PaymentProviderUnavailable(
            f"paid credits need a payment provider: set {exc.setting}",
            details={"setting": exc.setting},
        ) from exc


@dataclass(frozen=True)
class RequestScope:
    """The Idempotency-Key a request runs under, as the purchases it opens remember it.

    `name` ("<principal>:<key>") is stable across retries of one request by one API key;
    `expires_at` is when this use of the key stops binding (it counts as unused after),
    and so the end of the caller's claim on the purchases it opened: a purchase whose
    `claimable_until` has passed is not taken up by a later use of the same key.
    """

    name: str
    expires_at: datetime


class PurchaseBatch:
    """The purchases of one request: opened in its transaction, completed after it.

    `request_scope` identifies the request across retries (None without an
    Idempotency-Key); each purchase stores its name, with its position, as
    `request_key`, which is how a retry finds the purchases to resume, and its expiry
    as `claimable_until`.
    """

    def __init__(
        self,
        request_scope: RequestScope | None = None,
        *,
        provider: PaymentProvider | None = None,
        clock: Clock = utcnow,
    ) -> None:
        self.request_scope = request_scope
        self._provider = provider
        self._clock = clock
        self._work: list[_PurchaseWork] = []

    @property
    def provider(self) -> PaymentProvider:
        """The configured provider; `payment_provider_unavailable` naming the setting if none."""
        if self._provider is None:
            self._provider = configured_provider()
        return self._provider

    def request_key(self, position: int) -> str | None:
        if self.request_scope is None:
            return None
        return f"{self.request_scope.name}:purchase:{position}"

    def open(
        self,
        session: Session,
        wallet: Wallet,
        credits: Decimal,
        now: datetime,
        *,
        created_by: str,
        origin: ledger.Origin = ledger.MANUAL,
    ) -> WalletTransaction:
        """Phase 1 for `credits` bought into `wallet` (locked or new): entry and row, written.

        The purchase row is one INSERT that also answers the customer's provider id; the
        customer itself is read only when it has none yet (its first purchase). A
        purchase an automatic rule makes (`origin`) is always charged automatically.
        """
        if len(self._work) >= MAX_PURCHASES_PER_REQUEST:
            raise RuntimeError(
                f"one request opens at most {MAX_PURCHASES_PER_REQUEST} purchases "
                "(a retry would not find the others)"
            )
        amount = check_purchase_amount(self.provider, credits, wallet.rate_amount, wallet.currency)
        entry = ledger.open_purchase_entry(
            session, wallet, credits, now, created_by=created_by, origin=origin
        )
        request_key = self.request_key(len(self._work))
        purchase = Purchase(
            id=new_id("pur"),
            wallet_id=wallet.id,
            customer_id=wallet.customer_id,
            transaction_id=entry.id,
            status=PurchaseStatus.CREATING,
            currency=wallet.currency,
            credit_amount=entry.credit_amount,
            amount_cents=amount,
            provider=self.provider.name,
            **dict.fromkeys(_NOT_YET_KNOWN),
            provider_void_pending=False,
            collection_method=(
                None if origin.source == EntrySource.MANUAL else AUTOMATIC_COLLECTION_METHOD
            ),
            returned_cents=0,
            reclaimed_credits=Decimal(0),
            shortfall_credits=Decimal(0),
            request_key=request_key,
            claimable_until=None if self.request_scope is None else self.request_scope.expires_at,
            created_at=now,
            updated_at=now,
        )
        inserted = _insert_purchase(session, purchase)
        if inserted is None and self._release_expired_use(session, request_key, now):
            inserted = _insert_purchase(session, purchase)
        if inserted is None:
            # Only a concurrent attempt of the same request can hold this key.
            raise IdempotencyKeyInProgress(
                "another request with this Idempotency-Key is making this purchase",
                details={"idempotency_key": ["in progress"]},
            )
        provider_customer_id = inserted.provider_customer_id
        ledger.announce_purchase_entry(session, entry, now)
        # The answer reads both; set here, they need no lazy load once phase 1 committed.
        set_committed_value(entry, "wallet", wallet)
        set_committed_value(entry, "purchase", purchase)
        customer = None
        if provider_customer_id is None:
            customer = session.get(Customer, wallet.customer_id)
            assert customer is not None
        self._work.append(_PurchaseWork.of(purchase, wallet, provider_customer_id, customer))
        return entry

    @staticmethod
    def _release_expired_use(session: Session, request_key: str | None, now: datetime) -> bool:
        """Free `request_key` from a purchase of an earlier use of the same
        Idempotency-Key that has expired; whether one was freed."""
        if request_key is None:
            return False
        freed = session.execute(
            update(Purchase)
            .where(
                Purchase.request_key == request_key,
                or_(Purchase.claimable_until.is_(None), Purchase.claimable_until <= now),
            )
            .values(request_key=None)
            .execution_options(synchronize_session=False)
        )
        return bool(freed.rowcount)  # type: ignore[attr-defined]

    def earlier_purchases(self, session: Session, now: datetime) -> list[Purchase]:
        """Purchases an earlier attempt of this request committed under the same use of
        its Idempotency-Key (one whose key use expired is not this request's). Their
        claim is extended to this use's expiry: the caller may retry until then."""
        if self.request_scope is None:
            return []
        keys = [self.request_key(position) for position in range(MAX_PURCHASES_PER_REQUEST)]
        found = list(
            session.execute(
                select(Purchase)
                .where(Purchase.request_key.in_(keys), Purchase.claimable_until > now)
                .order_by(Purchase.request_key)
            )
            .scalars()
            .all()
        )
        for purchase in found:
            if purchase.claimable_until is not None:
                purchase.claimable_until = max(
                    purchase.claimable_until, self.request_scope.expires_at
                )
        return found

    def resume(self, session: Session, purchases: Sequence[Purchase]) -> None:
        """Take over `purchases` of an earlier attempt; those still `creating` are completed."""
        for purchase in purchases:
            if purchase.status == PurchaseStatus.CREATING:
                customer = session.get(Customer, purchase.customer_id)
                assert customer is not None
                work = _PurchaseWork.of(
                    purchase, purchase.wallet, customer.provider_customer_id, customer
                )
                self._work.append(dataclasses.replace(work, resumed=True))

    def complete(self, session: Session) -> None:
        """Commit phase 1, then run phases 2 and 3 for each purchase, in order.

        Raises `PaymentProviderUnavailable` (the purchase stays resumable) or
        `PaymentProviderRejected` (the purchase has failed) for the first that fails.
        """
        if not self._work:
            return
        session.commit()
        for work in self._work:
            _complete(session, self.provider, work, self._clock)


def complete_purchase(
    session: Session,
    purchase_id: str,
    *,
    provider: PaymentProvider | None = None,
    clock: Clock = utcnow,
) -> Purchase:
    """Take a purchase still `creating` to a finalized invoice (phases 2 and 3).

    For the retry of the request that opened it and for operators: reconciliation does
    not call it (a purchase is resumed only by a caller who can claim it). Commits the
    caller's transaction first, holds no lock while the provider is called, and does
    nothing to a purchase past `creating`.
    """
    purchase = session.get(Purchase, purchase_id, populate_existing=True)
    if purchase is None:
        raise NotFound(
            f"purchase {purchase_id} does not exist", details={"purchase": ["not_found"]}
        )
    batch = PurchaseBatch(provider=provider, clock=clock)
    batch.resume(session, [purchase])
    batch.complete(session)
    return purchase


_purchases = cast(Table, Purchase.__table__)
_customers = cast(Table, Customer.__table__)
# Columns a new purchase leaves empty until its invoice exists (or it fails).
_NOT_YET_KNOWN = (
    "provider_invoice_id",
    "invoice_status",
    "subtotal_cents",
    "tax_cents",
    "total_cents",
    "amount_paid_cents",
    "hosted_invoice_url",
    "attention_reason",
    "failure_code",
    "failure_message",
    "last_payment_error",
    "payment_id",
    "dispute_status",
)
# Built once per dialect. A request key already taken makes no row and no error (no
# savepoint needed). The customer's provider id comes back with the row (a scalar
# subquery in RETURNING), which spares phase 1 a round trip for the customer.
_INSERT_PURCHASE = {
    name: dialect_insert(_purchases)
    .on_conflict_do_nothing(index_elements=[_purchases.c.request_key])
    .returning(
        select(_customers.c.provider_customer_id)
        .where(_customers.c.id == bindparam("b_customer_id"))
        .scalar_subquery()
        .label("provider_customer_id")
    )
    for name, dialect_insert in (("sqlite", sqlite_insert), ("postgresql", postgresql_insert))
}


@dataclass(frozen=True)
class AutomaticPurchase:
    """A purchase an automatic top-up rule makes (its pending entry already written)."""

    wallet_id: str
    customer_id: str
    currency: str
    transaction_id: str
    credits: Decimal
    amount_cents: int  # checked against the provider's limits by the caller


def open_automatic_purchases(
    conn: Connection, provider_name: str, opened: Sequence[AutomaticPurchase], now: datetime
) -> None:
    """Phase 1 for many automatic top-ups at once (the interval duty's batch): their
    purchase rows, `creating`, charged automatically; the worker makes the invoices."""
    if not opened:
        return
    conn.execute(
        insert(_purchases),
        [
            {
                "id": new_id("pur"),
                "wallet_id": purchase.wallet_id,
                "customer_id": purchase.customer_id,
                "transaction_id": purchase.transaction_id,
                "status": PurchaseStatus.CREATING,
                "currency": purchase.currency,
                "credit_amount": purchase.credits,
                "amount_cents": purchase.amount_cents,
                "provider": provider_name,
                "provider_void_pending": False,
                "collection_method": AUTOMATIC_COLLECTION_METHOD,
                "created_at": now,
                "updated_at": now,
            }
            for purchase in opened
        ],
    )


def _insert_purchase(session: Session, purchase: Purchase) -> Row[Any] | None:
    """INSERT the new `purchase` (a Core statement, not an ORM flush) and add it to the
    session as the persistent object that row is, every column known (no SELECT).

    Returns the row (`provider_customer_id`: its customer's, if any), or None, adding
    nothing, if another purchase holds its `request_key`.
    """
    # The attributes set on it; a column left out takes its default in the INSERT and
    # is loaded on first use.
    values = {key: value for key, value in vars(purchase).items() if key in _purchases.c}
    statement = _INSERT_PURCHASE[session.get_bind().dialect.name]
    inserted = session.execute(statement, {**values, "b_customer_id": purchase.customer_id}).first()
    if inserted is not None:
        make_transient_to_detached(purchase)
        session.add(purchase)
    return inserted


# --- the use cases the API calls -------------------------------------------------------


def create_wallet(
    session: Session,
    data: wallets.WalletInput,
    now: datetime,
    *,
    created_by: str,
    request_scope: RequestScope | None = None,
    clock: Clock = utcnow,
) -> wallets.WalletResult:
    """A new wallet with its credits, paid ones invoiced at the provider.

    A retry of a request whose purchase was committed (same Idempotency-Key) answers
    with that wallet and completes its purchase, instead of `wallet_already_exists`.
    """
    batch = PurchaseBatch(request_scope, clock=clock)
    earlier = batch.earlier_purchases(session, now)
    if earlier:
        result = _replayed_wallet_creation(session, data, earlier)
        batch.resume(session, earlier)
    else:
        result = wallets.create_wallet(
            session,
            data,
            now,
            created_by=created_by,
            open_purchase=batch.open,
            provider=configured_provider,
        )
    # An expired wallet ended to make room: its invoices go first, then the new ones.
    void_after_commit(session, result.purchases_to_void)
    batch.complete(session)
    return result


def terminate_wallet(
    session: Session,
    wallet_id: str,
    now: datetime,
    *,
    created_by: str,
) -> Wallet:
    """Terminate a wallet (`wallets.terminate_wallet`); once that has committed, the
    invoices of the unpaid purchases it failed are voided at the provider."""
    terminated = wallets.terminate_wallet(session, wallet_id, now, created_by=created_by)
    void_after_commit(session, terminated.purchases_to_void)
    return terminated.wallet


def void_after_commit(session: Session, purchase_ids: Sequence[str]) -> None:
    """Commit the caller's transaction (the wallets' ending), then void the invoices of
    `purchase_ids` at the app's provider (if one is configured), best effort: what
    cannot be voided now stays flagged for reconciliation. Nothing to void: nothing is
    committed, the caller's unit of work does it."""
    if not purchase_ids:
        return
    session.commit()  # no transaction stays open across the provider's calls
    settlement.void_invoices_of_ended_wallets(
        settlement.sessions_like(session), provider_if_configured(), purchase_ids
    )


def top_up(
    session: Session,
    wallet_id: str,
    *,
    granted: Decimal | None,
    paid: Decimal | None,
    now: datetime,
    created_by: str,
    request_scope: RequestScope | None = None,
    clock: Clock = utcnow,
) -> list[WalletTransaction]:
    """Granted and/or paid credits for a wallet; paid ones invoiced at the provider."""
    batch = PurchaseBatch(request_scope, clock=clock)
    earlier = batch.earlier_purchases(session, now)
    if earlier:
        transactions = _replayed_top_up(session, wallet_id, granted, paid, earlier)
        batch.resume(session, earlier)
    else:
        transactions = wallets.top_up(
            session,
            wallet_id,
            granted=granted,
            paid=paid,
            now=now,
            created_by=created_by,
            open_purchase=batch.open,
        )
    batch.complete(session)
    return transactions


def _granted_with(session: Session, purchase: Purchase) -> list[WalletTransaction]:
    """The granted entries written by the same request as `purchase` (same instant)."""
    return list(
        session.execute(
            select(WalletTransaction)
            .where(
                WalletTransaction.wallet_id == purchase.wallet_id,
                WalletTransaction.transaction_status == TransactionStatus.GRANTED,
                WalletTransaction.created_at == purchase.created_at,
            )
            .order_by(WalletTransaction.id)
        )
        .scalars()
        .all()
    )


def _same_credits(stored: Sequence[WalletTransaction], asked: Decimal | None) -> bool:
    return sum((entry.credit_amount for entry in stored), Decimal(0)) == (asked or Decimal(0))


def _key_reused() -> IdempotencyKeyReused:
    return IdempotencyKeyReused(
        "this Idempotency-Key was used for a different request",
        details={"idempotency_key": ["already used with another body"]},
    )


def _replayed_wallet_creation(
    session: Session, data: wallets.WalletInput, earlier: Sequence[Purchase]
) -> wallets.WalletResult:
    purchase = earlier[0]
    wallet = purchase.wallet
    granted = _granted_with(session, purchase)
    if (
        wallet.created_at != purchase.created_at
        or wallet.customer.external_id != data.external_customer_id
        or wallet.rate_amount != data.rate_amount
        or sum((p.credit_amount for p in earlier), Decimal(0)) != (data.paid_credits or 0)
        or not _same_credits(granted, data.granted_credits)
    ):
        raise _key_reused()
    return wallets.WalletResult(wallet, [*(p.transaction for p in earlier), *granted])


def _replayed_top_up(
    session: Session,
    wallet_id: str,
    granted: Decimal | None,
    paid: Decimal | None,
    earlier: Sequence[Purchase],
) -> list[WalletTransaction]:
    purchase = earlier[0]
    granted_entries = _granted_with(session, purchase)
    if (
        purchase.wallet_id != wallet_id
        or purchase.wallet.created_at == purchase.created_at
        or sum((p.credit_amount for p in earlier), Decimal(0)) != (paid or 0)
        or not _same_credits(granted_entries, granted)
    ):
        raise _key_reused()
    return [*(p.transaction for p in earlier), *granted_entries]


# --- phases 2 and 3 --------------------------------------------------------------------


def _complete(
    session: Session, provider: PaymentProvider, work: _PurchaseWork, clock: Clock
) -> None:
    try:
        provider_customer_id = work.provider_customer_id or _ensure_provider_customer(
            session, provider, work
        )
        request = work.invoice_request(provider_customer_id)
        invoice = _finished_invoice(provider, work, request, clock)
    except ProviderUnavailable as exc:
        log.warning("purchase %s left resumable: %s", work.purchase_id, exc)
        raise PaymentProviderUnavailable(
            f"{exc}. The purchase is kept: repeat the request with the same "
            "Idempotency-Key to complete it",
            details=work.error_details(),
        ) from exc
    except ProviderRejected as exc:
        log.warning("purchase %s rejected by %s: %s", work.purchase_id, provider.name, exc)
        _fail_purchase(session, work, exc, clock())
        raise PaymentProviderRejected(
            str(exc),
            details={**work.error_details(), "provider_code": exc.code},
        ) from exc
    if _store_invoice(session, work, invoice, clock()):
        # The wallet ended while the invoice was being made: void it now.
        settlement.void_if_flagged(session, provider, work.purchase_id)


def _finished_invoice(
    provider: PaymentProvider,
    work: _PurchaseWork,
    request: PurchaseInvoiceRequest,
    clock: Clock,
) -> InvoiceSnapshot:
    """The purchase's invoice, finalized: made now, or taken up where it stopped.

    The invoice id is not stored until phase 3 (one commit fewer per purchase): a retry
    repeats the calls with the same idempotency keys and Stripe answers them as it did
    the first time; past Stripe's memory of the keys the invoice is found by metadata.
    """
    if work.invoice_id is not None:  # stored by the webhook or reconciliation
        return provider.finish_purchase_invoice(request, provider.retrieve_invoice(work.invoice_id))
    found = None
    if clock() - work.created_at > PROVIDER_IDEMPOTENCY_WINDOW:
        found = provider.find_purchase_invoice(work.purchase_id)
    invoice = provider.finish_purchase_invoice(
        request, found or provider.create_purchase_draft(request)
    )
    if work.resumed and found is None:
        # Replayed answers show the invoice as it was then: read it as it is now.
        invoice = provider.retrieve_invoice(invoice.id)
    return invoice


def _ensure_provider_customer(
    session: Session, provider: PaymentProvider, work: _PurchaseWork
) -> str:
    """The provider's customer for ours, created on the first purchase and stored at once."""
    assert work.customer is not None, "read in phase 1 when it had no provider id"
    created = provider.ensure_customer(work.customer)
    stored = session.execute(
        update(Customer)
        .where(Customer.id == work.customer.customer_id, Customer.provider_customer_id.is_(None))
        .values(provider_customer_id=created)
    )
    if stored.rowcount == 0:  # type: ignore[attr-defined]
        # Another purchase stored one first: the same customer, thanks to the idempotency
        # key, unless that key had expired; keep the first either way.
        created = (
            session.execute(
                select(Customer.provider_customer_id).where(
                    Customer.id == work.customer.customer_id
                )
            ).scalar_one_or_none()
            or created
        )
    session.commit()
    customer = session.identity_map.get(session.identity_key(Customer, work.customer.customer_id))
    if customer is not None:
        set_committed_value(customer, "provider_customer_id", created)
    return created


def _copy_invoice(purchase: Purchase, invoice: InvoiceSnapshot) -> None:
    for column, value in settlement.invoice_columns(invoice).items():
        setattr(purchase, column, value)


_wallets = cast(Table, Wallet.__table__)
# Phase 3, built once: the wallet's lock (its row read with it), then the purchase
# taken from `creating` to `open` with its invoice (`bench/PROFILES.md`, purchases).
_LOCK_WALLET = select(_wallets).where(_wallets.c.id == bindparam("wallet_id")).with_for_update()
# SET columns come from each execution's parameters.
_OPEN_PURCHASE = (
    update(_purchases)
    .where(
        _purchases.c.id == bindparam("b_purchase_id"),
        _purchases.c.status == PurchaseStatus.CREATING,
        or_(
            _purchases.c.provider_invoice_id.is_(None),
            _purchases.c.provider_invoice_id == bindparam("b_invoice_id"),
        ),
    )
    .returning(_purchases.c.provider_void_pending)
)


def _store_invoice(
    session: Session, work: _PurchaseWork, invoice: InvoiceSnapshot, now: datetime
) -> bool:
    """Phase 3: the finalized invoice onto the purchase (wallet, then purchase locked).

    Only a purchase still `creating` takes the invoice's state: if a webhook already
    moved it on (paid before we got here), its newer state is kept. Returns whether the
    purchase is flagged for voiding (its wallet ended meanwhile), read under the locks:
    a wallet ending after this commit flags and voids the invoice itself.

    The usual case (a purchase still `creating`, an invoice neither void nor
    uncollectible) is an UPDATE that holds only while the purchase is `creating` and has
    no other invoice. A purchase and its ledger entry leave `creating` in one
    transaction (`gateway.transitions`), so a purchase the UPDATE finds `creating` still
    has the pending entry phase 1 wrote, which the answer shows as it is. Anything else
    takes `_store_invoice_locked`.
    """
    locked = session.execute(_LOCK_WALLET, {"wallet_id": work.wallet_id}).one()
    _refresh(session, Wallet, work.wallet_id, locked._asdict())
    if invoice.status not in transitions.FAILED_INVOICE_STATUSES:
        changes: dict[str, Any] = {
            "provider_invoice_id": invoice.id,
            "status": PurchaseStatus.OPEN,
            **settlement.invoice_columns(invoice),
            "updated_at": now,
        }
        opened = session.execute(
            _OPEN_PURCHASE,
            {"b_purchase_id": work.purchase_id, "b_invoice_id": invoice.id, **changes},
        ).first()
        if opened is not None:
            flagged = bool(opened.provider_void_pending)
            changes["provider_void_pending"] = flagged
            _refresh(session, Purchase, work.purchase_id, changes)
            session.commit()
            return flagged
    return _store_invoice_locked(session, work, invoice, now)


def _refresh(session: Session, model: type[Any], key: str, columns: dict[str, Any]) -> None:
    """The session's copy of a row (the answer's, if it has one), as read or written by a
    Core statement; as `populate_existing` would leave it, without an ORM load."""
    found = session.identity_map.get(session.identity_key(model, key))
    if found is not None:
        for column, value in columns.items():
            set_committed_value(found, column, value)


def _store_invoice_locked(
    session: Session, work: _PurchaseWork, invoice: InvoiceSnapshot, now: datetime
) -> bool:
    """`_store_invoice` for every other case, on the rows read under their locks."""
    wallet = ledger.lock_wallet(session, work.wallet_id)
    purchase = transitions.lock_purchase(session, work.purchase_id)
    # A webhook may have settled it meanwhile: the answer shows the entry as it is now,
    # with the wallet and purchase read here (no lazy load once this has committed).
    entry = session.get_one(WalletTransaction, purchase.transaction_id, populate_existing=True)
    set_committed_value(entry, "wallet", wallet)
    set_committed_value(entry, "purchase", purchase)
    if purchase.provider_invoice_id is None:
        purchase.provider_invoice_id = invoice.id
    if purchase.provider_invoice_id != invoice.id:
        log.error(
            "purchase %s has invoice %s, not %s",
            work.purchase_id,
            purchase.provider_invoice_id,
            invoice.id,
        )
    elif purchase.status == PurchaseStatus.CREATING:
        changes = settlement.invoice_columns(invoice)
        session.flush()  # the invoice id linked above, before the statement below
        if invoice.status in transitions.FAILED_INVOICE_STATUSES:
            transitions.fail(
                session.connection(),
                transitions.ref_of(purchase),
                code=f"invoice_{invoice.status}",
                message=f"invoice {invoice.id} is {invoice.status}",
                now=now,
                changes=changes,
            )
        else:
            transitions.open_invoice(
                session.connection(), transitions.ref_of(purchase), now, changes
            )
        transitions.sync_purchase(session, purchase)
    elif purchase.subtotal_cents is None:
        status = purchase.invoice_status
        _copy_invoice(purchase, invoice)
        purchase.invoice_status = status or invoice.status
        purchase.updated_at = now
    flagged = purchase.provider_void_pending
    session.commit()
    return flagged


def _fail_purchase(
    session: Session, work: _PurchaseWork, exc: ProviderRejected, now: datetime
) -> None:
    """A rejected purchase fails, with its ledger entry; the balance never saw it."""
    ledger.lock_wallet(session, work.wallet_id)
    purchase = transitions.lock_purchase(session, work.purchase_id)
    if purchase.status == PurchaseStatus.CREATING:
        transitions.fail(
            session.connection(),
            transitions.ref_of(purchase),
            code=exc.code or "provider_rejected",
            message=str(exc),
            now=now,
        )
        transitions.sync_purchase(session, purchase)
    session.commit()
