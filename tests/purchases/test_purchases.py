"""Paid credits through Stripe invoices, seen from the API and from the wire.

Stripe is mocked only at the HTTP edge: `responses` intercepts every request to
https://api.stripe.com and the in-process stub (gateway/providers/stripe/sandbox.py) answers it, so
each test can assert exactly which form parameters and headers were sent.
"""

from __future__ import annotations

from datetime import timedelta
from decimal import Decimal
from typing import Any, NamedTuple

import pytest
import responses
from flask.testing import FlaskClient
from sqlalchemy import func, select, update
from sqlalchemy.orm import Session

from gateway.db import utcnow
from gateway.models import Customer, IdempotencyKey, Purchase, Wallet, WalletTransaction
from gateway.providers.base import CustomerRequest
from gateway.providers.stripe.client import customer_idempotency_key
from gateway.providers.stripe.sandbox import StripeStub
from tests.support.api import (
    assert_error,
    create_wallet,
    get,
    post,
    post_wallet,
    subscribed_customer,
    top_up,
    unique,
    wallet_body,
)
from tests.support.stripe import (
    SECRET_KEY,
    STRIPE_VERSION,
    entry,
    invoice_block,
    only_purchase,
    routes,
    sent,
)

CUSTOMERS = ("POST", "/v1/customers")
INVOICES = ("POST", "/v1/invoices")
ITEMS = ("POST", "/v1/invoiceitems")


def finalize_route(invoice_id: str) -> tuple[str, str]:
    return ("POST", f"/v1/invoices/{invoice_id}/finalize")


def count(session: Session, model: type[Any]) -> int:
    return int(session.execute(select(func.count()).select_from(model)).scalar_one())


def assert_stripe_headers(request: Any, idempotency_key: str | None) -> None:
    assert request.headers["Authorization"] == f"Bearer {SECRET_KEY}"
    assert request.headers["Stripe-Version"] == STRIPE_VERSION
    if idempotency_key is None:
        assert "Idempotency-Key" not in request.headers
    else:
        assert request.headers["Idempotency-Key"] == idempotency_key
    if request.method == "POST":
        assert request.headers["Content-Type"] == "application/x-www-form-urlencoded"


# --- the happy path, on the wire ---------------------------------------------------------


class Sale(NamedTuple):
    currency: str
    rate: str
    paid: str
    cents: int  # what the invoice line bills, minor units
    description: str  # the line's text


CURRENCY_CASES = [
    Sale("USD", "5.00", "10", 5000, "10 prepaid credits at 5.00 USD each"),
    # 3 x 0.333 = 0.999 EUR, billed 1.00 (halves up)
    Sale("EUR", "0.333", "3", 100, "3 prepaid credits at 0.333 EUR each"),
    # JPY has no minor unit: 2 x 100 bills 200
    Sale("JPY", "100", "2", 200, "2 prepaid credits at 100 JPY each"),
]


