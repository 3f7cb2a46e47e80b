"""Every request and response schema of the API, in one place.

Requests refuse unknown fields (marshmallow's RAISE). Responses are dumped from the
models; decimals leave as strings, amounts in minor units as integers.

These classes are also the OpenAPI document (`gateway.api.spec`), so each field says
exactly what it takes or gives: decimals carry their pattern and bounds
(`DecimalString`, `decimal_answer`), closed sets of words their `enum`, answer schemas
(`Answer`) list every field as always present, and `example` metadata feeds the examples.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from decimal import Decimal
from typing import Any

from marshmallow import Schema, ValidationError, fields, post_load, pre_load, validate
from sqlalchemy.orm import object_session

from gateway import ledger, money
from gateway.api.fields import (
    DecimalString,
    NullOnly,
    TrueOnly,
    UTCDateTimeField,
    decimal_schema,
)
from gateway.credits import ApplicationStatus, InvoiceType, NotApplicableReason
from gateway.errors import CouponsNotApplicable
from gateway.events import EVENT_TYPES
from gateway.intervals import Interval
from gateway.models import (
    DisputeStatus,
    EntrySource,
    EntryStatus,
    Purchase,
    PurchaseStatus,
    RuleMethod,
    RuleStatus,
    RuleTrigger,
    SubscriptionStatus,
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


class WholeNumber(fields.Integer):
    """A JSON integer. As in JSON Schema, a number with a zero fraction (`1873.0`) is one
    too; strings, booleans and fractions are refused."""

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(strict=True, **kwargs)

    def _validated(self, value: Any) -> int:
        # Far beyond any bound (and costly to convert): left as it is, and so refused.
        if (
            isinstance(value, Decimal)
            and value.is_finite()
            and value.adjusted() < 30
            and value == value.to_integral_value()
        ):
            value = int(value)
        return super()._validated(value)


class CurrencyField(fields.String):
    """An ISO 4217 code we support, in any letter case (answered in capitals)."""

    def _deserialize(self, value: Any, attr: Any, data: Any, **kwargs: Any) -> str:
        return str(super()._deserialize(_upper(value), attr, data, **kwargs))

    def openapi_schema(self) -> dict[str, Any]:
        def any_case(code: str) -> str:
            return "".join(f"[{letter}{letter.lower()}]" for letter in code)

        codes = "|".join(any_case(code) for code in sorted(money.SUPPORTED_CURRENCIES))
        return {"type": "string", "pattern": f"^({codes})$"}


def credits_field(**kwargs: Any) -> DecimalString:
    return DecimalString(
        places=money.CREDIT_PLACES,
        minimum=Decimal(0),
        minimum_exclusive=True,
        maximum=money.MAX_CREDITS,
        formatter=money.format_credits,
        **kwargs,
    )


def credits_answer(**kwargs: Any) -> DecimalString:
    """Credits in an answer: "10.00000", never negative."""
    metadata = {"example": "10.00000", **kwargs.pop("metadata", {})}
    return DecimalString(
        places=money.CREDIT_PLACES,
        minimum=Decimal(0),
        formatter=money.format_credits,
        dump_only=True,
        metadata=metadata,
        **kwargs,
    )


def decimal_answer(
    getter: Callable[[Any], str | None], places: int, *, allow_none: bool = False, **metadata: Any
) -> fields.Function:
    """A decimal string computed from the object (its formatting may need the currency)."""
    schema = decimal_schema(places, minimum=Decimal(0))
    return fields.Function(getter, allow_none=allow_none, metadata={"openapi": schema, **metadata})


def enum_answer(values: Iterable[str], **kwargs: Any) -> fields.String:
    """A word from a closed set, documented as an `enum`."""
    metadata = {"enum": sorted(str(value) for value in values), **kwargs.pop("metadata", {})}
    return fields.String(metadata=metadata, **kwargs)


class Answer(Schema):
    """A response schema: every field is always in the answer (null when it has no
    value), so the document lists all of them as required."""

    def on_bind_field(self, field_name: str, field_obj: fields.Field[Any]) -> None:
        field_obj.required = True
        field_obj.dump_only = True  # e.g. a decimal is answered as a string only


# --- errors and pagination -------------------------------------------------------


class ErrorSchema(Answer):
    status = fields.Integer(metadata={"example": 422})
    error = fields.String(metadata={"example": "Unprocessable Entity"})
    code = fields.String(metadata={"example": "validation_errors"})
    message = fields.String(metadata={"example": "the request is not valid"})
    error_details = fields.Dict(
        metadata={"example": {"wallet": {"rate_amount": ["must be greater than 0"]}}}
    )


class PageQuery(Schema):
    page = fields.Integer(load_default=1, validate=validate.Range(min=1, max=1_000_000))
    per_page = fields.Integer(load_default=20, validate=validate.Range(min=1, max=100))


class PaginationMeta(Answer):
    current_page = fields.Integer(validate=validate.Range(min=1))
    next_page = fields.Integer(allow_none=True, validate=validate.Range(min=2))
    prev_page = fields.Integer(allow_none=True, validate=validate.Range(min=1))
    total_pages = fields.Integer(validate=validate.Range(min=1))
    total_count = fields.Integer(validate=validate.Range(min=0))


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
    external_id = fields.String(
        required=True, validate=_identifier, metadata={"example": "acme-42"}
    )
    currency = CurrencyField(required=True, validate=_currency, metadata={"example": "USD"})
    name = fields.String(
        allow_none=True, validate=validate.Length(max=255), metadata={"example": "Acme Inc."}
    )
    email = fields.Email(
        allow_none=True,
        validate=validate.Length(max=320),
        metadata={"example": "billing@acme.example"},
    )


class CustomerRequest(Schema):
    customer = fields.Nested(CustomerInputSchema, required=True)


class CustomerSchema(Answer):
    id = fields.String(metadata={"example": "cus_01JEXAMPLE"})
    external_id = fields.String(metadata={"example": "acme-42"})
    currency = enum_answer(money.SUPPORTED_CURRENCIES, metadata={"example": "USD"})
    name = fields.String(allow_none=True)
    email = fields.String(allow_none=True)
    created_at = UTCDateTimeField()


class CustomerResponse(Answer):
    customer = fields.Nested(CustomerSchema)


class SubscriptionInputSchema(Schema):
    external_id = fields.String(
        required=True, validate=_identifier, metadata={"example": "acme-42-pro"}
    )
    external_customer_id = fields.String(
        required=True, validate=_identifier, metadata={"example": "acme-42"}
    )
    plan_code = fields.String(required=True, validate=_identifier, metadata={"example": "pro"})


class SubscriptionRequest(Schema):
    subscription = fields.Nested(SubscriptionInputSchema, required=True)


class SubscriptionSchema(Answer):
    id = fields.String()
    external_id = fields.String()
    external_customer_id = fields.Function(
        lambda sub: sub.customer.external_id, metadata={"type": "string"}
    )
    plan_code = fields.String()
    status = enum_answer(SubscriptionStatus)
    started_at = UTCDateTimeField()
    terminated_at = UTCDateTimeField(allow_none=True)
    created_at = UTCDateTimeField()


class SubscriptionResponse(Answer):
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
    external_customer_id = fields.String(
        required=True, validate=_identifier, metadata={"example": "acme-42"}
    )
    rate_amount = DecimalString(
        required=True,
        places=money.RATE_PLACES,
        minimum=Decimal(0),
        minimum_exclusive=True,
        maximum=money.MAX_RATE,
        metadata={"example": "5.00"},
    )
    name = fields.String(
        allow_none=True, validate=validate.Length(max=255), metadata={"example": "Prepaid"}
    )
    currency = CurrencyField(
        allow_none=True,
        validate=_currency,
        metadata={"example": "USD", "description": "The customer's; absent or null: the same"},
    )
    paid_credits = credits_field(allow_none=True, metadata={"example": "20"})
    granted_credits = credits_field(allow_none=True, metadata={"example": "10"})
    expiration_at = UTCDateTimeField(allow_none=True, metadata={"example": "2030-01-01T00:00:00Z"})
    recurring_transaction_rules = _rules_field(load_default=())
    low_balance_threshold_credits = _threshold_field(allow_none=True)


class WalletCreateRequest(_RefusesCoupons):
    wallet = fields.Nested(WalletCreateSchema, required=True)


class WalletUpdateSchema(_RefusesCoupons):
    name = fields.String(
        allow_none=True, validate=validate.Length(max=255), metadata={"example": "Prepaid"}
    )
    expiration_at = UTCDateTimeField(allow_none=True, metadata={"example": "2031-01-01T00:00:00Z"})
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


class RecurringTransactionRuleSchema(Answer):
    id = fields.String()
    trigger = enum_answer(RuleTrigger)
    method = enum_answer(RuleMethod)
    status = enum_answer(RuleStatus)
    paused_reason = fields.String(allow_none=True)
    threshold_credits = DecimalString(places=5, formatter=money.format_credits, allow_none=True)
    interval = enum_answer(Interval, allow_none=True)
    started_at = UTCDateTimeField(allow_none=True)
    paid_credits = DecimalString(places=5, formatter=money.format_credits, allow_none=True)
    granted_credits = DecimalString(places=5, formatter=money.format_credits, allow_none=True)
    target_credits = DecimalString(places=5, formatter=money.format_credits, allow_none=True)
    created_at = UTCDateTimeField()


def _pending_credits(wallet: Wallet) -> str:
    if not isinstance(wallet, Wallet):  # a row read with its pending credits (events)
        return money.format_credits(wallet.pending_credits)
    session = object_session(wallet)
    assert session is not None, "a wallet is answered while its session is open"
    return money.format_credits(ledger.pending_credits(session, wallet.id))


class WalletSchema(Answer):
    id = fields.String(metadata={"example": "wal_01JEXAMPLE"})
    external_customer_id = fields.Function(
        lambda wallet: wallet.customer.external_id, metadata={"type": "string"}
    )
    status = enum_answer(WalletStatus)
    name = fields.String(allow_none=True)
    currency = enum_answer(money.SUPPORTED_CURRENCIES)
    rate_amount = decimal_answer(_wallet_amount("rate_amount"), money.RATE_PLACES)
    credits_balance = credits_answer()
    balance_cents = fields.Function(
        lambda wallet: money.balance_minor(
            wallet.credits_balance, wallet.rate_amount, wallet.currency
        ),
        metadata={"type": "integer", "minimum": 0},
    )
    consumed_credits = credits_answer()
    consumed_amount_cents = fields.Integer(validate=validate.Range(min=0))
    pending_credits = decimal_answer(
        _pending_credits, money.CREDIT_PLACES, description="purchased credits not paid yet"
    )
    low_balance_threshold_credits = DecimalString(
        places=5, formatter=money.format_credits, allow_none=True
    )
    recurring_transaction_rules = fields.List(fields.Nested(RecurringTransactionRuleSchema))
    # Lago compatibility aliases: Lago's SDKs require these names. This service does not
    # see usage before it is invoiced, so the ongoing balance is the balance.
    lago_id = fields.String(attribute="id", metadata={"description": "alias of `id` (Lago)"})
    lago_customer_id = fields.Function(
        lambda wallet: wallet.customer.id,
        metadata={"type": "string", "description": "the customer's `id` (Lago)"},
    )
    ongoing_balance_cents = fields.Function(
        lambda wallet: money.balance_minor(
            wallet.credits_balance, wallet.rate_amount, wallet.currency
        ),
        metadata={"type": "integer", "minimum": 0, "description": "alias of `balance_cents`"},
    )
    ongoing_usage_balance_cents = fields.Function(
        lambda _wallet: 0,
        metadata={"type": "integer", "enum": [0], "description": "always 0 (Lago)"},
    )
    credits_ongoing_balance = credits_answer(
        attribute="credits_balance", metadata={"description": "alias of `credits_balance`"}
    )
    credits_ongoing_usage_balance = decimal_answer(
        lambda _wallet: money.format_credits(Decimal(0)),
        money.CREDIT_PLACES,
        description="always 0.00000 (Lago)",
    )
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


class InvoiceSchema(Answer):
    """A purchase's invoice (the `invoice` block of a purchased entry)."""

    provider = enum_answer(["stripe"])
    provider_invoice_id = fields.String(allow_none=True)
    status = fields.Function(
        _invoice_status,
        allow_none=True,
        metadata={"openapi": {"type": "string", "enum": INVOICE_BLOCK_STATUSES}},
    )
    currency = enum_answer(money.SUPPORTED_CURRENCIES)
    subtotal_cents = fields.Integer(allow_none=True)
    tax_cents = fields.Integer(allow_none=True)
    total_cents = fields.Integer(allow_none=True)
    hosted_invoice_url = fields.String(allow_none=True)
    # Refunds and post-payment credit notes, each counted once, at most what was paid.
    returned_cents = fields.Integer()
    dispute_status = fields.String(
        allow_none=True, validate=validate.OneOf([s.value for s in DisputeStatus])
    )


