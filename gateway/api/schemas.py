"""Every request and response schema of the API, in one place.

Requests refuse unknown fields (marshmallow's RAISE). Responses are dumped from the
models; decimals leave as strings, amounts in minor units as integers.
"""

from __future__ import annotations

from decimal import Decimal
from typing import Any

from marshmallow import Schema, ValidationError, fields, post_load, pre_load, validate
from sqlalchemy.orm import object_session

from gateway import ledger, money
from gateway.api.fields import DecimalString, UTCDateTimeField
from gateway.errors import CouponsNotApplicable
from gateway.intervals import Interval
from gateway.models import (
    DisputeStatus,
    EntrySource,
    EntryStatus,
    Purchase,
    PurchaseStatus,
    RuleMethod,
    RuleTrigger,
    TransactionStatus,
    TransactionType,
    Wallet,
    WalletStatus,
)
from gateway.rules import RuleInput
from gateway.transitions import InvoiceStatus

_currency = validate.OneOf(
    sorted(money.SUPPORTED_CURRENCIES), error="must be a supported ISO 4217 currency code"
)
_identifier = validate.Length(min=1, max=255)


def _upper(value: Any) -> Any:
    return value.upper() if isinstance(value, str) else value


class CurrencyField(fields.String):
    def _deserialize(self, value: Any, attr: Any, data: Any, **kwargs: Any) -> str:
        return str(super()._deserialize(_upper(value), attr, data, **kwargs))


def credits_field(**kwargs: Any) -> DecimalString:
    return DecimalString(
        places=money.CREDIT_PLACES,
        minimum=Decimal(0),
        minimum_exclusive=True,
        maximum=money.MAX_CREDITS,
        formatter=money.format_credits,
        **kwargs,
    )


# --- errors and pagination -------------------------------------------------------


class ErrorSchema(Schema):
    status = fields.Integer(required=True)
    error = fields.String(required=True)
    code = fields.String(required=True)
    message = fields.String()
    error_details = fields.Dict(required=True)


class PageQuery(Schema):
    page = fields.Integer(load_default=1, validate=validate.Range(min=1, max=1_000_000))
    per_page = fields.Integer(load_default=20, validate=validate.Range(min=1, max=100))


class PaginationMeta(Schema):
    current_page = fields.Integer(required=True)
    next_page = fields.Integer(allow_none=True)
    prev_page = fields.Integer(allow_none=True)
    total_pages = fields.Integer(required=True)
    total_count = fields.Integer(required=True)