@pytest.mark.parametrize("case", CURRENCY_CASES, ids=lambda case: case.currency)
def test_paid_credits_open_a_finalized_stripe_invoice(
    client: FlaskClient,
    db_session: Session,
    stripe_http: responses.RequestsMock,
    stub: StripeStub,
    case: Sale,
) -> None:
    currency, rate, paid, cents, description = case
    customer = subscribed_customer(client, currency=currency)

    response = post_wallet(client, customer, rate_amount=rate, paid_credits=paid)

    assert response.status_code == 201, response.json
    wallet = response.json["wallet"]
    [transaction] = response.json["wallet_transactions"]
    purchase = only_purchase(db_session)
    stored_customer = db_session.get(Customer, purchase.customer_id, populate_existing=True)
    assert stored_customer is not None
    stripe_customer = stored_customer.provider_customer_id
    assert stripe_customer is not None and stripe_customer.startswith("cus_")
    invoice_id = purchase.provider_invoice_id
    assert invoice_id is not None

    calls = sent(stripe_http)
    assert [(c.method, c.path) for c in calls] == [
        CUSTOMERS,
        INVOICES,
        ITEMS,
        finalize_route(invoice_id),
    ]
    create_customer, create_invoice, create_item, finalize = calls
    assert create_customer.params == {
        "metadata[gateway_customer_id]": purchase.customer_id,
        "metadata[gateway_external_id]": customer,
    }
    assert_stripe_headers(
        create_customer,
        customer_idempotency_key(CustomerRequest(purchase.customer_id, customer, None, None)),
    )
    metadata = {
        "metadata[gateway_purchase_id]": purchase.id,
        "metadata[gateway_wallet_id]": wallet["id"],
        "metadata[gateway_transaction_id]": transaction["id"],
    }
    assert create_invoice.params == {
        "customer": stripe_customer,
        "currency": currency.lower(),
        "description": description,
        **metadata,
        "discounts": "",
        "pending_invoice_items_behavior": "exclude",
        "auto_advance": "false",
        "collection_method": "charge_automatically",
    }
    assert_stripe_headers(create_invoice, f"{purchase.id}:invoice")
    assert create_item.params == {
        "customer": stripe_customer,
        "invoice": invoice_id,
        "currency": currency.lower(),
        "amount": str(cents),
        "description": description,
        "discountable": "false",
        "discounts": "",
        **metadata,
    }
    assert_stripe_headers(create_item, f"{purchase.id}:item")
    assert finalize.params == {"auto_advance": "true"}
    assert_stripe_headers(finalize, f"{purchase.id}:finalize")

    # The answer carries the invoice; the balance waits for the payment.
    assert transaction["transaction_status"] == "purchased"
    assert transaction["status"] == "pending"
    assert transaction["credit_amount"] == f"{Decimal(paid):.5f}"
    assert invoice_block(transaction) == {
        "provider": "stripe",
        "provider_invoice_id": invoice_id,
        "status": "open",
        "currency": currency,
        "subtotal_cents": cents,
        "tax_cents": 0,
        "total_cents": cents,
        "hosted_invoice_url": f"https://invoice.stripe.test/i/{invoice_id}",
        "returned_cents": 0,
        "dispute_status": None,
    }
    assert wallet["credits_balance"] == "0.00000"
    assert purchase.status == "open"
    assert purchase.amount_cents == cents
    assert (purchase.subtotal_cents, purchase.total_cents) == (cents, cents)
    assert purchase.transaction_id == transaction["id"]
    [invoice] = stub.invoices_with(gateway_purchase_id=purchase.id)
    assert invoice["status"] == "open" and invoice["total"] == cents
    # Reading the transaction later shows the same invoice block.
    again = get(client, f"/wallet_transactions/{transaction['id']}").json["wallet_transaction"]
    assert again["invoice"] == transaction["invoice"]


def test_a_second_purchase_reuses_the_stripe_customer(
    client: FlaskClient, db_session: Session, stripe_http: responses.RequestsMock, stub: StripeStub
) -> None:
    customer = subscribed_customer(client)
    wallet_id = post_wallet(client, customer, paid_credits="100").json["wallet"]["id"]
    first_customer = db_session.execute(
        select(Customer.provider_customer_id).where(Customer.external_id == customer)
    ).scalar_one()
    stripe_http.calls.reset()

    response = top_up(client, wallet_id, paid_credits="60")

    assert response.status_code == 201, response.json
    assert CUSTOMERS not in routes(stripe_http)
    invoice_request = next(r for r in sent(stripe_http) if (r.method, r.path) == INVOICES)
    assert invoice_request.params["customer"] == first_customer
    assert len(stub.customers) == 1
    assert len(stub.invoices) == 2


def test_a_customer_name_and_email_reach_stripe(
    client: FlaskClient, stripe_http: responses.RequestsMock
) -> None:
    external_id = unique("cust")
    body = {
        "customer": {
            "external_id": external_id,
            "currency": "USD",
            "name": "Ada Lovelace",
            "email": "ada@example.com",
        }
    }
    assert post(client, "/customers", body).status_code == 201
    post(
        client,
        "/subscriptions",
        {
            "subscription": {
                "external_id": unique("sub"),
                "external_customer_id": external_id,
                "plan_code": "pro",
            }
        },
    )

    assert post_wallet(client, external_id, paid_credits="10").status_code == 201

    create_customer = sent(stripe_http)[0]
    assert create_customer.params["name"] == "Ada Lovelace"
    assert create_customer.params["email"] == "ada@example.com"


