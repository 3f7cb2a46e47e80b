"""Automatic top-ups racing on PostgreSQL, with real threads and commits."""

from __future__ import annotations

from datetime import timedelta
from decimal import Decimal

import pytest
from flask import Flask
from sqlalchemy import select

from gateway import topups
from gateway.db import get_session, utcnow
from gateway.models import EntrySource, Purchase, WalletTransaction
from tests.support.api import application_body, create_wallet, post, subscribed_customer
from tests.support.threads import app_session, run_together

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
        body = application_body(customer, 900, invoice=f"cross-{index}")  # 9 credits each
        response = post(client, "/credit_applications", body)
        return response.status_code

    assert run_together(10, apply) == [201] * 10  # 100 -> 10: crossed once, at 55 -> 46

    with app_session(committed_app) as session:
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


def test_two_workers_racing_on_due_interval_rules_buy_each_period_once(
    committed_app: Flask,
) -> None:
    setup = committed_app.test_client()
    rule = {"trigger": "interval", "interval": "monthly", "paid_credits": "20",
            "granted_credits": "1"}  # fmt: skip
    wallets = [
        create_wallet(setup, subscribed_customer(setup), recurring_transaction_rules=[rule])[
            "wallet"
        ]["id"]
        for _ in range(40)
    ]
    now = utcnow() + timedelta(minutes=1)

    def work(_index: int) -> int:
        started = 0
        with committed_app.app_context():
            session = get_session()
            while True:
                run = topups.buy_due_interval_top_ups(session, now, batch_size=5)
                session.commit()
                if run.rules == 0:
                    return started
                started += run.started

    started = run_together(2, work)

    assert sum(started) == 40
    with app_session(committed_app) as session:
        rows = session.execute(
            select(WalletTransaction.wallet_id, WalletTransaction.transaction_status).where(
                WalletTransaction.source == EntrySource.INTERVAL
            )
        ).all()
        assert sorted(rows) == sorted(
            (wallet, kind) for wallet in wallets for kind in ("granted", "purchased")
        )
        assert len(session.execute(select(Purchase.id)).all()) == 40
