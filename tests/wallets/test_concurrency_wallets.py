"""Racing wallet creations on PostgreSQL: the partial unique index lets exactly one win."""

from __future__ import annotations

import threading
from typing import Any

import pytest
from flask import Flask
from sqlalchemy import func, select

from gateway.models import Customer, Wallet, WalletTransaction
from tests.support.api import subscribed_customer
from tests.support.config import AUTH
from tests.support.threads import app_session

THREADS = 8


pytestmark = pytest.mark.settings(STRIPE_SECRET_KEY="")


@pytest.mark.postgres
def test_concurrent_wallet_creations_for_one_customer(committed_app: Flask) -> None:
    customer = subscribed_customer(committed_app.test_client())
    barrier = threading.Barrier(THREADS)
    answers: list[tuple[int, Any]] = []
    failures: list[BaseException] = []
    lock = threading.Lock()

    def create() -> None:
        client = committed_app.test_client()
        body = {
            "wallet": {
                "external_customer_id": customer,
                "rate_amount": "1",
                "granted_credits": "10",
            }
        }
        try:
            barrier.wait(timeout=10)
            response = client.post("/api/v1/wallets", json=body, headers=AUTH)
            with lock:
                answers.append((response.status_code, response.json))
        except BaseException as exc:  # pragma: no cover - reported below
            failures.append(exc)

    threads = [threading.Thread(target=create) for _ in range(THREADS)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
    assert not failures, failures

    statuses = sorted(status for status, _ in answers)
    assert statuses == [201] + [422] * (THREADS - 1), answers
    for status, body in answers:
        if status == 422:
            assert body["code"] == "wallet_already_exists"
            assert body["status"] == 422
    [winner] = [body for status, body in answers if status == 201]

    with app_session(committed_app) as session:
        wallets = session.execute(
            select(Wallet.id, Wallet.status, Wallet.credits_balance)
            .join(Customer, Customer.id == Wallet.customer_id)
            .where(Customer.external_id == customer)
        ).all()
        assert [(w.id, w.status) for w in wallets] == [(winner["wallet"]["id"], "active")]
        # The losers' grants were rolled back with them: one entry, ten credits.
        entries = session.execute(select(func.count()).select_from(WalletTransaction)).scalar()
        assert entries == 1
        assert str(wallets[0].credits_balance) == "10.00000"


@pytest.mark.postgres
def test_a_wallet_takes_the_customers_currency_as_committed_while_it_is_created(
    committed_app: Flask,
) -> None:
    """Issue 12 #6: a customer's currency changed (upsert) while a wallet was being
    created for it: the wallet kept the old currency. The customer row is locked now,
    so the creation waits for the change and takes the new currency (or the change,
    coming second, is refused because the wallet exists)."""
    client = committed_app.test_client()
    customer = subscribed_customer(client)
    answers: list[Any] = []

    def create() -> None:
        body = {"wallet": {"external_customer_id": customer, "rate_amount": "1"}}
        response = committed_app.test_client().post("/api/v1/wallets", json=body, headers=AUTH)
        answers.append(response)

    with app_session(committed_app) as changing:
        row = changing.execute(
            select(Customer).where(Customer.external_id == customer).with_for_update()
        ).scalar_one()
        assert row.currency == "USD"
        creating = threading.Thread(target=create)
        creating.start()
        creating.join(timeout=1.0)
        assert creating.is_alive(), "the wallet was created under the customer's lock"
        row.currency = "EUR"
        changing.commit()
    creating.join(timeout=30)

    [response] = answers
    assert response.status_code == 201, response.json
    assert response.json["wallet"]["currency"] == "EUR"