class MetadataPair(Schema):
    """One of Lago's `metadata` entries on a wallet transaction."""

    key = fields.String(required=True, validate=validate.Length(min=1, max=100))
    value = fields.String(required=True, validate=validate.Length(max=255))


class WalletTransactionSchema(Answer):
    id = fields.String(metadata={"example": "wtx_01JEXAMPLE"})
    wallet_id = fields.String()
    transaction_type = enum_answer(TransactionType)
    transaction_status = enum_answer(TransactionStatus)
    status = enum_answer(EntryStatus)
    credit_amount = credits_answer()
    amount = decimal_answer(
        lambda entry: money.format_amount(entry.amount, entry.wallet.currency),
        money.AMOUNT_PLACES,
    )
    settled_at = UTCDateTimeField(allow_none=True)
    failed_at = UTCDateTimeField(allow_none=True)
    created_at = UTCDateTimeField()
    created_by = fields.String(
        metadata={"description": "who made it: operator:NAME, api:LABEL or system"}
    )
    source = enum_answer(EntrySource)
    # Null except for purchased entries.
    invoice = fields.Nested(InvoiceSchema, attribute="purchase", allow_none=True)
    name = fields.String(allow_none=True)
    metadata = fields.List(fields.Nested(MetadataPair), attribute="entry_metadata", allow_none=True)
    # Lago compatibility aliases.
    lago_id = fields.String(attribute="id", metadata={"description": "alias of `id` (Lago)"})
    lago_wallet_id = fields.String(
        attribute="wallet_id", metadata={"description": "alias of `wallet_id` (Lago)"}
    )
    invoice_requires_successful_payment = fields.Function(
        lambda _entry: True,
        metadata={"type": "boolean", "enum": [True], "description": "always true: credits "
                  "are purchased only once paid (Lago)"},
    )  # fmt: skip