def test_a_customer_stripe_refused_can_buy_once_its_details_are_corrected(
    client: FlaskClient, db_session: Session, stripe_http: responses.RequestsMock, stub: StripeStub
) -> None:
    external_id = unique("cust")
    customer_body = {"customer": {"external_id": external_id, "currency": "USD"}}
    post(client, "/customers", {"customer": {**customer_body["customer"], "email": "a@b.co"}})
    post(
        client,
        "/subscriptions",
        {
            "subscription": {
                "external_id": unique("sub"),
                "external_customer_id": external_id,
                "plan_code": "pro",
            }
        },
    )
    wallet_id = create_wallet(client, external_id)["wallet"]["id"]
    stub.fail_next("POST", "/v1/customers", status=400, code="email_invalid", after=False)
    refused = top_up(client, wallet_id, paid_credits="10")
    assert_error(refused, 422, "payment_provider_rejected")

    post(client, "/customers", {"customer": {**customer_body["customer"], "email": "ok@b.co"}})
    response = top_up(client, wallet_id, paid_credits="10")

    assert response.status_code == 201, response.json
    keys = [r.headers["Idempotency-Key"] for r in sent(stripe_http) if r.path == "/v1/customers"]
    assert len(set(keys)) == 2  # new details, new key: the refusal is not replayed


def test_paid_and_granted_credits_in_one_request(
    client: FlaskClient, stripe_http: responses.RequestsMock
) -> None:
    customer = subscribed_customer(client)

    response = post_wallet(client, customer, paid_credits="50", granted_credits="5")

    assert response.status_code == 201, response.json
    purchased, granted = response.json["wallet_transactions"]
    assert (purchased["transaction_status"], purchased["status"]) == ("purchased", "pending")
    assert invoice_block(purchased)["status"] == "open"
    assert (granted["transaction_status"], granted["status"]) == ("granted", "settled")
    assert granted["invoice"] is None
    assert response.json["wallet"]["credits_balance"] == "5.00000"


# --- taxes and collection ----------------------------------------------------------------


@pytest.mark.parametrize("settings_overrides", [{"STRIPE_TAX_MODE": "automatic"}])
def test_stripe_tax_mode_enables_automatic_tax(
    client: FlaskClient, stripe_http: responses.RequestsMock, settings_overrides: dict[str, Any]
) -> None:
    customer = subscribed_customer(client)

    response = post_wallet(client, customer, rate_amount="2.00", paid_credits="10")

    assert response.status_code == 201, response.json
    calls = {(r.method, r.path): r for r in sent(stripe_http)}
    assert calls[INVOICES].params["automatic_tax[enabled]"] == "true"
    assert not any(key.startswith("default_tax_rates") for key in calls[INVOICES].params)
    # Stripe Tax adds tax on top of the credits' price.
    assert calls[ITEMS].params["tax_behavior"] == "exclusive"
    block = invoice_block(response.json["wallet_transactions"][0])
    # The stub's Stripe Tax charges 10 %.
    assert (block["subtotal_cents"], block["tax_cents"], block["total_cents"]) == (2000, 200, 2200)


