"""The Stripe provider on its own: client configuration, every method, error mapping.

Stripe is answered by the stub behind `responses` (or over real HTTP where a real
socket matters, e.g. the timeout); assertions are on what went over the wire.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import subprocess
import sys
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

import pytest
import responses
from flask import Flask
from prometheus_client import REGISTRY

from gateway.providers import build_provider, get_provider
from gateway.providers.base import (
    CustomerRequest,
    ProviderNotConfigured,
    ProviderRejected,
    ProviderUnavailable,
    PurchaseInvoiceRequest,
)
from gateway.providers.stripe.client import StripeProvider, build_client
from gateway.providers.stripe.objects import invoice_snapshot
from gateway.providers.stripe.sandbox import StripeStub
from gateway.settings import PROJECT_ROOT, Settings, load_config
from tests.support.config import TEST_SETTINGS
from tests.support.stripe import SECRET_KEY, STRIPE_VERSION, sent

BASE = "https://api.stripe.com"


def settings_with(**overrides: Any) -> Settings:
    return load_config(
        Flask("provider-test"), {**TEST_SETTINGS, "DATABASE_URL": "sqlite://", **overrides}
    )


def provider_with(**overrides: Any) -> StripeProvider:
    provider = build_provider(settings_with(**overrides))
    assert isinstance(provider, StripeProvider)
    return provider


@pytest.fixture
def provider() -> StripeProvider:
    return provider_with()


_serial = iter(range(1, 1_000_000))


def purchase_request(
    provider: StripeProvider, *, amount_cents: int = 1500, currency: str = "USD"
) -> PurchaseInvoiceRequest:
    number = next(_serial)
    customer = provider.ensure_customer(
        CustomerRequest(f"cus_ours{number}", f"ext-{number}", None, None)
    )
    return PurchaseInvoiceRequest(
        purchase_id=f"pur_{number:06d}",
        wallet_id=f"wal_{number:06d}",
        transaction_id=f"wtx_{number:06d}",
        provider_customer_id=customer,
        currency=currency,
        amount_cents=amount_cents,
        credits=Decimal(amount_cents),
        rate_amount=Decimal("0.01"),
        description=f"{amount_cents} prepaid credits at 0.01 {currency} each",
    )


def stub_invoice_without_our_metadata(stub: StripeStub, customer: str) -> str:
    """An invoice the billing core made on the same account (not a purchase)."""
    headers = {"Authorization": f"Bearer {SECRET_KEY}"}
    status, _headers, body = stub.handle(
        "POST", "/v1/invoices", "", headers, urlencode({"customer": customer}).encode()
    )
    assert status == 200
    return str(json.loads(body)["id"])


# --- the client and the factory ---------------------------------------------------------


def test_get_provider_needs_a_secret_key() -> None:
    app = Flask("no-key")
    load_config(app, {**TEST_SETTINGS, "DATABASE_URL": "sqlite://", "STRIPE_SECRET_KEY": ""})

    with pytest.raises(ProviderNotConfigured) as raised:
        get_provider(app)

    assert raised.value.setting == "STRIPE_SECRET_KEY"
    assert "STRIPE_SECRET_KEY" in str(raised.value)


def test_get_provider_builds_one_provider_per_app() -> None:
    first_app, second_app = Flask("one"), Flask("two")
    for app in (first_app, second_app):
        load_config(app, {**TEST_SETTINGS, "DATABASE_URL": "sqlite://"})

    assert get_provider(first_app) is get_provider(first_app)
    assert get_provider(first_app) is not get_provider(second_app)
    with first_app.app_context():
        assert get_provider() is get_provider(first_app)


def test_the_api_base_points_every_stripe_address_at_the_test_server(stub: StripeStub) -> None:
    base = "http://stripe.test:12111"
    client = build_client(settings_with(STRIPE_API_BASE=f"{base}/"))
    addresses = client._requestor.base_addresses  # what every call is sent to
    assert addresses == {"api": base, "connect": base, "files": base, "meter_events": base}

    provider = provider_with(STRIPE_API_BASE=base)
    with responses.RequestsMock(assert_all_requests_are_fired=False) as rsps:
        stub.register(rsps, base=base)
        provider.ensure_customer(CustomerRequest("cus_1", "ext-1", None, None))
        assert rsps.calls[0].request.url == f"{base}/v1/customers"


def test_without_an_api_base_stripe_itself_is_called() -> None:
    addresses = build_client(settings_with())._requestor.base_addresses
    assert addresses["api"] == "https://api.stripe.com"
    assert addresses["files"] == "https://files.stripe.com"


def test_network_retries_follow_the_configuration(
    stripe_http: responses.RequestsMock, stub: StripeStub
) -> None:
    provider = provider_with(STRIPE_MAX_NETWORK_RETRIES=2)
    request = purchase_request(provider)
    stub.fail_next("POST", "/v1/invoices", status=500)

    draft = provider.create_purchase_draft(request)

    attempts = [r for r in sent(stripe_http) if r.path == "/v1/invoices"]
    assert len(attempts) == 2  # the library retried, with the same key
    assert {r.headers["Idempotency-Key"] for r in attempts} == {f"{request.purchase_id}:invoice"}
    assert draft.status == "draft"
    assert len(stub.invoices) == 1


def test_with_no_retries_one_failure_is_final(
    stripe_http: responses.RequestsMock, stub: StripeStub, provider: StripeProvider
) -> None:
    request = purchase_request(provider)
    stub.fail_next("POST", "/v1/invoices", status=500)

    with pytest.raises(ProviderUnavailable):
        provider.create_purchase_draft(request)

    assert len([r for r in sent(stripe_http) if r.path == "/v1/invoices"]) == 1


# Nothing listens on the discard port: a call sent through this proxy cannot connect.
DEAD_PROXY = "http://127.0.0.1:9"


@pytest.fixture
def no_proxy_in_environment(monkeypatch: pytest.MonkeyPatch) -> pytest.MonkeyPatch:
    for name in ("HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY", "NO_PROXY"):
        monkeypatch.delenv(name, raising=False)
        monkeypatch.delenv(name.lower(), raising=False)
    return monkeypatch


def test_a_proxy_named_by_the_environment_is_used(
    no_proxy_in_environment: pytest.MonkeyPatch,
) -> None:
    no_proxy_in_environment.setenv("HTTP_PROXY", DEAD_PROXY)
    with StripeStub() as server:
        provider = provider_with(STRIPE_API_BASE=server.url)

        with pytest.raises(ProviderUnavailable, match="could not be reached"):
            provider.ensure_customer(CustomerRequest("cus_1", "ext-1", None, None))

        assert server.customers == {}  # the call went to the proxy, not to Stripe


def test_the_environment_is_read_once_when_the_client_is_built_not_per_call(
    no_proxy_in_environment: pytest.MonkeyPatch,
) -> None:
    with StripeStub() as server:
        provider = provider_with(STRIPE_API_BASE=server.url)
        # Read per call (requests' default), this would send the call to the proxy.
        no_proxy_in_environment.setenv("HTTP_PROXY", DEAD_PROXY)

        created = provider.ensure_customer(CustomerRequest("cus_1", "ext-1", None, None))

        assert created in server.customers


def test_stripe_pythons_per_call_info_lines_are_quiet_unless_configured() -> None:
    stripe_logger = logging.getLogger("stripe")
    configured = stripe_logger.level
    try:
        stripe_logger.setLevel(logging.NOTSET)
        build_client(settings_with())
        assert stripe_logger.level == logging.WARNING

        stripe_logger.setLevel(logging.DEBUG)  # an operator's choice is kept
        build_client(settings_with())
        assert stripe_logger.level == logging.DEBUG
    finally:
        stripe_logger.setLevel(configured)


@pytest.mark.parametrize("answer", [["not", "an", "object"], {"object": "customer"}])
def test_an_answer_stripe_cannot_have_meant_is_unavailable(
    provider: StripeProvider, answer: Any
) -> None:
    with responses.RequestsMock() as rsps:
        rsps.add("POST", f"{BASE}/v1/customers", json=answer)

        with pytest.raises(ProviderUnavailable):
            provider.ensure_customer(CustomerRequest("cus_1", "ext-1", None, None))


def test_a_stripe_that_does_not_answer_in_time_is_unavailable() -> None:
    with StripeStub(latency=1.5) as slow:
        provider = provider_with(STRIPE_API_BASE=slow.url, STRIPE_TIMEOUT_SECONDS=1)
        with pytest.raises(ProviderUnavailable, match="could not be reached"):
            provider.retrieve_invoice("in_anything")


# --- errors ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "case",
    [
        (None, "api_error", ProviderUnavailable),  # connection dropped
        (500, "api_error", ProviderUnavailable),
        (502, "api_error", ProviderUnavailable),
        (503, "api_error", ProviderUnavailable),
        (409, "invalid_request_error", ProviderUnavailable),  # key in use concurrently
        (429, "invalid_request_error", ProviderUnavailable),
        (401, "invalid_request_error", ProviderUnavailable),  # our key: configuration
        (403, "invalid_request_error", ProviderUnavailable),
        (400, "invalid_request_error", ProviderRejected),
        (400, "idempotency_error", ProviderRejected),
        (402, "card_error", ProviderRejected),
        (404, "invalid_request_error", ProviderRejected),
    ],
)
def test_stripe_errors_cross_the_boundary_as_unavailable_or_rejected(
    stripe_http: responses.RequestsMock,
    stub: StripeStub,
    provider: StripeProvider,
    case: tuple[int | None, str, type[Exception]],
) -> None:
    status, error_type, expected = case
    request = purchase_request(provider)
    stub.fail_next("POST", "/v1/invoices", status=status, type_=error_type, code="some_code")

    with pytest.raises(expected) as raised:
        provider.create_purchase_draft(request)

    if isinstance(raised.value, ProviderRejected):
        assert raised.value.status == status
        # Stripe's code, or the error type when it has none.
        assert raised.value.code == (
            "some_code" if error_type != "idempotency_error" else error_type
        )


def _provider_calls(operation: str, outcome: str) -> float:
    value = REGISTRY.get_sample_value(
        "gateway_provider_calls_total", {"operation": operation, "outcome": outcome}
    )
    return value or 0.0


def test_each_call_to_stripe_is_counted_by_its_outcome(
    stripe_http: responses.RequestsMock, stub: StripeStub, provider: StripeProvider
) -> None:
    request = purchase_request(provider)
    ok_before = _provider_calls("create the invoice", "ok")
    rejected_before = _provider_calls("create the invoice", "rejected")
    unavailable_before = _provider_calls("create the invoice", "unavailable")

    provider.create_purchase_draft(request)
    stub.fail_next("POST", "/v1/invoices", status=400, type_="invalid_request_error")
    with pytest.raises(ProviderRejected):
        provider.create_purchase_draft(purchase_request(provider))
    stub.fail_next("POST", "/v1/invoices", status=500, type_="api_error")
    with pytest.raises(ProviderUnavailable):
        provider.create_purchase_draft(purchase_request(provider))

    assert _provider_calls("create the invoice", "ok") == ok_before + 1
    assert _provider_calls("create the invoice", "rejected") == rejected_before + 1
    assert _provider_calls("create the invoice", "unavailable") == unavailable_before + 1


# --- the purchase invoice, step by step --------------------------------------------------


def test_create_purchase_invoice_makes_draft_line_and_finalizes(
    stripe_http: responses.RequestsMock, stub: StripeStub, provider: StripeProvider
) -> None:
    request = purchase_request(provider, amount_cents=1234, currency="EUR")
    stripe_http.calls.reset()

    invoice = provider.create_purchase_invoice(request)

    assert [(r.method, r.path) for r in sent(stripe_http)] == [
        ("POST", "/v1/invoices"),
        ("POST", "/v1/invoiceitems"),
        ("POST", f"/v1/invoices/{invoice.id}/finalize"),
    ]
    for call in sent(stripe_http):
        assert call.headers["Stripe-Version"] == STRIPE_VERSION
    assert invoice.status == "open"
    assert invoice.currency == "EUR"
    assert (invoice.subtotal_cents, invoice.tax_cents, invoice.total_cents) == (1234, 0, 1234)
    assert invoice.purchase_id == request.purchase_id
    assert invoice.metadata == {
        "gateway_purchase_id": request.purchase_id,
        "gateway_wallet_id": request.wallet_id,
        "gateway_transaction_id": request.transaction_id,
    }
    assert invoice.has_discount is False
    assert invoice.livemode is False
    assert invoice.hosted_invoice_url is not None


def test_finishing_an_invoice_that_already_has_its_line_only_finalizes_it(
    stripe_http: responses.RequestsMock, stub: StripeStub, provider: StripeProvider
) -> None:
    request = purchase_request(provider)
    draft = provider.create_purchase_draft(request)
    provider.finish_purchase_invoice(request, draft)  # line added, then finalized
    # Seen again as a draft with its line (as after a crash between the two steps):
    with_line = provider.retrieve_invoice(draft.id)
    stripe_http.calls.reset()

    assert provider.finish_purchase_invoice(request, with_line) == with_line  # open: as is
    assert sent(stripe_http) == []


def test_a_draft_billing_something_else_is_not_finalized(
    stripe_http: responses.RequestsMock, stub: StripeStub, provider: StripeProvider
) -> None:
    request = purchase_request(provider, amount_cents=1500)
    draft = provider.create_purchase_draft(request)
    tampered = dataclasses.replace(draft, subtotal_cents=999)

    with pytest.raises(ProviderRejected, match="changed outside"):
        provider.finish_purchase_invoice(request, tampered)

    assert stub.invoices[draft.id]["status"] == "draft"


def test_repeating_every_step_makes_no_second_invoice_or_line(
    stripe_http: responses.RequestsMock, stub: StripeStub, provider: StripeProvider
) -> None:
    request = purchase_request(provider)
    first_draft = provider.create_purchase_draft(request)
    provider._add_line(request, first_draft.id)

    second_draft = provider.create_purchase_draft(request)
    provider._add_line(request, second_draft.id)
    invoice = provider.finish_purchase_invoice(request, provider.retrieve_invoice(first_draft.id))

    assert second_draft.id == first_draft.id
    assert len(stub.invoices) == 1 and len(stub.items) == 1
    assert invoice.subtotal_cents == request.amount_cents
    replays = [c for c in stripe_http.calls if c.response.headers.get("Idempotent-Replayed")]
    assert len(replays) == 2


# --- reading, voiding, finding -----------------------------------------------------------


def test_retrieve_invoice_reports_amounts_in_minor_units(
    stripe_http: responses.RequestsMock, stub: StripeStub
) -> None:
    provider = provider_with(STRIPE_TAX_MODE="rates", STRIPE_TAX_RATE_IDS="txr_vat20")
    invoice = provider.create_purchase_invoice(purchase_request(provider, amount_cents=1000))
    stripe_http.calls.reset()

    read = provider.retrieve_invoice(invoice.id)

    [request] = sent(stripe_http)
    assert (request.method, request.path, request.form) == ("GET", f"/v1/invoices/{invoice.id}", [])
    assert "Idempotency-Key" not in request.headers
    assert (read.subtotal_cents, read.tax_cents, read.total_cents) == (1000, 200, 1200)
    assert read.amount_paid_cents == 0
    assert read.created_at is not None and read.created_at.tzinfo is UTC
    stub.mark_paid(invoice.id)
    assert provider.retrieve_invoice(invoice.id).amount_paid_cents == 1200


def test_void_invoice_voids_an_open_invoice_once(
    stripe_http: responses.RequestsMock, stub: StripeStub, provider: StripeProvider
) -> None:
    invoice = provider.create_purchase_invoice(purchase_request(provider))
    stripe_http.calls.reset()

    voided = provider.void_invoice(invoice.id)
    again = provider.void_invoice(invoice.id)

    assert voided.status == "void" and again.status == "void"
    void_calls = [r for r in sent(stripe_http) if r.path.endswith("/void")]
    assert void_calls[0].headers["Idempotency-Key"] == f"{invoice.id}:void"
    assert void_calls[0].form == []


def test_void_invoice_leaves_a_paid_invoice_paid(
    stripe_http: responses.RequestsMock, stub: StripeStub, provider: StripeProvider
) -> None:
    invoice = provider.create_purchase_invoice(purchase_request(provider))
    stub.mark_paid(invoice.id)

    assert provider.void_invoice(invoice.id).status == "paid"
    assert stub.invoices[invoice.id]["status"] == "paid"


def test_a_void_refused_while_the_invoice_was_a_draft_does_not_block_a_later_void(
    stripe_http: responses.RequestsMock, stub: StripeStub, provider: StripeProvider
) -> None:
    request = purchase_request(provider)
    draft = provider.create_purchase_draft(request)
    assert provider.void_invoice(draft.id).status == "draft"  # refused: drafts are not voided
    provider.finish_purchase_invoice(request, draft)

    assert provider.void_invoice(draft.id).status == "void"

    keys = [r.headers["Idempotency-Key"] for r in sent(stripe_http) if r.path.endswith("/void")]
    assert keys == [f"{draft.id}:void", f"{draft.id}:void", f"{draft.id}:void-open"]


def test_void_of_an_unknown_invoice_is_rejected(
    stripe_http: responses.RequestsMock, provider: StripeProvider
) -> None:
    with pytest.raises(ProviderRejected) as raised:
        provider.void_invoice("in_missing")
    assert raised.value.status == 404


def test_find_purchase_invoice_searches_our_metadata(
    stripe_http: responses.RequestsMock, stub: StripeStub, provider: StripeProvider
) -> None:
    request = purchase_request(provider)
    invoice = provider.create_purchase_invoice(request)
    provider.create_purchase_invoice(purchase_request(provider))  # someone else's
    stripe_http.calls.reset()

    found = provider.find_purchase_invoice(request.purchase_id)

    [search] = sent(stripe_http)
    assert (search.method, search.path) == ("GET", "/v1/invoices/search")
    assert search.params == {
        "query": f"metadata['gateway_purchase_id']:'{request.purchase_id}'",
        "limit": "10",
    }
    assert found is not None and found.id == invoice.id
    assert provider.find_purchase_invoice("pur_unknown") is None


def test_find_purchase_invoice_quotes_the_id(
    stripe_http: responses.RequestsMock, provider: StripeProvider
) -> None:
    assert provider.find_purchase_invoice("pur_x' OR status:'paid") is None
    search = sent(stripe_http)[-1]
    assert search.params["query"] == "metadata['gateway_purchase_id']:'pur_x\\' OR status:\\'paid'"


def test_find_purchase_invoice_misses_what_search_has_not_indexed_yet(
    stripe_http: responses.RequestsMock, stub: StripeStub, provider: StripeProvider
) -> None:
    stub.search_delay = 60.0  # Stripe: "searchable in under a minute"
    request = purchase_request(provider)
    provider.create_purchase_invoice(request)

    assert provider.find_purchase_invoice(request.purchase_id) is None


def test_iter_purchase_invoices_reads_every_page_and_skips_other_invoices(
    stripe_http: responses.RequestsMock, stub: StripeStub, provider: StripeProvider
) -> None:
    request = purchase_request(provider)
    other = stub_invoice_without_our_metadata(stub, request.provider_customer_id)
    ours = [provider.create_purchase_draft(request)]
    for _ in range(204):
        ours.append(provider.create_purchase_draft(purchase_request(provider)))
    stripe_http.calls.reset()

    listed = list(provider.iter_purchase_invoices())

    assert [snap.id for snap in listed] == [snap.id for snap in reversed(ours)]  # newest first
    assert other not in {snap.id for snap in listed}
    pages = sent(stripe_http)
    assert [(r.method, r.path) for r in pages] == [("GET", "/v1/invoices")] * 3
    assert pages[0].params == {"limit": "100"}
    assert pages[1].params["starting_after"] == listed[99].id
    assert pages[2].params["starting_after"] == listed[199].id


def test_iter_purchase_invoices_filters_by_creation_time_and_status(
    stripe_http: responses.RequestsMock, stub: StripeStub, provider: StripeProvider
) -> None:
    paid = provider.create_purchase_invoice(purchase_request(provider))
    provider.create_purchase_invoice(purchase_request(provider))  # stays open
    stub.mark_paid(paid.id)
    since = datetime.now(UTC) - timedelta(hours=1)
    stripe_http.calls.reset()

    listed = list(provider.iter_purchase_invoices(created_since=since, status="paid"))

    assert [snap.id for snap in listed] == [paid.id]
    assert sent(stripe_http)[0].params == {
        "limit": "100",
        "created[gte]": str(int(since.timestamp())),
        "status": "paid",
    }
    later = datetime.now(UTC) + timedelta(hours=1)
    assert list(provider.iter_purchase_invoices(created_since=later)) == []
    with pytest.raises(ValueError, match="status"):
        next(provider.iter_purchase_invoices(status="settled"))


def test_iter_invoice_refunds_maps_each_refund_to_the_invoice_its_payment_paid(
    stripe_http: responses.RequestsMock, stub: StripeStub, provider: StripeProvider
) -> None:
    first = provider.create_purchase_invoice(purchase_request(provider))
    second = provider.create_purchase_invoice(purchase_request(provider, currency="EUR"))
    stub.mark_paid(first.id)
    stub.mark_paid(second.id)
    stub.refund(first.id, amount=100)  # a credit note refunds through the payment too
    direct = stub.refund_payment(first.id, amount=200)
    pending = stub.refund_payment(second.id, status="pending")
    # Failed since: listed too (a refund counted when it succeeded gives its credits back).
    failed = stub.refund_payment(second.id, amount=5, status="failed")
    stub.refund_payment_intent("pi_elsewhere", 700)  # pays no invoice
    since = datetime.now(UTC) - timedelta(hours=1)
    stripe_http.calls.reset()

    refunds = list(provider.iter_invoice_refunds(created_since=since))

    assert [(r.refund_id, r.invoice_id, r.amount_cents, r.currency, r.status) for r in refunds][
        :3
    ] == [
        (failed["id"], second.id, 5, "EUR", "failed"),
        (pending["id"], second.id, 1500, "EUR", "pending"),
        (direct["id"], first.id, 200, "USD", "succeeded"),
    ]
    assert [(r.invoice_id, r.amount_cents) for r in refunds[3:]] == [(first.id, 100)]
    assert refunds[0].created_at is not None
    requests = sent(stripe_http)
    assert [(r.method, r.path) for r in requests] == [("GET", "/v1/refunds")] + [
        ("GET", "/v1/invoice_payments")
    ] * 3  # one per refunded payment intent, newest refund first
    assert requests[0].params == {"limit": "100", "created[gte]": str(int(since.timestamp()))}
    looked_up = [r.params for r in requests[1:]]
    assert looked_up == [
        {
            "payment[type]": "payment_intent",
            "payment[payment_intent]": payment_intent,
            "limit": "10",
        }
        for payment_intent in (
            "pi_elsewhere",
            stub.payment_intent_of(second.id),
            stub.payment_intent_of(first.id),
        )
    ]


def test_iter_invoice_refunds_reads_every_page(
    stripe_http: responses.RequestsMock,
    stub: StripeStub,
    provider: StripeProvider,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from gateway.providers.stripe import client

    monkeypatch.setattr(client, "PAGE_SIZE", 2)
    invoice = provider.create_purchase_invoice(purchase_request(provider))
    stub.mark_paid(invoice.id)
    made = [stub.refund_payment(invoice.id, amount=1) for _ in range(5)]
    stripe_http.calls.reset()

    refunds = list(provider.iter_invoice_refunds())

    assert [r.refund_id for r in refunds] == [r["id"] for r in reversed(made)]
    pages = [r for r in sent(stripe_http) if r.path == "/v1/refunds"]
    assert [page.params.get("starting_after") for page in pages] == [
        None,
        refunds[1].refund_id,
        refunds[3].refund_id,
    ]
    assert len(sent(stripe_http)) == 4  # three pages, one invoice-payments lookup


def test_iter_invoice_refunds_maps_stripe_errors(
    stripe_http: responses.RequestsMock, stub: StripeStub, provider: StripeProvider
) -> None:
    invoice = provider.create_purchase_invoice(purchase_request(provider))
    stub.mark_paid(invoice.id)
    stub.refund_payment(invoice.id)
    stub.fail_next("GET", "/v1/invoice_payments", status=400, message="bad")
    with pytest.raises(ProviderRejected, match="look up an invoice payment"):
        list(provider.iter_invoice_refunds())
    stub.fail_next("GET", "/v1/refunds", status=None, times=10)
    with pytest.raises(ProviderUnavailable, match="list refunds"):
        list(provider.iter_invoice_refunds())


def test_amount_limits_are_stripes(provider: StripeProvider) -> None:
    assert provider.minimum_charge_cents("USD") == 50
    assert provider.minimum_charge_cents("jpy") == 50
    assert provider.minimum_charge_cents("GBP") == 30
    assert provider.minimum_charge_cents("HUF") == 17500
    assert provider.maximum_charge_cents("USD") == 99_999_999
    assert provider.maximum_charge_cents("IDR") == 999_999_999_999


# --- the types ---------------------------------------------------------------------------


def test_mypy_refuses_a_misspelled_stripe_parameter(tmp_path: Path) -> None:
    """The provider builds stripe-python's TypedDicts, so a typo is a type error."""
    source = (PROJECT_ROOT / "gateway/providers/stripe/client.py").read_text()
    misspelled = source.replace(
        '"pending_invoice_items_behavior"', '"pending_invoice_item_behavior"'
    )
    assert misspelled != source
    checked = tmp_path / "client_with_typo.py"
    checked.write_text(misspelled)

    result = subprocess.run(  # noqa: S603
        [sys.executable, "-m", "mypy", "--config-file", "pyproject.toml", str(checked)],
        cwd=PROJECT_ROOT,
        capture_output=True,
        text=True,
        check=False,
        timeout=300,
    )

    assert result.returncode == 1, result.stdout + result.stderr
    assert 'Extra key "pending_invoice_item_behavior" for TypedDict "InvoiceCreateParams"' in (
        result.stdout
    )