class WalletResponse(Answer):
    wallet = fields.Nested(WalletSchema)


class WalletCreateResponse(Answer):
    wallet = fields.Nested(WalletSchema)
    wallet_transactions = fields.List(fields.Nested(WalletTransactionSchema))


class WalletListResponse(Answer):
    wallets = fields.List(fields.Nested(WalletSchema))
    meta = fields.Nested(PaginationMeta)


# --- wallet transactions ---------------------------------------------------------


class TopUpSchema(_RefusesCoupons):
    wallet_id = fields.String(
        required=True, validate=_identifier, metadata={"example": "wal_01JEXAMPLE"}
    )
    paid_credits = credits_field(allow_none=True, metadata={"example": "20"})
    granted_credits = credits_field(allow_none=True, metadata={"example": "5.5"})
    # Lago's wallet transaction request (lago-python-client sends all of it, nulls too).
    voided_credits = credits_field(
        allow_none=True,
        metadata={"example": "1", "description": "credits voided now (an outbound `voided` "
                  "entry), at most the balance"},
    )  # fmt: skip
    name = fields.String(
        allow_none=True, validate=validate.Length(max=255), metadata={"example": "Winter bonus"}
    )
    metadata = fields.List(
        fields.Nested(MetadataPair),
        allow_none=True,
        validate=validate.Length(max=50),
        metadata={"example": [{"key": "campaign", "value": "winter"}]},
    )
    invoice_requires_successful_payment = TrueOnly(allow_none=True)
    ignore_paid_top_up_limits = NullOnly(allow_none=True)
    purchase_order_number = NullOnly(allow_none=True)
    payment_method = NullOnly(allow_none=True)
    invoice_custom_section = NullOnly(allow_none=True)


