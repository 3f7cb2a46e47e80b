"""Resuming a purchase left `creating` (for reconciliation and late retries).

`complete_purchase` takes a purchase from wherever it stopped to a finalized invoice,
using what was stored on the way and the provider's state, never a second invoice.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime, timedelta

import pytest
import responses
from flask import Flask
from flask.testing import FlaskClient
from sqlalchemy.orm import Session

from gateway.db import get_session, utcnow
from gateway.errors import NotFound
from gateway.providers.stripe.sandbox import StripeStub
from gateway.purchases import PROVIDER_IDEMPOTENCY_WINDOW, complete_purchase
from tests.support.api import post, subscribed_customer
from tests.support.stripe import entry, only_purchase, routes


def interrupted_purchase(client: FlaskClient, stub: StripeStub, path: str, *, after: bool) -> None:
    """A wallet bought with paid credits whose Stripe call at `path` failed."""
    stub.fail_next("POST", path, status=500, after=after)
    body = {
        "wallet": {
            "external_customer_id": subscribed_customer(client),
            "rate_amount": "1.00",
            "paid_credits": "30",
        }
    }
    assert post(client, "/wallets", body).status_code == 503


def later(delta: timedelta) -> Callable[[], datetime]:
    return lambda: utcnow() + delta


def test_a_purchase_older_than_stripes_key_memory_is_found_by_its_metadata(
    app: Flask,
    client: FlaskClient,
    db_session: Session,
    stripe_http: responses.RequestsMock,
    stub: StripeStub,
) -> None:
    # Stripe made the invoice, but its id never reached us.
    interrupted_purchase(client, stub, "/v1/invoices", after=True)
    purchase = only_purchase(db_session)
    assert purchase.provider_invoice_id is None
    [draft] = stub.invoices.values()
    # A day later Stripe has forgotten the key: creating again would make a second one.
    stub.forget_idempotency_keys()
    stripe_http.calls.reset()

    with app.app_context():
        complete_purchase(get_session(), purchase.id, clock=later(timedelta(hours=25)))

    assert routes(stripe_http)[0] == ("GET", "/v1/invoices/search")
    assert ("POST", "/v1/invoices") not in routes(stripe_http)
    assert len(stub.invoices) == 1
    resumed = only_purchase(db_session)
    assert resumed.provider_invoice_id == draft["id"]
    assert resumed.status == "open"
    assert stub.invoices[draft["id"]]["status"] == "open"
    assert len(stub.invoices[draft["id"]]["lines"]["data"]) == 1


def test_within_stripes_key_memory_the_idempotency_key_is_enough(
    app: Flask,
    client: FlaskClient,
    db_session: Session,
    stripe_http: responses.RequestsMock,
    stub: StripeStub,
) -> None:
    interrupted_purchase(client, stub, "/v1/invoices", after=True)
    purchase = only_purchase(db_session)
    stripe_http.calls.reset()

    with app.app_context():
        complete_purchase(get_session(), purchase.id, clock=later(PROVIDER_IDEMPOTENCY_WINDOW / 2))

    assert ("GET", "/v1/invoices/search") not in routes(stripe_http)
    assert len(stub.invoices) == 1
    assert only_purchase(db_session).status == "open"


def test_an_invoice_voided_before_the_purchase_resumed_fails_it(
    app: Flask,
    client: FlaskClient,
    db_session: Session,
    stripe_http: responses.RequestsMock,
    stub: StripeStub,
) -> None:
    # Finalized at Stripe, answer lost; then voided there (say, from the Dashboard).
    interrupted_purchase(client, stub, "/v1/invoices/in_", after=True)
    purchase = only_purchase(db_session)
    [invoice] = stub.invoices_with(gateway_purchase_id=purchase.id)
    assert invoice["status"] == "open"
    stub.invoices[invoice["id"]]["status"] = "void"

    with app.app_context():
        complete_purchase(get_session(), purchase.id)

    failed = only_purchase(db_session)
    assert failed.status == "failed"
    assert failed.failure_code == "invoice_void"
    assert failed.invoice_status == "void"
    assert entry(db_session, failed.transaction_id).status == "failed"


def test_completing_a_finished_purchase_calls_nobody(
    app: Flask,
    client: FlaskClient,
    db_session: Session,
    stripe_http: responses.RequestsMock,
) -> None:
    body = {
        "wallet": {
            "external_customer_id": subscribed_customer(client),
            "rate_amount": "1.00",
            "paid_credits": "30",
        }
    }
    assert post(client, "/wallets", body).status_code == 201
    purchase = only_purchase(db_session)
    stripe_http.calls.reset()

    with app.app_context():
        assert complete_purchase(get_session(), purchase.id).status == "open"

    assert len(stripe_http.calls) == 0


def test_completing_an_unknown_purchase_is_not_found(app: Flask) -> None:
    with app.app_context(), pytest.raises(NotFound):
        complete_purchase(get_session(), "pur_missing")
