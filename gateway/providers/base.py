"""The payment-provider boundary. The domain speaks only these types; the Stripe
implementation (`gateway.providers.stripe`) is the only code that imports `stripe`."""

from __future__ import annotations

import enum
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from datetime import datetime
from decimal import Decimal
from typing import Protocol

# Keys of our ids in a provider invoice's metadata.
META_PURCHASE_ID = "gateway_purchase_id"
META_WALLET_ID = "gateway_wallet_id"
META_TRANSACTION_ID = "gateway_transaction_id"
# Key of our customer id in a provider customer's metadata.
META_CUSTOMER_ID = "gateway_customer_id"


class ProviderError(Exception):
    """Base of every error crossing the boundary."""


class ProviderNotConfigured(ProviderError):
    """No credentials: purchases cannot be made until the named setting is set."""

    def __init__(self, setting: str) -> None:
        super().__init__(f"the payment provider is not configured: set {setting}")
        self.setting = setting


class ProviderUnavailable(ProviderError):
    """Network error, timeout, 5xx or rate limit: retrying later may succeed."""


class ProviderRejected(ProviderError):
    """The provider refused the request (4xx other than 429): retrying will not help."""

    def __init__(self, message: str, *, code: str | None = None, status: int | None = None):
        super().__init__(message)
        self.code = code
        self.status = status


@dataclass(frozen=True)
class InvoiceSnapshot:
    """What we need to know of a provider invoice, in our terms (minor units)."""

    id: str
    status: str  # draft | open | paid | void | uncollectible
    currency: str  # upper-case ISO code
    subtotal_cents: int
    tax_cents: int
    total_cents: int
    amount_paid_cents: int
    has_discount: bool
    hosted_invoice_url: str | None
    livemode: bool
    created_at: datetime | None = None
    metadata: Mapping[str, str] = field(default_factory=dict)
    # Credited back after payment (refund or customer-balance credit notes), minor units.
    # The invoice stays `paid` at the provider; this is how a refund shows on it.
    credited_after_payment_cents: int = 0
    # The payment (payment intent) that paid it, when the provider's object says.
    payment_id: str | None = None

    @property
    def purchase_id(self) -> str | None:
        return self.metadata.get(META_PURCHASE_ID)


@dataclass(frozen=True)
class PaymentRefund:
    """A refund of a payment that paid an invoice, in our terms (minor units).

    Stripe records a refund made on the payment itself (Dashboard "Refund", or the
    refunds API) only on the payment: the invoice stays `paid` with nothing on it.
    A credit note that refunds also makes one of these."""

    refund_id: str
    invoice_id: str  # the invoice the refunded payment paid
    amount_cents: int
    currency: str  # upper-case ISO code
    status: str  # succeeded | pending
    created_at: datetime | None = None
    payment_id: str | None = None  # the payment (payment intent) refunded


@dataclass(frozen=True)
class Refund:
    """A refund of a payment, in our terms (minor units). `payment_id` is the payment
    (Stripe's payment intent) it gives money back from."""

    id: str
    payment_id: str | None
    amount_cents: int
    currency: str  # upper-case ISO code
    status: str  # succeeded | pending | requires_action | failed | canceled

    @property
    def succeeded(self) -> bool:
        return self.status == "succeeded"


# What a refund in these statuses gives back, or is giving back.
REFUND_GIVING_BACK = frozenset({"succeeded", "pending"})
# A refund's statuses in the order it moves through them: pending (or waiting for the
# customer's action), succeeded, then failed or canceled, which are final (a refund
# can fail after it succeeded: the card's account closed).
_REFUND_RANK = {"succeeded": 1, "failed": 2, "canceled": 2}


def refund_moved_on(recorded: str, now: str) -> bool:
    """Whether a refund recorded in status `recorded` has moved on to `now`; a status
    it has left behind, delivered late, is not a move."""
    return _REFUND_RANK.get(now, 0) > _REFUND_RANK.get(recorded, 0)


@dataclass(frozen=True)
class CreditNote:
    """A credit note on an invoice: value given back on it (a refund, a credit to the
    customer's balance, or out of band), tax included, in minor units."""

    id: str
    invoice_id: str
    amount_cents: int
    currency: str  # upper-case ISO code
    # Issued after the invoice was paid (a pre-payment note only lowers what is due).
    post_payment: bool
    # Refunds the note made of the invoice's payment: counted through the note, once.
    refund_ids: tuple[str, ...] = ()
    voided: bool = False


class DisputeOutcome(enum.StrEnum):
    """Where a dispute stands, for us (`dispute_status` in the API)."""

    OPEN = "open"
    WON = "won"
    LOST = "lost"


@dataclass(frozen=True)
class Dispute:
    """A dispute (chargeback) of a payment."""

    id: str
    payment_id: str | None
    amount_cents: int
    currency: str  # upper-case ISO code
    outcome: DisputeOutcome


def dispute_moved_on(recorded: str, now: DisputeOutcome) -> bool:
    """Whether a dispute recorded as `recorded` (open, won, lost) has moved on to `now`:
    only an open one can close; a closed one stays closed."""
    return recorded == DisputeOutcome.OPEN and now != DisputeOutcome.OPEN


@dataclass(frozen=True)
class PaymentDispute:
    """A dispute of a payment that paid an invoice (the invoice it paid, looked up)."""

    dispute: Dispute
    invoice_id: str