class TopUpRequest(_RefusesCoupons):
    wallet_transaction = fields.Nested(TopUpSchema, required=True)


class WalletTransactionListQuery(PageQuery):
    status = fields.String(validate=validate.OneOf([s.value for s in EntryStatus]))
    transaction_status = fields.String(
        validate=validate.OneOf([s.value for s in TransactionStatus])
    )


class WalletTransactionResponse(Answer):
    wallet_transaction = fields.Nested(WalletTransactionSchema)


class WalletTransactionsResponse(Answer):
    wallet_transactions = fields.List(fields.Nested(WalletTransactionSchema))


class WalletTransactionListResponse(Answer):
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
    invoice_external_id = fields.String(
        required=True, validate=_identifier, metadata={"example": "inv-2027-001"}
    )
    external_customer_id = fields.String(
        required=True, validate=_identifier, metadata={"example": "acme-42"}
    )
    invoice_type = fields.String(
        required=True,
        validate=validate.OneOf([t.value for t in InvoiceType]),
        metadata={"example": "subscription"},
    )
    currency = CurrencyField(required=True, validate=_currency, metadata={"example": "USD"})
    subtotal_amount_cents = WholeNumber(
        required=True,
        validate=validate.Range(min=0, max=MAX_SUBTOTAL_CENTS),
        metadata={"example": 12000},
    )
    tax_rate = DecimalString(
        places=5,
        minimum=Decimal(0),
        maximum=Decimal(100),
        allow_none=True,
        load_default=None,
        metadata={"example": "20"},
    )