@pytest.mark.parametrize(
    "settings_overrides",
    [{"STRIPE_TAX_MODE": "rates", "STRIPE_TAX_RATE_IDS": "txr_vat20, txr_state5"}],
)
def test_tax_rate_mode_sets_the_configured_rates(
    client: FlaskClient, stripe_http: responses.RequestsMock, settings_overrides: dict[str, Any]
) -> None:
    customer = subscribed_customer(client)

    response = post_wallet(client, customer, rate_amount="2.00", paid_credits="10")

    assert response.status_code == 201, response.json
    calls = {(r.method, r.path): r for r in sent(stripe_http)}
    params = calls[INVOICES].params
    assert params["default_tax_rates[0]"] == "txr_vat20"
    assert params["default_tax_rates[1]"] == "txr_state5"
    assert "automatic_tax[enabled]" not in params
    assert "tax_behavior" not in calls[ITEMS].params
    block = invoice_block(response.json["wallet_transactions"][0])
    # 20 % and 5 % of 20.00, both on top.
    assert (block["subtotal_cents"], block["tax_cents"], block["total_cents"]) == (2000, 500, 2500)


def test_no_tax_mode_sends_no_tax_parameters(
    client: FlaskClient, stripe_http: responses.RequestsMock
) -> None:
    customer = subscribed_customer(client)

    assert post_wallet(client, customer, paid_credits="10").status_code == 201

    for request in sent(stripe_http):
        assert not any("tax" in key for key in request.params), request.params


@pytest.mark.parametrize(
    "settings_overrides",
    [{"STRIPE_COLLECTION_METHOD": "send_invoice", "STRIPE_DAYS_UNTIL_DUE": 14}],
)
def test_send_invoice_collection_sets_days_until_due(
    client: FlaskClient, stripe_http: responses.RequestsMock, settings_overrides: dict[str, Any]
) -> None:
    customer = subscribed_customer(client)

    response = post_wallet(client, customer, paid_credits="10")

    assert response.status_code == 201, response.json
    invoice_request = next(r for r in sent(stripe_http) if (r.method, r.path) == INVOICES)
    assert invoice_request.params["collection_method"] == "send_invoice"
    assert invoice_request.params["days_until_due"] == "14"


def test_charge_automatically_sends_no_due_date(
    client: FlaskClient, stripe_http: responses.RequestsMock
) -> None:
    customer = subscribed_customer(client)

    assert post_wallet(client, customer, paid_credits="10").status_code == 201

    invoice_request = next(r for r in sent(stripe_http) if (r.method, r.path) == INVOICES)
    assert invoice_request.params["collection_method"] == "charge_automatically"
    assert "days_until_due" not in invoice_request.params


# --- refusals before anything is stored ---------------------------------------------------

COUPON_FIELDS = ["coupon", "coupons", "coupon_code", "discount", "discounts", "promotion_code"]


@pytest.mark.parametrize("field", COUPON_FIELDS)
@pytest.mark.parametrize("where", ["wallet", "root"])
def test_coupons_on_wallet_creation_are_refused_without_calling_stripe(
    client: FlaskClient,
    db_session: Session,
    stripe_http: responses.RequestsMock,
    field: str,
    where: str,
) -> None:
    customer = subscribed_customer(client)
    body = wallet_body(customer, paid_credits="10")
    (body["wallet"] if where == "wallet" else body)[field] = "WELCOME50"

    response = post(client, "/wallets", body)

    result = assert_error(response, 422, "coupons_not_applicable")
    assert field in result["error_details"]
    assert len(stripe_http.calls) == 0
    assert count(db_session, Wallet) == 0
    assert count(db_session, Purchase) == 0


@pytest.mark.parametrize("field", COUPON_FIELDS)
def test_coupons_on_top_up_are_refused_without_calling_stripe(
    client: FlaskClient, db_session: Session, stripe_http: responses.RequestsMock, field: str
) -> None:
    wallet_id = create_wallet(client, subscribed_customer(client))["wallet"]["id"]
    body = {"wallet_transaction": {"wallet_id": wallet_id, "paid_credits": "10", field: "X"}}

    response = post(client, "/wallet_transactions", body)

    assert_error(response, 422, "coupons_not_applicable")
    assert len(stripe_http.calls) == 0
    assert count(db_session, WalletTransaction) == 0
    assert count(db_session, Purchase) == 0


class Amount(NamedTuple):
    currency: str
    rate: str
    paid: str
    code: str