@dataclass(frozen=True)
class InvoiceChanged:
    """The invoice moved (paid, voided, uncollectible, finalized…)."""

    invoice: InvoiceSnapshot


@dataclass(frozen=True)
class InvoicePaymentFailed:
    """A charge of the invoice failed; the provider may try again."""

    invoice: InvoiceSnapshot
    message: str


@dataclass(frozen=True)
class InvoicePaymentMade:
    """A payment paid (part of) an invoice: which payment, so that its refunds and
    disputes later map to the purchase without asking the provider."""

    invoice_id: str
    payment_id: str


@dataclass(frozen=True)
class RefundsChanged:
    """Refunds of one payment were made or changed. `complete` says the event lists
    every refund of the payment; otherwise they must be read from the provider."""

    payment_id: str | None
    refunds: tuple[Refund, ...]
    complete: bool = True


@dataclass(frozen=True)
class CreditNoteChanged:
    """A credit note was issued on an invoice, or voided."""

    credit_note: CreditNote


@dataclass(frozen=True)
class DisputeChanged:
    dispute: Dispute


@dataclass(frozen=True)
class OtherEvent:
    """An event the service does not act on (recorded as ignored, with `reason` if
    it is more than a type the service does not use)."""

    reason: str | None = None


ProviderEvent = (
    InvoiceChanged
    | InvoicePaymentFailed
    | InvoicePaymentMade
    | RefundsChanged
    | CreditNoteChanged
    | DisputeChanged
    | OtherEvent
)


@dataclass(frozen=True)
class PurchaseInvoiceRequest:
    """One purchase to invoice: everything the provider needs, nothing it may change."""

    purchase_id: str
    wallet_id: str
    transaction_id: str
    provider_customer_id: str
    currency: str
    amount_cents: int  # paid credits x rate, minor units, halves up
    credits: Decimal
    rate_amount: Decimal
    description: str
    # `charge_automatically` or `send_invoice`; None: the configured method.
    collection_method: str | None = None


@dataclass(frozen=True)
class CustomerRequest:
    customer_id: str
    external_id: str
    name: str | None
    email: str | None


class PaymentProvider(Protocol):
    """Operations the service performs at its payment provider.

    Every write takes an idempotency key derived from our own ids, so a retry after a
    timeout or a crash never creates a second object.
    """

    name: str

    def minimum_charge_cents(self, currency: str) -> int:
        """The smallest total the provider will charge in `currency` (minor units)."""
        ...

    def maximum_charge_cents(self, currency: str) -> int:
        """The largest amount the provider accepts on an invoice item (minor units)."""
        ...

    def charge_step_cents(self, currency: str) -> int:
        """Amounts the provider charges in `currency` are multiples of this (minor units)."""
        ...

    def ensure_customer(self, customer: CustomerRequest) -> str:
        """Create the provider's customer for `customer` (idempotent); returns its id."""
        ...

    def create_purchase_invoice(self, request: PurchaseInvoiceRequest) -> InvoiceSnapshot:
        """Create, fill (one line, no discounts) and finalize the purchase invoice.

        The same as `finish_purchase_invoice(request, create_purchase_draft(request))`.
        """
        ...

    def create_purchase_draft(self, request: PurchaseInvoiceRequest) -> InvoiceSnapshot:
        """Step 1: the empty draft invoice, our ids in its metadata (idempotent)."""
        ...

    def finish_purchase_invoice(
        self, request: PurchaseInvoiceRequest, invoice: InvoiceSnapshot
    ) -> InvoiceSnapshot:
        """Steps 2 and 3, from wherever `invoice` stands: add the line if the draft has
        none, then finalize. An invoice already finalized is returned as it is."""
        ...

    def retrieve_invoice(self, invoice_id: str) -> InvoiceSnapshot: ...

    def void_invoice(self, invoice_id: str) -> InvoiceSnapshot:
        """Void an open invoice (best effort when a wallet ends)."""
        ...

    def find_purchase_invoice(self, purchase_id: str) -> InvoiceSnapshot | None:
        """The invoice carrying `purchase_id` in its metadata, if the provider has one."""
        ...

    def iter_purchase_invoices(
        self, *, created_since: datetime | None = None, status: str | None = None
    ) -> Iterator[InvoiceSnapshot]:
        """Every invoice carrying our purchase metadata, read in pages."""
        ...

    def invoice_paid_by(self, payment_id: str) -> str | None:
        """The invoice `payment_id` paid, if any (looked up once, then remembered)."""
        ...

    def list_payment_refunds(self, payment_id: str) -> list[Refund]:
        """Every refund of the payment `payment_id`, whatever its status."""
        ...

    def list_credit_notes(self, invoice_id: str) -> list[CreditNote]:
        """Every credit note of the invoice `invoice_id`."""
        ...

    def iter_invoice_refunds(
        self, *, created_since: datetime | None = None
    ) -> Iterator[PaymentRefund]:
        """Refunds created since `created_since`, whatever their status, each with the
        invoice its payment paid; refunds of payments that paid no invoice are skipped."""
        ...

    def iter_invoice_disputes(
        self, *, created_since: datetime | None = None
    ) -> Iterator[PaymentDispute]:
        """Disputes created since `created_since`, each with the invoice its payment
        paid; disputes of payments that paid no invoice are skipped."""
        ...

    def retrieve_dispute(self, dispute_id: str) -> Dispute:
        """One dispute as it is now."""
        ...