class CreditApplicationRequest(Schema):
    credit_application = fields.Nested(CreditApplicationInputSchema, required=True)


def _tax_rate_text(application: Any) -> str | None:
    rate = application.tax_rate
    return None if rate is None else f"{rate.normalize():f}"


class CreditApplicationSchema(Answer):
    id = fields.String(metadata={"example": "cap_01JEXAMPLE"})
    invoice_external_id = fields.String()
    external_customer_id = fields.String()
    wallet_id = fields.String(allow_none=True)
    invoice_type = enum_answer(InvoiceType)
    currency = enum_answer(money.SUPPORTED_CURRENCIES)
    status = enum_answer(ApplicationStatus)
    reason = enum_answer(NotApplicableReason, allow_none=True)
    credit_amount = credits_answer()
    amount_cents = fields.Integer(validate=validate.Range(min=0))
    subtotal_amount_cents = fields.Integer(validate=validate.Range(min=0))
    subtotal_after_credits_amount_cents = fields.Integer(validate=validate.Range(min=0))
    tax_rate = decimal_answer(_tax_rate_text, 5, allow_none=True)
    taxes_amount_cents = fields.Integer(validate=validate.Range(min=0))
    total_amount_cents = fields.Integer(validate=validate.Range(min=0))
    created_at = UTCDateTimeField()


class CreditApplicationResponse(Answer):
    credit_application = fields.Nested(CreditApplicationSchema)


# --- outgoing events: webhook endpoints and the feed -------------------------------


def _event_types_field(**kwargs: Any) -> fields.List[Any]:
    return fields.List(
        fields.String(validate=validate.OneOf(EVENT_TYPES, error="unknown event type")),
        validate=validate.Length(min=1, max=len(EVENT_TYPES) * 2),
        **kwargs,
    )


