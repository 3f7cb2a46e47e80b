"""A payment whose webhook arrives while our own create call is still running.

Stripe finalizes the invoice, the customer's card is charged at once and
`invoice.paid` is delivered — all before the create call has the finalize answer
(still `open`) in hand. The webhook must credit the purchase once, and the create
call, finishing afterwards, must not put it back to `open`.
"""

from __future__ import annotations

import json
import re
import threading
from collections.abc import Callable
from decimal import Decimal
from typing import Any
from urllib.parse import urlsplit

import pytest
import responses
from flask import Flask
from flask.testing import FlaskClient
from sqlalchemy import select
from sqlalchemy.orm import Session
from werkzeug.test import TestResponse

from gateway.models import EntryStatus, Purchase, PurchaseStatus, WalletTransaction
from gateway.providers.stripe.sandbox import StripeStub
from tests.support.api import delete, get, post, subscribed_customer
from tests.support.stripe import FINALIZE, during_finalize
from tests.support.threads import app_session
from tests.support.webhooks import encode, post_signed, state_of

Deliver = Callable[[bytes], tuple[int, Any]]


def _pay_during_finalize(
    rsps: responses.RequestsMock, stub: StripeStub, deliver: Deliver
) -> list[tuple[int, Any]]:
    """Finalize at the stub, pay the invoice and deliver `invoice.paid`, then answer."""
    deliveries: list[tuple[int, Any]] = []

    def pay(invoice: dict[str, Any]) -> None:
        stub.mark_paid(invoice["id"])
        deliveries.append(deliver(encode(stub.event(invoice["id"], "invoice.paid"))))

    during_finalize(rsps, stub, pay)  # the finalize answer stays `open`
    return deliveries


def _answer(response: TestResponse) -> tuple[int, Any]:
    return response.status_code, response.json


def test_paid_webhook_during_the_create_call_is_credited_once(
    app: Flask,
    client: FlaskClient,
    db_session: Session,
    stub: StripeStub,
    stripe_mock: responses.RequestsMock,
) -> None:
    webhook_client = app.test_client()  # Stripe's connection, not the caller's
    deliveries = _pay_during_finalize(
        stripe_mock, stub, lambda body: _answer(post_signed(webhook_client, body))
    )
    customer = subscribed_customer(client)

    response = post(
        client,
        "/wallets",
        {
            "wallet": {
                "external_customer_id": customer,
                "rate_amount": "2.50",
                "paid_credits": "40",
                "granted_credits": "5",
            }
        },
    )

    assert response.status_code == 201, response.json
    [(status, answer)] = deliveries
    assert status == 200 and answer["event"]["status"] == "processed", answer
    wallet_id = response.json["wallet"]["id"]
    purchased = next(
        entry
        for entry in response.json["wallet_transactions"]
        if entry["transaction_status"] == "purchased"
    )
    # The create call's own answer shows the settlement it did not make.
    assert purchased["status"] == "settled"
    assert purchased["invoice"]["status"] == "paid"
    assert response.json["wallet"]["credits_balance"] == "45.00000"
    purchase = db_session.get_one(WalletTransaction, purchased["id"]).purchase
    assert purchase is not None
    state = state_of(db_session, purchase.id)
    assert state.purchase_status == PurchaseStatus.SETTLED
    assert state.entry_status == EntryStatus.SETTLED
    assert state.invoice_status == "paid"
    assert state.balance == Decimal("45.00000")
    # The API agrees, and a redelivery changes nothing.
    assert get(client, f"/wallets/{wallet_id}").json["wallet"]["credits_balance"] == "45.00000"
    entry = get(client, f"/wallet_transactions/{purchased['id']}").json["wallet_transaction"]
    assert entry["status"] == "settled"
    assert entry["invoice"]["status"] == "paid"
    event = stub.event(state.invoice_id or "", "invoice.paid")
    assert post_signed(webhook_client, event).status_code == 200
    assert state_of(db_session, purchase.id).balance == Decimal("45.00000")


@pytest.mark.postgres
def test_paid_webhook_from_another_thread_during_the_create_call_is_credited_once(
    committed_app: Flask, stub: StripeStub, stripe_mock: responses.RequestsMock
) -> None:
    """On PostgreSQL with real commits: the webhook runs on its own thread and must not
    wait for the create call (which holds no lock while it talks to Stripe)."""

    def deliver_from_another_thread(body: bytes) -> tuple[int, Any]:
        result: list[tuple[int, Any]] = []
        thread = threading.Thread(
            target=lambda: result.append(_answer(post_signed(committed_app.test_client(), body)))
        )
        thread.start()
        thread.join(timeout=20)
        assert not thread.is_alive(), "the webhook waited on a lock held by the create call"
        return result[0]

    deliveries = _pay_during_finalize(stripe_mock, stub, deliver_from_another_thread)
    client = committed_app.test_client()
    customer = subscribed_customer(client)

    response = post(
        client,
        "/wallets",
        {"wallet": {"external_customer_id": customer, "rate_amount": "1", "paid_credits": "30"}},
    )

    assert response.status_code == 201, response.json
    [(status, answer)] = deliveries
    assert status == 200 and answer["event"]["status"] == "processed", answer
    with app_session(committed_app) as session:
        [purchase] = session.query(Purchase).all()
        state = state_of(session, purchase.id)
    assert state.purchase_status == PurchaseStatus.SETTLED
    assert state.entry_status == EntryStatus.SETTLED
    assert state.invoice_status == "paid"
    assert state.balance == Decimal("30.00000")


def test_a_wallet_ended_during_the_create_call_gets_its_new_invoice_voided(
    app: Flask,
    client: FlaskClient,
    db_session: Session,
    stub: StripeStub,
    stripe_mock: responses.RequestsMock,
) -> None:
    """The wallet is terminated while its invoice is being finalized: the purchase
    fails with the wallet, and the invoice the create call then finalizes is voided."""
    operator = app.test_client()
    terminations: list[int] = []

    def terminate_then_finalize(request: Any) -> tuple[int, dict[str, str], bytes]:
        invoice_id = urlsplit(request.url).path.split("/")[3]
        wallet_id = stub.invoices_with()[0]["metadata"]["gateway_wallet_id"]
        terminations.append(delete(operator, f"/wallets/{wallet_id}").status_code)
        split = urlsplit(request.url)
        body = request.body or b""
        answer = stub.handle(
            request.method,
            split.path,
            split.query,
            dict(request.headers),
            body.encode() if isinstance(body, str) else body,
        )
        assert json.loads(answer[2])["id"] == invoice_id
        return answer

    stripe_mock.add_callback("POST", re.compile(FINALIZE), callback=terminate_then_finalize)
    stub.register(stripe_mock)
    customer = subscribed_customer(client)

    response = post(
        client,
        "/wallets",
        {"wallet": {"external_customer_id": customer, "rate_amount": "1", "paid_credits": "30"}},
    )

    assert response.status_code == 201, response.json
    assert terminations == [200]
    [invoice] = stub.invoices_with()
    assert invoice["status"] == "void"
    purchase = db_session.execute(
        select(Purchase).where(Purchase.provider_invoice_id == invoice["id"])
    ).scalar_one()
    state = state_of(db_session, purchase.id)
    assert state.purchase_status == PurchaseStatus.FAILED
    assert state.entry_status == EntryStatus.FAILED
    assert state.invoice_status == "void"
    assert not state.void_pending
    assert state.balance == 0
