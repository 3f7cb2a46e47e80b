"""A purchase's calls to Stripe share one time limit, below gunicorn's worker timeout.

Against the Stripe stub over real HTTP, made slow: before, each call waited up to
STRIPE_TIMEOUT_SECONDS and was retried, so a purchase could outlast gunicorn's 30 s
worker timeout (an HTML 500 from gunicorn, the Idempotency-Key left locked). Now
the caller gets the contract's JSON 503 within PURCHASE_DEADLINE_SECONDS, the
purchase is kept, and the same key resumes it at once.
"""

from __future__ import annotations

import runpy
import time
from typing import Any

import pytest
from flask.testing import FlaskClient
from sqlalchemy import select
from sqlalchemy.orm import Session

from gateway.models import IdempotencyKey, Purchase
from gateway.providers import deadline
from gateway.providers.stripe.sandbox import StripeStub
from gateway.settings import PROJECT_ROOT, WORKER_TIMEOUT_SECONDS, Settings
from tests.support.api import assert_error, create_wallet, post, subscribed_customer, unique
from tests.support.config import TEST_SETTINGS

DEADLINE = 2


@pytest.fixture
def settings_overrides(stripe_server: StripeStub) -> dict[str, Any]:
    return {
        **TEST_SETTINGS,
        "STRIPE_API_BASE": stripe_server.url,
        "STRIPE_TIMEOUT_SECONDS": 20,
        "STRIPE_MAX_NETWORK_RETRIES": 2,
        "PURCHASE_DEADLINE_SECONDS": DEADLINE,
    }


def test_a_slow_stripe_gets_the_json_503_within_the_deadline_and_the_key_is_free(
    client: FlaskClient, db_session: Session, stripe_server: StripeStub
) -> None:
    wallet_id = create_wallet(client, subscribed_customer(client))["wallet"]["id"]
    key = unique("top-up")
    body = {"wallet_transaction": {"wallet_id": wallet_id, "paid_credits": "12"}}
    stripe_server.latency = 1.2  # four calls: 4.8 s, more than the 2 s budget

    started = time.monotonic()
    response = post(client, "/wallet_transactions", body, **{"Idempotency-Key": key})
    took = time.monotonic() - started

    assert took < DEADLINE + 1.0, f"answered after {took:.1f} s"
    assert response.mimetype == "application/json"
    error = assert_error(response, 503, "payment_provider_unavailable")
    assert "PURCHASE_DEADLINE_SECONDS" in error["message"]
    purchase = db_session.execute(select(Purchase)).scalar_one()
    assert purchase.status == "creating"
    assert error["error_details"]["purchase_id"] == purchase.id
    # The key is released, not held for its two-minute lease: the same key resumes now.
    held = db_session.execute(select(IdempotencyKey).where(IdempotencyKey.key == key))
    assert held.scalar_one_or_none() is None
    stripe_server.latency = 0.0

    retried = post(client, "/wallet_transactions", body, **{"Idempotency-Key": key})

    assert retried.status_code == 201, retried.json
    [transaction] = retried.json["wallet_transactions"]
    assert transaction["id"] == purchase.transaction_id
    assert transaction["invoice"]["status"] == "open"
    assert len(stripe_server.invoices_with(gateway_purchase_id=purchase.id)) == 1


def test_a_stripe_that_never_answers_is_given_up_at_the_deadline(
    client: FlaskClient, db_session: Session, stripe_server: StripeStub
) -> None:
    """One call hanging for longer than the deadline (and than the call timeout would
    allow with its retries) still answers in time."""
    wallet_id = create_wallet(client, subscribed_customer(client))["wallet"]["id"]
    gate = stripe_server.hold("POST", "/v1/invoices")
    body = {"wallet_transaction": {"wallet_id": wallet_id, "paid_credits": "12"}}
    try:
        started = time.monotonic()
        response = post(client, "/wallet_transactions", body)
        took = time.monotonic() - started
    finally:
        gate.release()

    assert DEADLINE - 0.5 < took < DEADLINE + 1.0, f"answered after {took:.1f} s"
    assert_error(response, 503, "payment_provider_unavailable")


def test_the_deadline_cannot_reach_gunicorns_worker_timeout() -> None:
    namespace = runpy.run_path(str(PROJECT_ROOT / "config" / "gunicorn.conf.py"))
    assert namespace["timeout"] == WORKER_TIMEOUT_SECONDS
    from gateway.settings import _BOUNDS

    _, longest = _BOUNDS["PURCHASE_DEADLINE_SECONDS"]
    assert longest is not None and longest + 5 <= WORKER_TIMEOUT_SECONDS
    assert Settings  # the bound is enforced at start-up (tests/infrastructure/test_app.py)


def test_budgets_nest_and_only_shorten() -> None:
    assert deadline.remaining() is None
    with deadline.within(10):
        outer = deadline.remaining()
        assert outer is not None and 9 < outer <= 10
        with deadline.within(60):
            inner = deadline.remaining()
            assert inner is not None and inner <= 10
        with deadline.within(0):
            assert deadline.spent()
    assert deadline.remaining() is None