AMOUNT_CASES = [
    Amount("USD", "1.00", "0.001", "amount_too_small"),  # 0.1 cent rounds to nothing
    Amount("USD", "1.00", "0.49", "amount_too_small"),  # below Stripe's 0.50 USD
    Amount("JPY", "1", "49", "amount_too_small"),  # below Stripe's 50 JPY
    Amount("GBP", "0.29", "1", "amount_too_small"),  # below Stripe's 0.30 GBP
    Amount("USD", "1000", "1000", "amount_too_large"),  # 1,000,000.00 USD: nine digits
    Amount("JPY", "1000", "100000", "amount_too_large"),  # 100,000,000 JPY
    Amount("KWD", "1.2345", "1", "validation_errors"),  # 1.235 KWD: cards take 0.010 steps
]


@pytest.mark.parametrize("case", AMOUNT_CASES, ids=str)
def test_amounts_stripe_cannot_charge_are_refused_before_anything_is_stored(
    client: FlaskClient,
    db_session: Session,
    stripe_http: responses.RequestsMock,
    case: Amount,
) -> None:
    currency, rate, paid, code = case
    customer = subscribed_customer(client, currency=currency)

    response = post_wallet(client, customer, rate_amount=rate, paid_credits=paid)

    result = assert_error(response, 422, code)
    assert "paid_credits" in result["error_details"]
    assert len(stripe_http.calls) == 0
    assert count(db_session, Wallet) == 0
    assert count(db_session, Purchase) == 0


def test_the_smallest_and_largest_chargeable_amounts_are_accepted(
    client: FlaskClient, stripe_http: responses.RequestsMock
) -> None:
    small = post_wallet(client, subscribed_customer(client), paid_credits="0.5")
    large = post_wallet(
        client, subscribed_customer(client), rate_amount="999999.99", paid_credits="1"
    )

    assert small.status_code == 201, small.json
    assert invoice_block(small.json["wallet_transactions"][0])["subtotal_cents"] == 50
    assert large.status_code == 201, large.json
    assert invoice_block(large.json["wallet_transactions"][0])["subtotal_cents"] == 99_999_999


def test_a_top_up_too_small_leaves_the_wallet_untouched(
    client: FlaskClient, db_session: Session, stripe_http: responses.RequestsMock
) -> None:
    wallet_id = create_wallet(client, subscribed_customer(client))["wallet"]["id"]

    response = top_up(client, wallet_id, paid_credits="0.2", granted_credits="3")

    assert_error(response, 422, "amount_too_small")
    assert count(db_session, WalletTransaction) == 0  # the granted credits neither
    assert get(client, f"/wallets/{wallet_id}").json["wallet"]["credits_balance"] == "0.00000"


def test_a_three_decimal_currency_is_billed_in_whole_hundredths(
    client: FlaskClient, stripe_http: responses.RequestsMock
) -> None:
    customer = subscribed_customer(client, currency="KWD")

    # 2 x 1.2345 = 2.469 KWD, which no card can pay: refused before anything is made.
    refused = post_wallet(client, customer, rate_amount="1.2345", paid_credits="2")
    body = assert_error(refused, 422, "validation_errors")
    assert body["error_details"] == {"paid_credits": ["must bill a multiple of 0.010 KWD"]}
    assert len(stripe_http.calls) == 0
    # 20 credits bill 24.690 KWD: charged as they are, never rounded.
    response = post_wallet(client, customer, rate_amount="1.2345", paid_credits="20")
    assert response.status_code == 201, response.json
    [line] = [request for request in sent(stripe_http) if request.path == ITEMS[1]]
    assert line.params["amount"] == "24690"
    assert line.params["currency"] == "kwd"


@pytest.mark.parametrize("settings_overrides", [{"STRIPE_SECRET_KEY": ""}])
def test_without_a_stripe_key_paid_credits_name_the_setting(
    client: FlaskClient,
    db_session: Session,
    stripe_http: responses.RequestsMock,
    settings_overrides: dict[str, Any],
) -> None:
    customer = subscribed_customer(client)

    response = post_wallet(client, customer, paid_credits="10", granted_credits="1")

    result = assert_error(response, 503, "payment_provider_unavailable")
    assert "STRIPE_SECRET_KEY" in result["message"]
    assert result["error_details"] == {"setting": "STRIPE_SECRET_KEY"}
    assert len(stripe_http.calls) == 0
    assert count(db_session, Wallet) == 0
    # Granted credits alone need no payment provider.
    assert post_wallet(client, customer, granted_credits="1").status_code == 201