class WebhookEndpointInputSchema(Schema):
    url = fields.String(
        required=True,
        validate=validate.Length(min=1, max=2048),
        metadata={"example": "https://billing.example.com/hooks/credits"},
    )
    event_types = _event_types_field(
        allow_none=True,
        metadata={
            "description": "Event types to send; absent or null: every type",
            "example": ["wallet.created", "wallet_transaction.settled"],
        },
    )
    description = fields.String(
        allow_none=True, validate=validate.Length(max=255), metadata={"example": "Billing core"}
    )


class WebhookEndpointRequest(Schema):
    webhook_endpoint = fields.Nested(WebhookEndpointInputSchema, required=True)


class WebhookEndpointSchema(Answer):
    id = fields.String()
    url = fields.String()
    description = fields.String(allow_none=True)
    event_types = fields.List(
        fields.String(), allow_none=True, metadata={"description": "null: every type"}
    )
    status = enum_answer(["enabled", "disabled"])
    created_at = UTCDateTimeField()
    disabled_at = UTCDateTimeField(allow_none=True)


class WebhookEndpointCreatedSchema(WebhookEndpointSchema):
    secret = fields.String(
        metadata={"description": "whsec_… signing secret (Standard Webhooks); shown only here"}
    )


class WebhookEndpointResponse(Answer):
    webhook_endpoint = fields.Nested(WebhookEndpointSchema)


class WebhookEndpointCreatedResponse(Answer):
    webhook_endpoint = fields.Nested(WebhookEndpointCreatedSchema)


class WebhookEndpointListResponse(Answer):
    webhook_endpoints = fields.List(fields.Nested(WebhookEndpointSchema))
    meta = fields.Nested(PaginationMeta)


class EventListQuery(Schema):
    after = fields.String(
        validate=_identifier, metadata={"description": "list the events after this event id"}
    )
    type = fields.String(validate=validate.OneOf(EVENT_TYPES, error="unknown event type"))
    limit = fields.Integer(load_default=100, validate=validate.Range(min=1, max=100))


class EventSchema(Answer):
    id = fields.String()
    type = enum_answer(EVENT_TYPES)
    created_at = fields.String(metadata={"format": "date-time"})
    data = fields.Dict(
        metadata={"description": "the resources under their API root keys, plus sequence"}
    )


class EventListResponse(Answer):
    events = fields.List(fields.Nested(EventSchema))
    has_more = fields.Boolean()


class DeliveryAttemptSchema(Answer):
    attempted_at = UTCDateTimeField()
    status_code = fields.Integer(allow_none=True)
    error = fields.String(allow_none=True)
    duration_ms = fields.Integer()


class EventDeliverySchema(Answer):
    endpoint_id = fields.String()
    url = fields.String()
    status = enum_answer(["pending", "delivered", "failed"])
    next_attempt_at = UTCDateTimeField(allow_none=True)
    delivered_at = UTCDateTimeField(allow_none=True)
    attempts = fields.List(fields.Nested(DeliveryAttemptSchema))


class EventResponse(Answer):
    event = fields.Nested(EventSchema)
    deliveries = fields.List(fields.Nested(EventDeliverySchema))


# --- service endpoints (health) ----------------------------------------------------


class ServiceStatusResponse(Schema):
    status = fields.String(required=True, metadata={"example": "ok"})
    database = fields.String(metadata={"example": "ok"})
    schema = fields.String(allow_none=True, metadata={"description": "Alembic revision"})


# --- Stripe webhook ----------------------------------------------------------------


class WebhookEventReceipt(Answer):
    id = fields.String(required=True, metadata={"description": "Stripe's event id"})
    type = fields.String(required=True, metadata={"example": "invoice.paid"})
    status = fields.String(
        required=True, metadata={"description": "processed or ignored (event types not used)"}
    )
    duplicate = fields.Boolean(
        required=True, metadata={"description": "already handled by an earlier delivery"}
    )


class WebhookReceivedResponse(Answer):
    received = fields.Boolean(required=True)
    event = fields.Nested(WebhookEventReceipt, required=True)