# --- reading an invoice (API answers and webhook events alike) ---------------------------

INVOICE = {
    "id": "in_1",
    "object": "invoice",
    "status": "paid",
    "currency": "eur",
    "subtotal": 1000,
    "total": 1250,
    "amount_paid": 1250,
    "total_taxes": [{"amount": 200}, {"amount": 50}],
    "discounts": [],
    "total_discount_amounts": [],
    "hosted_invoice_url": "https://invoice.stripe.test/i/in_1",
    "livemode": False,
    "created": 1_700_000_000,
    "metadata": {"gateway_purchase_id": "pur_1"},
}


def test_invoice_snapshot_reads_stripes_json() -> None:
    snap = invoice_snapshot(INVOICE)
    assert (snap.subtotal_cents, snap.tax_cents, snap.total_cents) == (1000, 250, 1250)
    assert (snap.currency, snap.status, snap.amount_paid_cents) == ("EUR", "paid", 1250)
    assert snap.purchase_id == "pur_1"
    assert snap.created_at == datetime.fromtimestamp(1_700_000_000, UTC)
    assert snap.has_discount is False


@pytest.mark.parametrize(
    "change",
    [
        {"discounts": ["di_1"]},
        {"discount": {"id": "di_1"}},
        {"total_discount_amounts": [{"amount": 100, "discount": "di_1"}]},
        {"total_pretax_credit_amounts": [{"amount": 100, "type": "discount"}]},
    ],
)
def test_invoice_snapshot_sees_every_kind_of_discount(change: dict[str, Any]) -> None:
    assert invoice_snapshot({**INVOICE, **change}).has_discount is True


def test_invoice_snapshot_ignores_credit_grants_and_zero_discounts() -> None:
    snap = invoice_snapshot(
        {
            **INVOICE,
            "total_discount_amounts": [{"amount": 0}],
            "total_pretax_credit_amounts": [{"amount": 100, "type": "credit_balance_transaction"}],
        }
    )
    assert snap.has_discount is False


def test_invoice_snapshot_reads_older_tax_fields() -> None:
    without = {key: value for key, value in INVOICE.items() if key != "total_taxes"}
    assert invoice_snapshot({**without, "tax": 80}).tax_cents == 80
    assert invoice_snapshot({**without, "total_excluding_tax": 1100}).tax_cents == 150
    assert invoice_snapshot(without).tax_cents == 0


def test_invoice_snapshot_needs_an_id() -> None:
    with pytest.raises(ValueError, match="without an id"):
        invoice_snapshot({**INVOICE, "id": None})
    assert invoice_snapshot({**INVOICE, "metadata": None}).metadata == {}