# --- failures at Stripe -----------------------------------------------------------------


class Outage(NamedTuple):
    path: str  # the call that fails
    status: int | None  # its answer (None: the connection drops)
    after: bool  # Stripe did the work before its answer was lost


UNAVAILABLE_CASES = [
    pytest.param(Outage("/v1/customers", 500, False), id="customer-500"),
    pytest.param(Outage("/v1/invoices", None, False), id="invoice-network-error"),
    pytest.param(Outage("/v1/invoices", 503, True), id="invoice-made-answer-lost"),
    pytest.param(Outage("/v1/invoiceitems", 502, False), id="item-502"),
    pytest.param(Outage("/v1/invoiceitems", None, True), id="item-made-connection-dropped"),
    pytest.param(Outage("/v1/invoices/in_", 429, False), id="finalize-rate-limited"),
    pytest.param(Outage("/v1/invoices/in_", 500, True), id="finalized-answer-lost"),
]


@pytest.mark.parametrize("outage", UNAVAILABLE_CASES)
def test_stripe_unavailable_leaves_a_purchase_the_same_request_completes(
    client: FlaskClient,
    db_session: Session,
    stripe_http: responses.RequestsMock,
    stub: StripeStub,
    outage: Outage,
) -> None:
    customer = subscribed_customer(client)
    key = unique("buy")
    stub.fail_next("POST", outage.path, status=outage.status, after=outage.after)

    failed = post_wallet(client, customer, key, paid_credits="20", granted_credits="2")

    result = assert_error(failed, 503, "payment_provider_unavailable")
    assert "same Idempotency-Key" in result["message"]
    purchase = only_purchase(db_session)
    assert purchase.status == "creating"
    assert result["error_details"] == {
        "purchase_id": purchase.id,
        "wallet_id": purchase.wallet_id,
        "wallet_transaction_id": purchase.transaction_id,
    }
    # Committed before Stripe was called: the wallet, the pending entry, the grant.
    assert entry(db_session, purchase.transaction_id).status == "pending"
    wallet = db_session.get(Wallet, purchase.wallet_id, populate_existing=True)
    assert wallet is not None and wallet.credits_balance == Decimal("2")

    retried = post_wallet(client, customer, key, paid_credits="20", granted_credits="2")

    assert retried.status_code == 201, retried.json
    assert retried.json["wallet"]["id"] == purchase.wallet_id
    purchased, granted = retried.json["wallet_transactions"]
    assert purchased["id"] == purchase.transaction_id
    assert granted["transaction_status"] == "granted"
    assert invoice_block(purchased)["status"] == "open"
    # Exactly one invoice with exactly one line at Stripe, whatever failed where.
    [invoice] = stub.invoices_with(gateway_purchase_id=purchase.id)
    assert len(invoice["lines"]["data"]) == 1
    assert invoice["status"] == "open"
    assert len(stub.items) == 1
    assert len(stub.customers) == 1
    assert only_purchase(db_session).provider_invoice_id == invoice["id"]
    assert count(db_session, Wallet) == 1
    # Now the answer is kept: a third attempt replays it.
    replayed = post_wallet(client, customer, key, paid_credits="20", granted_credits="2")
    assert replayed.get_data() == retried.get_data()


