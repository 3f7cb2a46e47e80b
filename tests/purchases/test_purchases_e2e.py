"""Purchases end to end: the service talks to the Stripe stub over real HTTP.

The stub (gateway/providers/stripe/sandbox.py) listens on 127.0.0.1:<free port>; the service is
pointed at it through configuration alone (STRIPE_API_BASE), exactly as a
deployment would be pointed at Stripe.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from decimal import Decimal
from typing import Any

import pytest
import requests
from flask import Flask
from flask.testing import FlaskClient
from sqlalchemy import select
from sqlalchemy.orm import Session
from werkzeug.serving import make_server

from gateway.models import Purchase, WalletTransaction
from gateway.providers.stripe.sandbox import StripeStub
from tests.support.api import create_wallet, get, post, subscribed_customer, unique
from tests.support.config import AUTH
from tests.support.stripe import SECRET_KEY, STRIPE_VERSION
from tests.support.threads import app_session


@pytest.fixture
def settings_overrides(stripe_server: StripeStub) -> dict[str, Any]:
    return {
        "STRIPE_API_BASE": stripe_server.url,
        "STRIPE_TAX_MODE": "rates",
        "STRIPE_TAX_RATE_IDS": "txr_vat20",
        "STRIPE_COLLECTION_METHOD": "send_invoice",
        "STRIPE_DAYS_UNTIL_DUE": 7,
    }


def test_a_purchase_over_http_against_the_stub(
    client: FlaskClient, db_session: Session, stripe_server: StripeStub
) -> None:
    customer = subscribed_customer(client)
    body = {
        "wallet": {
            "external_customer_id": customer,
            "rate_amount": "2.00",
            "paid_credits": "25",
            "granted_credits": "3",
        }
    }

    response = post(client, "/wallets", body, **{"Idempotency-Key": unique("buy")})

    assert response.status_code == 201, response.json
    purchased, granted = response.json["wallet_transactions"]
    invoice = purchased["invoice"]
    assert invoice["status"] == "open"
    # 25 x 2.00 = 50.00 USD, plus 20 % VAT on top.
    assert (invoice["subtotal_cents"], invoice["tax_cents"], invoice["total_cents"]) == (
        5000,
        1000,
        6000,
    )
    assert granted["status"] == "settled"
    assert response.json["wallet"]["credits_balance"] == "3.00000"

    [at_stripe] = stripe_server.invoices_with(gateway_transaction_id=purchased["id"])
    assert at_stripe["id"] == invoice["provider_invoice_id"]
    assert at_stripe["collection_method"] == "send_invoice"
    assert at_stripe["days_until_due"] == 7
    assert at_stripe["currency"] == "usd"
    assert at_stripe["metadata"]["gateway_wallet_id"] == response.json["wallet"]["id"]
    assert [line["amount"] for line in at_stripe["lines"]["data"]] == [5000]
    assert not at_stripe["lines"]["data"][0]["discountable"]
    # What crossed the wire, as the stub received it.
    writes = [r for r in stripe_server.requests if r.method == "POST"]
    assert [r.path for r in writes] == [
        "/v1/customers",
        "/v1/invoices",
        "/v1/invoiceitems",
        f"/v1/invoices/{at_stripe['id']}/finalize",
    ]
    for request in writes:
        assert request.headers["authorization"] == f"Bearer {SECRET_KEY}"
        assert request.headers["stripe-version"] == STRIPE_VERSION
        assert request.headers["idempotency-key"].split(":")[0] in (
            at_stripe["metadata"]["gateway_purchase_id"],
            db_session.execute(select(Purchase.customer_id)).scalar_one(),
        )

    # Paid at Stripe: the balance moves only when the signed webhook says so.
    stripe_server.mark_paid(at_stripe["id"])
    wallet = get(client, f"/wallets/{response.json['wallet']['id']}").json["wallet"]
    assert wallet["credits_balance"] == "3.00000"


def test_an_outage_over_http_is_completed_by_the_retry(
    client: FlaskClient, db_session: Session, stripe_server: StripeStub
) -> None:
    wallet_id = create_wallet(client, subscribed_customer(client))["wallet"]["id"]
    key = unique("top-up")
    body = {"wallet_transaction": {"wallet_id": wallet_id, "paid_credits": "12"}}
    # Stripe made the line, then the connection dropped before its answer arrived.
    stripe_server.fail_next("POST", "/v1/invoiceitems", status=None, after=True)

    failed = post(client, "/wallet_transactions", body, **{"Idempotency-Key": key})
    assert failed.status_code == 503, failed.json
    retried = post(client, "/wallet_transactions", body, **{"Idempotency-Key": key})

    assert retried.status_code == 201, retried.json
    [transaction] = retried.json["wallet_transactions"]
    assert transaction["invoice"]["status"] == "open"
    purchase_id = db_session.execute(select(Purchase.id)).scalar_one()
    [invoice] = stripe_server.invoices_with(gateway_purchase_id=purchase_id)
    assert len(invoice["lines"]["data"]) == 1
    assert len(stripe_server.items) == 1
    # The retry repeated the calls under the same keys: Stripe answered them as the
    # first time (no second invoice or line), then the invoice was read as it is now.
    retry = stripe_server.requests[-4:]
    assert [(r.method, r.path) for r in retry] == [
        ("POST", "/v1/invoices"),
        ("POST", "/v1/invoiceitems"),
        ("POST", f"/v1/invoices/{invoice['id']}/finalize"),
        ("GET", f"/v1/invoices/{invoice['id']}"),
    ]
    first_keys = {
        r.headers["idempotency-key"] for r in stripe_server.requests[:-4] if r.method == "POST"
    }
    assert {r.headers["idempotency-key"] for r in retry[:2]} <= first_keys


# --- the service itself over HTTP, on PostgreSQL with real commits ----------------------


@pytest.fixture
def service_url(committed_app: Flask) -> Iterator[str]:
    server = make_server("127.0.0.1", 0, committed_app, threaded=True)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_port}/api/v1"
    finally:
        server.shutdown()
        server.server_close()


def _call(url: str, body: dict[str, Any], **headers: str) -> requests.Response:
    return requests.post(url, json=body, headers={**AUTH, **headers}, timeout=30)


@pytest.mark.postgres
def test_no_database_lock_is_held_while_stripe_is_waited_on(
    committed_app: Flask, service_url: str, stripe_server: StripeStub
) -> None:
    client = committed_app.test_client()
    wallet_id = create_wallet(client, subscribed_customer(client), granted_credits="10")["wallet"][
        "id"
    ]
    # Hold the purchase's first call to Stripe (creating the customer) until released.
    gate = stripe_server.hold("POST", "/v1/")
    purchase: dict[str, requests.Response] = {}

    def buy() -> None:
        purchase["response"] = _call(
            f"{service_url}/wallet_transactions",
            {"wallet_transaction": {"wallet_id": wallet_id, "paid_credits": "20"}},
            **{"Idempotency-Key": unique("buy")},
        )

    buyer = threading.Thread(target=buy)
    buyer.start()
    try:
        assert gate.arrived.wait(20), "the purchase never reached Stripe"

        # Stripe is being waited on. The purchase is already committed...
        with app_session(committed_app) as session:
            pending = session.execute(select(Purchase)).scalar_one()
            entry = session.get(WalletTransaction, pending.transaction_id)
            assert pending.status == "creating"
            assert entry is not None and entry.status == "pending"

        # ...and the wallet's row is not locked: writes to it go through meanwhile.
        granted: dict[str, requests.Response] = {}

        def grant() -> None:
            granted["response"] = _call(
                f"{service_url}/wallet_transactions",
                {"wallet_transaction": {"wallet_id": wallet_id, "granted_credits": "1"}},
            )

        granter = threading.Thread(target=grant)
        granter.start()
        granter.join(timeout=20)
        assert not granter.is_alive(), "the wallet stayed locked while Stripe was waited on"
        assert granted["response"].status_code == 201
        assert not purchase  # the purchase is still waiting on Stripe
    finally:
        gate.release()
        buyer.join(timeout=30)

    response = purchase["response"]
    assert response.status_code == 201, response.text
    [transaction] = response.json()["wallet_transactions"]
    assert transaction["invoice"]["status"] == "open"
    wallet = client.get(f"/api/v1/wallets/{wallet_id}", headers=AUTH).json
    assert wallet is not None
    assert Decimal(wallet["wallet"]["credits_balance"]) == Decimal("11")


@pytest.mark.postgres
def test_concurrent_first_purchases_share_one_stripe_customer(
    committed_app: Flask, service_url: str, stripe_server: StripeStub
) -> None:
    client = committed_app.test_client()
    wallet_id = create_wallet(client, subscribed_customer(client))["wallet"]["id"]
    answers: list[requests.Response] = []
    lock = threading.Lock()

    def buy(credits: str) -> None:
        response = _call(
            f"{service_url}/wallet_transactions",
            {"wallet_transaction": {"wallet_id": wallet_id, "paid_credits": credits}},
        )
        with lock:
            answers.append(response)

    buyers = [threading.Thread(target=buy, args=(str(10 + n),)) for n in range(5)]
    for buyer in buyers:
        buyer.start()
    for buyer in buyers:
        buyer.join(timeout=60)

    assert sorted(answer.status_code for answer in answers) == [201] * 5
    assert len(stripe_server.customers) == 1
    assert len(stripe_server.invoices) == 5
    with app_session(committed_app) as session:
        purchases = session.execute(select(Purchase)).scalars().all()
        assert {purchase.status for purchase in purchases} == {"open"}
        assert len({purchase.provider_invoice_id for purchase in purchases}) == 5
    wallet = client.get(f"/api/v1/wallets/{wallet_id}", headers=AUTH).json
    assert wallet is not None and wallet["wallet"]["credits_balance"] == "0.00000"
