"""One Idempotency-Key used by concurrent requests, on PostgreSQL with real threads."""

from __future__ import annotations

import threading
from collections.abc import Iterator

import pytest
from flask import Flask
from sqlalchemy import func, select

from gateway.models import Customer, IdempotencyKey, TransactionStatus, WalletTransaction
from tests.support import idempotency_probe
from tests.support.api import (
    application_body,
    assert_error,
    create_wallet,
    subscribed_customer,
    unique,
)
from tests.support.config import AUTH
from tests.support.threads import app_session, run_together

pytestmark = pytest.mark.postgres


@pytest.fixture
def probed_app(committed_app: Flask) -> Iterator[Flask]:
    idempotency_probe.reset()
    yield idempotency_probe.install(committed_app)
    idempotency_probe.reset()


def count(app: Flask, statement: object) -> int:
    with app_session(app) as session:
        return int(session.execute(statement).scalar_one())  # type: ignore[call-overload]


def test_concurrent_requests_with_one_key_act_once(probed_app: Flask) -> None:
    setup = probed_app.test_client()
    wallet_id = create_wallet(setup, subscribed_customer(setup))["wallet"]["id"]
    key = unique("key")
    body = {"wallet_transaction": {"wallet_id": wallet_id, "granted_credits": "5"}}

    def top_up(_index: int) -> tuple[int, bytes, bool]:
        response = probed_app.test_client().post(
            "/api/v1/wallet_transactions", json=body, headers={**AUTH, "Idempotency-Key": key}
        )
        replayed = response.headers.get("Idempotent-Replayed") == "true"
        return response.status_code, response.get_data(), replayed

    results = run_together(4, top_up)

    acted = [r for r in results if r[0] == 201 and not r[2]]
    assert len(acted) == 1
    others = [r for r in results if r is not acted[0]]
    for status, data, replayed in others:
        # The others waited for the first and replayed it (or were told to retry).
        assert (status == 201 and replayed and data == acted[0][1]) or status == 409
    entries = count(
        probed_app,
        select(func.count())
        .select_from(WalletTransaction)
        .where(
            WalletTransaction.wallet_id == wallet_id,
            WalletTransaction.transaction_status == TransactionStatus.GRANTED,
        ),
    )
    assert entries == 1


def test_concurrent_credit_applications_with_one_key_act_once(probed_app: Flask) -> None:
    setup = probed_app.test_client()
    customer = subscribed_customer(setup)
    create_wallet(setup, customer, granted_credits="10")
    key = unique("key")

    def apply(_index: int) -> tuple[int, bytes]:
        body = application_body(customer, 100, invoice="inv-same-key")
        response = probed_app.test_client().post(
            "/api/v1/credit_applications", json=body, headers={**AUTH, "Idempotency-Key": key}
        )
        return response.status_code, response.get_data()

    results = run_together(3, apply)

    # One acted; the others waited and replayed its answer (201, not the 200 of an
    # invoice repeat), or were told to retry.
    assert [status for status, _ in results].count(201) >= 1
    assert all(status in (201, 409) for status, _ in results)
    assert len({data for status, data in results if status == 201}) == 1
    invoiced = count(
        probed_app,
        select(func.count())
        .select_from(WalletTransaction)
        .where(WalletTransaction.transaction_status == TransactionStatus.INVOICED),
    )
    assert invoiced == 1


def test_a_request_that_committed_midway_holds_its_key_until_it_answers(
    probed_app: Flask,
) -> None:
    key = unique("key")
    idempotency_probe.BEHAVIOUR.append("commit_then_wait")
    answers: dict[str, bytes | int] = {}

    def first_request() -> None:
        response = probed_app.test_client().post(
            "/api/v1/_probe/acts", json={"note": "note"}, headers={**AUTH, "Idempotency-Key": key}
        )
        answers["status"] = response.status_code
        answers["body"] = response.get_data()

    first = threading.Thread(target=first_request)
    first.start()
    try:
        assert idempotency_probe.COMMITTED.wait(timeout=10)
        # The first request committed its claim and part of its work, and is now
        # "calling the provider" with no lock held: a retry must not act.
        client = probed_app.test_client()
        meanwhile = client.post(
            "/api/v1/_probe/acts", json={"note": "note"}, headers={**AUTH, "Idempotency-Key": key}
        )
        assert_error(meanwhile, 409, "idempotency_key_in_progress")
    finally:
        idempotency_probe.PROCEED.set()
        first.join(timeout=30)

    assert answers["status"] == 201
    after = probed_app.test_client().post(
        "/api/v1/_probe/acts", json={"note": "note"}, headers={**AUTH, "Idempotency-Key": key}
    )
    assert (after.status_code, after.get_data()) == (201, answers["body"])
    assert count(probed_app, select(func.count()).select_from(Customer)) == 1
    stored = count(
        probed_app,
        select(func.count())
        .select_from(IdempotencyKey)
        .where(IdempotencyKey.key == key, IdempotencyKey.response_status == 201),
    )
    assert stored == 1