def test_a_top_up_interrupted_by_stripe_is_completed_by_its_retry(
    client: FlaskClient, db_session: Session, stripe_http: responses.RequestsMock, stub: StripeStub
) -> None:
    wallet_id = create_wallet(client, subscribed_customer(client))["wallet"]["id"]
    key = unique("top-up")
    stub.fail_next("POST", "/v1/invoiceitems", status=None)

    assert_error(
        top_up(client, wallet_id, key, paid_credits="7"), 503, "payment_provider_unavailable"
    )
    retried = top_up(client, wallet_id, key, paid_credits="7")

    assert retried.status_code == 201, retried.json
    [transaction] = retried.json["wallet_transactions"]
    assert transaction["id"] == only_purchase(db_session).transaction_id
    assert invoice_block(transaction)["status"] == "open"
    assert len(stub.invoices) == 1 and len(stub.items) == 1


def test_a_retry_with_another_body_does_not_resume_the_purchase(
    client: FlaskClient, db_session: Session, stripe_http: responses.RequestsMock, stub: StripeStub
) -> None:
    customer = subscribed_customer(client)
    key = unique("buy")
    stub.fail_next("POST", "/v1/invoices", status=500)
    assert post_wallet(client, customer, key, paid_credits="20").status_code == 503

    other = post_wallet(client, customer, key, paid_credits="30")

    assert_error(other, 422, "idempotency_key_reused")
    assert only_purchase(db_session).credit_amount == Decimal("20")
    assert len(stub.invoices) == 0


def expire_key(session: Session, key: str) -> None:
    """As if IDEMPOTENCY_KEY_TTL_HOURS had passed since `key` was used: the key and the
    claim its purchases carry end together."""
    past = utcnow() - timedelta(seconds=1)
    session.execute(update(IdempotencyKey).where(IdempotencyKey.key == key).values(expires_at=past))
    session.execute(update(Purchase).values(claimable_until=past))
    session.commit()


@pytest.mark.parametrize("first_status", [201, 503])
def test_an_expired_key_does_not_bind_the_purchase_of_its_earlier_use(
    client: FlaskClient,
    db_session: Session,
    stripe_http: responses.RequestsMock,
    stub: StripeStub,
    first_status: int,
) -> None:
    wallet_id = create_wallet(client, subscribed_customer(client))["wallet"]["id"]
    key = unique("top-up")
    if first_status == 503:
        stub.fail_next("POST", "/v1/invoices", status=500)
    first = top_up(client, wallet_id, key, paid_credits="7")
    assert first.status_code == first_status
    earlier = only_purchase(db_session)
    expire_key(db_session, key)

    # A day later the key counts as unused: another body is a new request, and so is
    # the same body (its answer is not the old purchase, which is not resumed).
    other = top_up(client, wallet_id, key, paid_credits="9")
    same = top_up(client, wallet_id, unique("other"), paid_credits="7")
    expire_key(db_session, key)
    again = top_up(client, wallet_id, key, paid_credits="7")

    for response in (other, same, again):
        assert response.status_code == 201, response.json
        assert "Idempotent-Replayed" not in response.headers
    [made] = other.json["wallet_transactions"]
    [made_again] = again.json["wallet_transactions"]
    assert made["credit_amount"] == "9.00000"
    assert earlier.transaction_id not in (made["id"], made_again["id"])
    stored = db_session.get_one(Purchase, earlier.id, populate_existing=True)
    assert stored.status == ("open" if first_status == 201 else "creating")
    if first_status == 503:  # not resumed by the later use of its key
        assert stub.invoices_with(gateway_purchase_id=earlier.id) == []
    assert db_session.scalar(select(func.count()).select_from(Purchase)) == 4


def test_without_an_idempotency_key_the_503_says_what_was_kept(
    client: FlaskClient, db_session: Session, stripe_http: responses.RequestsMock, stub: StripeStub
) -> None:
    customer = subscribed_customer(client)
    stub.fail_next("POST", "/v1/invoices", status=500)

    failed = post_wallet(client, customer, paid_credits="20")

    result = assert_error(failed, 503, "payment_provider_unavailable")
    wallet_id = result["error_details"]["wallet_id"]
    assert get(client, f"/wallets/{wallet_id}").status_code == 200
    assert_error(post_wallet(client, customer, paid_credits="20"), 422, "wallet_already_exists")


class Rejection(NamedTuple):
    path: str
    status: int
    error_type: str
    code: str | None


