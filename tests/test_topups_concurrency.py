"""Automatic top-ups racing on PostgreSQL, with real threads and commits."""

from __future__ import annotations

from decimal import Decimal

import pytest
from flask import Flask
from sqlalchemy import select

from gateway.models import EntrySource, Purchase, WalletTransaction
from tests.helpers import create_wallet, post, subscribed_customer
from tests.test_credit_applications_concurrency import application_body, inspect, run_together

pytestmark = pytest.mark.postgres


def test_ten_concurrent_credit_applications_crossing_the_threshold_start_one_top_up(
    committed_app: Flask,
) -> None:
    setup = committed_app.test_client()
    customer = subscribed_customer(setup)
    rule = {"trigger": "threshold", "threshold_credits": "50", "paid_credits": "30"}
    wallet_id = create_wallet(
        setup, customer, granted_credits="100", recurring_transaction_rules=[rule]
    )["wallet"]["id"]

    def apply(index: int) -> int:
        client = committed_app.test_client()
        body = application_body(customer, f"cross-{index}", 900)  # 9 credits each
        response = post(client, "/credit_applications", body)
        return response.status_code

    assert run_together(10, apply) == [201] * 10  # 100 -> 10: crossed once, at 55 -> 46

    session = inspect(committed_app)
    try:
        automatic = list(
            session.execute(
                select(WalletTransaction).where(
                    WalletTransaction.wallet_id == wallet_id,
                    WalletTransaction.source == EntrySource.THRESHOLD,
                )
            ).scalars()
        )
        assert [(e.transaction_status, e.credit_amount) for e in automatic] == [
            ("purchased", Decimal("30"))
        ]
        assert len(session.execute(select(Purchase.id)).all()) == 1
    finally:
        session.close()