def pagination_meta(page: int, per_page: int, total: int) -> dict[str, Any]:
    total_pages = max(1, -(-total // per_page))
    return {
        "current_page": page,
        "next_page": page + 1 if page < total_pages else None,
        "prev_page": page - 1 if page > 1 else None,
        "total_pages": total_pages,
        "total_count": total,
    }


# --- customers and subscriptions ------------------------------------------------


class CustomerInputSchema(Schema):
    external_id = fields.String(required=True, validate=_identifier)
    currency = CurrencyField(required=True, validate=_currency)
    name = fields.String(allow_none=True, validate=validate.Length(max=255))
    email = fields.Email(allow_none=True, validate=validate.Length(max=320))


class CustomerRequest(Schema):
    customer = fields.Nested(CustomerInputSchema, required=True)


class CustomerSchema(Schema):
    id = fields.String()
    external_id = fields.String()
    currency = fields.String()
    name = fields.String(allow_none=True)
    email = fields.String(allow_none=True)
    created_at = UTCDateTimeField()


class CustomerResponse(Schema):
    customer = fields.Nested(CustomerSchema)


class SubscriptionInputSchema(Schema):
    external_id = fields.String(required=True, validate=_identifier)
    external_customer_id = fields.String(required=True, validate=_identifier)
    plan_code = fields.String(required=True, validate=_identifier)


class SubscriptionRequest(Schema):
    subscription = fields.Nested(SubscriptionInputSchema, required=True)


class SubscriptionSchema(Schema):
    id = fields.String()
    external_id = fields.String()
    external_customer_id = fields.Function(lambda sub: sub.customer.external_id)
    plan_code = fields.String()
    status = fields.String()
    started_at = UTCDateTimeField()
    terminated_at = UTCDateTimeField(allow_none=True)
    created_at = UTCDateTimeField()


class SubscriptionResponse(Schema):
    subscription = fields.Nested(SubscriptionSchema)


# --- wallets ---------------------------------------------------------------------

COUPON_FIELDS = frozenset(
    {"coupon", "coupons", "coupon_code", "coupon_codes", "discount", "discounts",
     "promotion_code", "promotion_codes", "applied_coupons"}
)  # fmt: skip


def refuse_coupons(data: Any) -> None:
    """Coupons never apply to credit purchases: refuse before anything else is read."""
    if isinstance(data, dict):
        offered = sorted(COUPON_FIELDS.intersection(data))
        if offered:
            raise CouponsNotApplicable(
                "coupons and discounts do not apply to prepaid credits",
                details={name: ["coupons do not apply to prepaid credits"] for name in offered},
            )


class _RefusesCoupons(Schema):
    @pre_load
    def _no_coupons(self, data: Any, **_kwargs: Any) -> Any:
        refuse_coupons(data)
        return data


def _threshold_field(**kwargs: Any) -> DecimalString:
    """Credits a balance is compared with: 0 or more."""
    return DecimalString(
        places=money.CREDIT_PLACES,
        minimum=Decimal(0),
        maximum=money.MAX_CREDITS,
        formatter=money.format_credits,
        **kwargs,
    )


class RecurringTransactionRuleInputSchema(_RefusesCoupons):
    """One automatic top-up rule; which fields go with which trigger and method is
    checked by the use case (`gateway.rules.validate_rules`)."""

    trigger = fields.String(
        required=True, validate=validate.OneOf([trigger.value for trigger in RuleTrigger])
    )
    method = fields.String(
        load_default=RuleMethod.FIXED.value,
        validate=validate.OneOf([method.value for method in RuleMethod]),
    )
    threshold_credits = _threshold_field(allow_none=True)
    interval = fields.String(
        allow_none=True, validate=validate.OneOf([interval.value for interval in Interval])
    )
    started_at = UTCDateTimeField(allow_none=True)
    paid_credits = credits_field(allow_none=True)
    granted_credits = credits_field(allow_none=True)
    target_credits = credits_field(allow_none=True)

    @post_load
    def _rule(self, data: dict[str, Any], **_kwargs: Any) -> RuleInput:
        return RuleInput(**data)


def _rules_field(**kwargs: Any) -> fields.List[Any]:
    return fields.List(
        fields.Nested(RecurringTransactionRuleInputSchema),
        validate=validate.Length(max=len(RuleTrigger)),
        **kwargs,
    )


class WalletCreateSchema(_RefusesCoupons):
    external_customer_id = fields.String(required=True, validate=_identifier)
    rate_amount = DecimalString(
        required=True,
        places=money.RATE_PLACES,
        minimum=Decimal(0),
        minimum_exclusive=True,
        maximum=money.MAX_RATE,
    )
    name = fields.String(allow_none=True, validate=validate.Length(max=255))
    currency = CurrencyField(validate=_currency)
    paid_credits = credits_field(allow_none=True)
    granted_credits = credits_field(allow_none=True)
    expiration_at = UTCDateTimeField(allow_none=True)
    recurring_transaction_rules = _rules_field(load_default=())
    low_balance_threshold_credits = _threshold_field(allow_none=True)


class WalletCreateRequest(_RefusesCoupons):
    wallet = fields.Nested(WalletCreateSchema, required=True)


class WalletUpdateSchema(_RefusesCoupons):
    name = fields.String(allow_none=True, validate=validate.Length(max=255))
    expiration_at = UTCDateTimeField(allow_none=True)
    recurring_transaction_rules = _rules_field()
    low_balance_threshold_credits = _threshold_field(allow_none=True)


class WalletUpdateRequest(Schema):
    wallet = fields.Nested(WalletUpdateSchema, required=True)


class WalletListQuery(PageQuery):
    external_customer_id = fields.String(validate=_identifier)
    status = fields.String(validate=validate.OneOf([s.value for s in WalletStatus]))


def _wallet_amount(attribute: str) -> Any:
    def dump(wallet: Wallet) -> str:
        return money.format_amount(getattr(wallet, attribute), wallet.currency)

    return dump


class RecurringTransactionRuleSchema(Schema):
    id = fields.String()
    trigger = fields.String()
    method = fields.String()
    status = fields.String()
    paused_reason = fields.String(allow_none=True)
    threshold_credits = DecimalString(places=5, formatter=money.format_credits, allow_none=True)
    interval = fields.String(allow_none=True)
    started_at = UTCDateTimeField(allow_none=True)
    paid_credits = DecimalString(places=5, formatter=money.format_credits, allow_none=True)
    granted_credits = DecimalString(places=5, formatter=money.format_credits, allow_none=True)
    target_credits = DecimalString(places=5, formatter=money.format_credits, allow_none=True)
    created_at = UTCDateTimeField()


def _pending_credits(wallet: Wallet) -> str:
    session = object_session(wallet)
    assert session is not None, "a wallet is answered while its session is open"
    return money.format_credits(ledger.pending_credits(session, wallet.id))


class WalletSchema(Schema):
    id = fields.String()
    external_customer_id = fields.Function(lambda wallet: wallet.customer.external_id)
    status = fields.String()
    name = fields.String(allow_none=True)
    currency = fields.String()
    rate_amount = fields.Function(_wallet_amount("rate_amount"))
    credits_balance = DecimalString(places=5, formatter=money.format_credits)
    balance_cents = fields.Function(
        lambda wallet: money.balance_minor(
            wallet.credits_balance, wallet.rate_amount, wallet.currency
        )
    )
    consumed_credits = DecimalString(places=5, formatter=money.format_credits)
    consumed_amount_cents = fields.Integer()
    pending_credits = fields.Function(
        _pending_credits,
        metadata={"type": "string", "description": "purchased credits not paid yet"},
    )
    low_balance_threshold_credits = DecimalString(
        places=5, formatter=money.format_credits, allow_none=True
    )
    recurring_transaction_rules = fields.List(fields.Nested(RecurringTransactionRuleSchema))
    expiration_at = UTCDateTimeField(allow_none=True)
    terminated_at = UTCDateTimeField(allow_none=True)
    created_at = UTCDateTimeField()


# The invoice block's status: the provider invoice's, or `refunded` once everything
# paid for the purchase went back.
INVOICE_BLOCK_STATUSES = [*(s.value for s in InvoiceStatus), PurchaseStatus.REFUNDED.value]


def _invoice_status(purchase: Purchase) -> str | None:
    if purchase.status == PurchaseStatus.REFUNDED:
        return PurchaseStatus.REFUNDED.value
    return purchase.invoice_status


class InvoiceSchema(Schema):
    """A purchase's invoice (the `invoice` block of a purchased entry)."""

    provider = fields.String()
    provider_invoice_id = fields.String(allow_none=True)
    status = fields.Function(
        _invoice_status,
        validate=validate.OneOf(INVOICE_BLOCK_STATUSES),
        metadata={"type": "string", "nullable": True},
    )
    currency = fields.String()
    subtotal_cents = fields.Integer(allow_none=True)
    tax_cents = fields.Integer(allow_none=True)
    total_cents = fields.Integer(allow_none=True)
    hosted_invoice_url = fields.String(allow_none=True)
    # Refunds and post-payment credit notes, each counted once, at most what was paid.
    returned_cents = fields.Integer()
    dispute_status = fields.String(
        allow_none=True, validate=validate.OneOf([s.value for s in DisputeStatus])
    )


class WalletTransactionSchema(Schema):
    id = fields.String()
    wallet_id = fields.String()
    transaction_type = fields.String(validate=validate.OneOf([s.value for s in TransactionType]))
    transaction_status = fields.String(
        validate=validate.OneOf([s.value for s in TransactionStatus])
    )
    status = fields.String(validate=validate.OneOf([s.value for s in EntryStatus]))
    credit_amount = DecimalString(places=5, formatter=money.format_credits)
    amount = fields.Function(lambda entry: money.format_amount(entry.amount, entry.wallet.currency))
    settled_at = UTCDateTimeField(allow_none=True)
    failed_at = UTCDateTimeField(allow_none=True)
    created_at = UTCDateTimeField()
    created_by = fields.String(
        metadata={"description": "who made it: operator:NAME, api:LABEL or system"}
    )
    source = fields.String(metadata={"enum": [source.value for source in EntrySource]})
    # Null except for purchased entries.
    invoice = fields.Nested(InvoiceSchema, attribute="purchase", allow_none=True)


class WalletResponse(Schema):
    wallet = fields.Nested(WalletSchema)


class WalletCreateResponse(Schema):
    wallet = fields.Nested(WalletSchema)
    wallet_transactions = fields.List(fields.Nested(WalletTransactionSchema))


class WalletListResponse(Schema):
    wallets = fields.List(fields.Nested(WalletSchema))
    meta = fields.Nested(PaginationMeta)


# --- wallet transactions ---------------------------------------------------------


class TopUpSchema(_RefusesCoupons):
    wallet_id = fields.String(required=True, validate=_identifier)
    paid_credits = credits_field(allow_none=True)
    granted_credits = credits_field(allow_none=True)


class TopUpRequest(_RefusesCoupons):
    wallet_transaction = fields.Nested(TopUpSchema, required=True)


class WalletTransactionListQuery(PageQuery):
    status = fields.String(validate=validate.OneOf([s.value for s in EntryStatus]))
    transaction_status = fields.String(
        validate=validate.OneOf([s.value for s in TransactionStatus])
    )


class WalletTransactionResponse(Schema):
    wallet_transaction = fields.Nested(WalletTransactionSchema)


class WalletTransactionsResponse(Schema):
    wallet_transactions = fields.List(fields.Nested(WalletTransactionSchema))


class WalletTransactionListResponse(Schema):
    wallet_transactions = fields.List(fields.Nested(WalletTransactionSchema))
    meta = fields.Nested(PaginationMeta)


def require_object(data: Any) -> dict[str, Any]:
    if not isinstance(data, dict):
        raise ValidationError({"_schema": ["must be an object"]})
    return data


# --- credit applications -----------------------------------------------------------

# Minor units of one invoice subtotal: far above any real invoice, far below BigInteger.
MAX_SUBTOTAL_CENTS = 10**15


class CreditApplicationInputSchema(Schema):
    invoice_external_id = fields.String(required=True, validate=_identifier)
    external_customer_id = fields.String(required=True, validate=_identifier)
    invoice_type = fields.String(
        required=True,
        validate=validate.OneOf(["subscription", "usage", "add_on", "one_off", "credit"]),
    )
    currency = CurrencyField(required=True, validate=_currency)
    subtotal_amount_cents = fields.Integer(
        required=True, strict=True, validate=validate.Range(min=0, max=MAX_SUBTOTAL_CENTS)
    )
    tax_rate = DecimalString(
        places=5, minimum=Decimal(0), maximum=Decimal(100), allow_none=True, load_default=None
    )


class CreditApplicationRequest(Schema):
    credit_application = fields.Nested(CreditApplicationInputSchema, required=True)


def _tax_rate_text(application: Any) -> str | None:
    rate = application.tax_rate
    return None if rate is None else f"{rate.normalize():f}"


class CreditApplicationSchema(Schema):
    id = fields.String()
    invoice_external_id = fields.String()
    external_customer_id = fields.String()
    wallet_id = fields.String(allow_none=True)
    invoice_type = fields.String()
    currency = fields.String()
    status = fields.String()
    reason = fields.String(allow_none=True)
    credit_amount = DecimalString(places=5, formatter=money.format_credits)
    amount_cents = fields.Integer()
    subtotal_amount_cents = fields.Integer()
    subtotal_after_credits_amount_cents = fields.Integer()
    tax_rate = fields.Function(_tax_rate_text, metadata={"type": "string", "nullable": True})
    taxes_amount_cents = fields.Integer()
    total_amount_cents = fields.Integer()
    created_at = UTCDateTimeField()


class CreditApplicationResponse(Schema):
    credit_application = fields.Nested(CreditApplicationSchema)


# --- service endpoints (health) ----------------------------------------------------


class ServiceStatusResponse(Schema):
    status = fields.String(required=True, metadata={"example": "ok"})
    database = fields.String(metadata={"example": "ok"})
    schema = fields.String(allow_none=True, metadata={"description": "Alembic revision"})


# --- Stripe webhook ----------------------------------------------------------------


class WebhookEventReceipt(Schema):
    id = fields.String(required=True, metadata={"description": "Stripe's event id"})
    type = fields.String(required=True, metadata={"example": "invoice.paid"})
    status = fields.String(
        required=True, metadata={"description": "processed or ignored (event types not used)"}
    )
    duplicate = fields.Boolean(
        required=True, metadata={"description": "already handled by an earlier delivery"}
    )


class WebhookReceivedResponse(Schema):
    received = fields.Boolean(required=True)
    event = fields.Nested(WebhookEventReceipt, required=True)