@pytest.mark.parametrize(
    "rejection",
    [
        Rejection("/v1/invoices", 400, "invalid_request_error", "parameter_invalid_empty"),
        Rejection("/v1/invoiceitems", 400, "invalid_request_error", "amount_too_large"),
        Rejection(
            "/v1/invoices/in_", 400, "invalid_request_error", "customer_tax_location_invalid"
        ),
        Rejection("/v1/invoices", 400, "idempotency_error", None),
        Rejection("/v1/customers", 402, "card_error", "card_declined"),
        Rejection("/v1/invoices", 404, "invalid_request_error", "resource_missing"),
    ],
    ids=str,
)
def test_a_stripe_rejection_fails_the_purchase_with_a_clear_error(
    client: FlaskClient,
    db_session: Session,
    stripe_http: responses.RequestsMock,
    stub: StripeStub,
    rejection: Rejection,
) -> None:
    path, status, error_type, code = rejection
    wallet_id = create_wallet(client, subscribed_customer(client), granted_credits="4")["wallet"][
        "id"
    ]
    stub.fail_next("POST", path, status=status, type_=error_type, code=code, message="no")
    key = unique("top-up")

    response = top_up(client, wallet_id, key, paid_credits="10")

    result = assert_error(response, 422, "payment_provider_rejected")
    assert "Stripe" in result["message"]
    purchase = only_purchase(db_session)
    assert result["error_details"]["purchase_id"] == purchase.id
    assert purchase.status == "failed"
    assert purchase.failure_code
    failed_entry = entry(db_session, purchase.transaction_id)
    assert failed_entry.status == "failed" and failed_entry.failed_at is not None
    assert get(client, f"/wallets/{wallet_id}").json["wallet"]["credits_balance"] == "4.00000"
    # A rejection is the request's answer: repeating it replays the refusal.
    assert top_up(client, wallet_id, key, paid_credits="10").get_data() == response.get_data()


def test_stripe_error_codes_are_kept_on_the_failed_purchase(
    client: FlaskClient, db_session: Session, stripe_http: responses.RequestsMock, stub: StripeStub
) -> None:
    wallet_id = create_wallet(client, subscribed_customer(client))["wallet"]["id"]
    stub.fail_next(
        "POST",
        "/v1/customers",
        status=400,
        type_="invalid_request_error",
        code="email_invalid",
        message="Invalid email address: x",
    )

    response = top_up(client, wallet_id, paid_credits="10")

    result = assert_error(response, 422, "payment_provider_rejected")
    assert result["error_details"]["provider_code"] == "email_invalid"
    assert "Invalid email address" in result["message"]
    assert only_purchase(db_session).failure_code == "email_invalid"


@pytest.mark.parametrize("status", [401, 403])
def test_a_refused_stripe_key_is_unavailable_not_a_failed_purchase(
    client: FlaskClient,
    db_session: Session,
    stripe_http: responses.RequestsMock,
    stub: StripeStub,
    status: int,
) -> None:
    wallet_id = create_wallet(client, subscribed_customer(client))["wallet"]["id"]
    stub.fail_next("POST", "/v1/customers", status=status, type_="invalid_request_error")

    response = top_up(client, wallet_id, paid_credits="10")

    result = assert_error(response, 503, "payment_provider_unavailable")
    assert "STRIPE_SECRET_KEY" in result["message"]
    assert SECRET_KEY not in response.get_data(as_text=True)
    assert only_purchase(db_session).status == "creating"


def test_no_secret_or_stripe_internals_reach_the_caller(
    client: FlaskClient, stripe_http: responses.RequestsMock, stub: StripeStub
) -> None:
    wallet_id = create_wallet(client, subscribed_customer(client))["wallet"]["id"]
    stub.fail_next("POST", "/v1/invoices", status=500, message=f"boom {SECRET_KEY}")

    response = top_up(client, wallet_id, paid_credits="10")

    text = response.get_data(as_text=True)
    assert response.status_code == 503
    assert SECRET_KEY not in text and "Traceback" not in text
