"""Credit applications racing each other on PostgreSQL, with real threads and commits."""

from __future__ import annotations

from decimal import Decimal
from typing import Any

import pytest
from flask import Flask
from sqlalchemy import func, select

from gateway import ledger
from gateway.models import CreditApplication, TransactionStatus, Wallet, WalletTransaction
from tests.support.api import application_body, create_wallet, post, subscribed_customer, unique
from tests.support.threads import app_session, run_together

pytestmark = pytest.mark.postgres


def test_concurrent_invoices_never_overdraw_a_small_balance(committed_app: Flask) -> None:
    setup = committed_app.test_client()
    customer = subscribed_customer(setup)
    # 10 credits at 0.333: worth 333 cents. Ten invoices of 90 cents want 900.
    wallet_id = create_wallet(setup, customer, rate_amount="0.333", granted_credits="10")["wallet"][
        "id"
    ]

    def apply(index: int) -> tuple[int, dict[str, Any]]:
        client = committed_app.test_client()
        response = post(
            client, "/credit_applications", application_body(customer, 90, invoice=f"race-{index}")
        )
        return response.status_code, response.json["credit_application"]  # type: ignore[index]

    results = run_together(10, apply)

    assert {status for status, _ in results} == {201}
    deducted = sorted((answer["amount_cents"] for _, answer in results), reverse=True)
    # Three invoices are covered in full, the fourth gets what is left, the rest nothing.
    assert sum(deducted) <= 333
    assert deducted[:3] == [90, 90, 90]
    assert sum(deducted) == 270 + deducted[3]
    assert deducted[4:] == [0] * 6
    with app_session(committed_app) as session:
        wallet = session.get(Wallet, wallet_id)
        assert wallet is not None
        assert wallet.credits_balance == 0
        assert ledger.ledger_balance(session, wallet_id) == wallet.credits_balance
        assert wallet.consumed_amount_cents == sum(deducted)
        assert wallet.consumed_credits == Decimal("10")


def test_concurrent_repeats_of_one_invoice_consume_once(committed_app: Flask) -> None:
    setup = committed_app.test_client()
    customer = subscribed_customer(setup)
    wallet_id = create_wallet(setup, customer, granted_credits="10")["wallet"]["id"]
    invoice = unique("inv")

    def apply(_index: int) -> tuple[int, bytes]:
        client = committed_app.test_client()
        response = post(
            client, "/credit_applications", application_body(customer, 300, invoice=invoice)
        )
        return response.status_code, response.get_data()

    results = run_together(5, apply)

    assert sorted(status for status, _ in results) == [200, 200, 200, 200, 201]
    assert len({body for _, body in results}) == 1  # every answer is the first one
    with app_session(committed_app) as session:
        wallet = session.get(Wallet, wallet_id)
        assert wallet is not None
        assert wallet.credits_balance == Decimal("7")
        assert ledger.ledger_balance(session, wallet_id) == wallet.credits_balance
        entries = session.execute(
            select(func.count())
            .select_from(WalletTransaction)
            .where(
                WalletTransaction.wallet_id == wallet_id,
                WalletTransaction.transaction_status == TransactionStatus.INVOICED,
            )
        ).scalar_one()
        assert entries == 1
        stored = session.execute(
            select(func.count())
            .select_from(CreditApplication)
            .where(CreditApplication.invoice_external_id == invoice)
        ).scalar_one()
        assert stored == 1


def test_concurrent_repeats_of_an_ineligible_invoice_store_one_answer(
    committed_app: Flask,
) -> None:
    # No wallet lock is taken for these: the unique invoice id alone decides.
    setup = committed_app.test_client()
    customer = subscribed_customer(setup)
    invoice = unique("inv")

    def apply(_index: int) -> tuple[int, bytes]:
        client = committed_app.test_client()
        body = application_body(customer, 300, invoice=invoice)
        body["credit_application"]["invoice_type"] = "add_on"
        response = post(client, "/credit_applications", body)
        return response.status_code, response.get_data()

    results = run_together(5, apply)

    assert sorted(status for status, _ in results) == [200, 200, 200, 200, 201]
    assert len({body for _, body in results}) == 1
