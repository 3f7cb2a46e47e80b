"""Interval top-ups: the worker's duty buys each due period once, the latest one after
downtime, and a unique index decides if a period is reached twice."""

from __future__ import annotations

import json
from datetime import datetime, timedelta
from decimal import Decimal

import pytest
from flask import Flask
from flask.testing import FlaskClient
from sqlalchemy import select, update
from sqlalchemy.orm import Session

from gateway import topups
from gateway.db import get_session, utcnow
from gateway.intervals import Interval, run_at
from gateway.models import (
    EntrySource,
    Event,
    Purchase,
    RecurringTransactionRule,
    RuleStatus,
    Wallet,
    WalletTransaction,
)
from tests.support.api import wallet_with_rule

GRANTED_WEEKLY = {"trigger": "interval", "interval": "weekly", "granted_credits": "5"}
PAID_MONTHLY = {"trigger": "interval", "interval": "monthly", "paid_credits": "20"}


def run_worker(app: Flask, now: datetime, batch_size: int = 100) -> topups.IntervalRun:
    """The duty as the worker runs it: batches until nothing is due, each committed."""
    with app.app_context():
        return topups.buy_all_due_interval_top_ups(get_session(), now, batch_size)


def interval_entries(session: Session, wallet_id: str) -> list[WalletTransaction]:
    return list(
        session.execute(
            select(WalletTransaction)
            .where(
                WalletTransaction.wallet_id == wallet_id,
                WalletTransaction.source == EntrySource.INTERVAL,
            )
            .order_by(WalletTransaction.created_at)
            .execution_options(populate_existing=True)
        ).scalars()
    )


def rule_of(session: Session, wallet_id: str) -> RecurringTransactionRule:
    return session.execute(
        select(RecurringTransactionRule)
        .where(RecurringTransactionRule.wallet_id == wallet_id)
        .execution_options(populate_existing=True)
    ).scalar_one()


def test_a_due_rule_buys_its_period_once(
    app: Flask, client: FlaskClient, db_session: Session
) -> None:
    _, wallet_id = wallet_with_rule(
        client, GRANTED_WEEKLY, granted="10"
    )  # started now: due at once
    started = rule_of(db_session, wallet_id).started_at
    assert started is not None
    now = started + timedelta(minutes=1)

    first = run_worker(app, now)
    again = run_worker(app, now + timedelta(days=6))

    assert (first.rules, first.started, again.rules) == (1, 1, 0)
    [entry] = interval_entries(db_session, wallet_id)
    assert (entry.transaction_status, entry.status, entry.credit_amount) == (
        "granted",
        "settled",
        Decimal("5"),
    )
    assert entry.rule_period_at == started
    assert entry.created_by == "system"
    assert rule_of(db_session, wallet_id).next_run_at == started + timedelta(weeks=1)
    assert db_session.get_one(Wallet, wallet_id, populate_existing=True).credits_balance == Decimal(
        "15"
    )


def test_after_downtime_only_the_latest_missed_period_is_bought(
    app: Flask, client: FlaskClient, db_session: Session
) -> None:
    _, wallet_id = wallet_with_rule(client, GRANTED_WEEKLY, granted="10")
    started = rule_of(db_session, wallet_id).started_at
    assert started is not None
    later = started + timedelta(weeks=3, days=2)  # three periods missed

    run = run_worker(app, later)

    assert run.started == 1
    [entry] = interval_entries(db_session, wallet_id)
    assert entry.rule_period_at == started + timedelta(weeks=3)
    assert rule_of(db_session, wallet_id).next_run_at == started + timedelta(weeks=4)


def test_a_period_bought_before_is_refused_by_the_unique_index(
    app: Flask, client: FlaskClient, db_session: Session
) -> None:
    _, wallet_id = wallet_with_rule(client, GRANTED_WEEKLY, granted="10")
    rule = rule_of(db_session, wallet_id)
    started = rule.started_at
    assert started is not None
    run_worker(app, started)
    # A worker that read the rule before the first one moved it on reaches the same period.
    db_session.execute(
        update(RecurringTransactionRule)
        .where(RecurringTransactionRule.id == rule.id)
        .values(next_run_at=started)
    )

    run = run_worker(app, started + timedelta(hours=1))

    assert (run.rules, run.started, run.skipped) == (1, 0, [rule.id])
    assert len(interval_entries(db_session, wallet_id)) == 1


def test_a_rule_with_an_unpaid_top_up_skips_its_next_period(
    app: Flask, client: FlaskClient, db_session: Session
) -> None:
    _, wallet_id = wallet_with_rule(client, PAID_MONTHLY, granted="10")
    started = rule_of(db_session, wallet_id).started_at
    assert started is not None
    run_worker(app, started)
    [bought] = interval_entries(db_session, wallet_id)
    assert (bought.transaction_status, bought.status) == ("purchased", "pending")
    purchase = db_session.execute(select(Purchase)).scalar_one()
    assert (purchase.status, purchase.collection_method) == ("creating", "charge_automatically")

    next_month = run_at(started, Interval.MONTHLY, 1)
    run = run_worker(app, next_month)

    assert (run.rules, run.started) == (1, 0)
    assert len(interval_entries(db_session, wallet_id)) == 1
    assert rule_of(db_session, wallet_id).next_run_at == run_at(started, Interval.MONTHLY, 2)


def test_paused_rules_and_ended_wallets_buy_nothing(
    app: Flask, client: FlaskClient, db_session: Session
) -> None:
    _, paused_wallet = wallet_with_rule(client, GRANTED_WEEKLY, granted="10")
    db_session.execute(
        update(RecurringTransactionRule)
        .where(RecurringTransactionRule.wallet_id == paused_wallet)
        .values(status=RuleStatus.PAUSED, paused_reason="payment_failed")
    )
    _, expired_wallet = wallet_with_rule(client, GRANTED_WEEKLY, granted="10")
    started = rule_of(db_session, expired_wallet).started_at
    assert started is not None
    db_session.execute(
        update(Wallet)
        .where(Wallet.id == expired_wallet)
        .values(expiration_at=started + timedelta(seconds=1))
    )

    run = run_worker(app, started + timedelta(minutes=5))

    assert run.started == 0
    assert interval_entries(db_session, paused_wallet) == []
    assert interval_entries(db_session, expired_wallet) == []


def test_a_target_rule_buys_up_to_its_target(
    app: Flask, client: FlaskClient, db_session: Session
) -> None:
    rule = {
        "trigger": "interval",
        "interval": "yearly",
        "method": "target",
        "target_credits": "100",
    }
    _, wallet_id = wallet_with_rule(client, rule, granted="30")
    started = rule_of(db_session, wallet_id).started_at
    assert started is not None

    run_worker(app, started)

    [entry] = interval_entries(db_session, wallet_id)
    assert (entry.transaction_status, entry.credit_amount) == ("purchased", Decimal("70"))


@pytest.mark.parametrize("batch_size", [1, 3])
def test_batches_go_through_every_due_rule(
    app: Flask, client: FlaskClient, db_session: Session, batch_size: int
) -> None:
    wallets = [wallet_with_rule(client, GRANTED_WEEKLY, granted="10")[1] for _ in range(4)]

    run = run_worker(app, utcnow() + timedelta(minutes=1), batch_size)

    assert run.started == 4
    assert all(len(interval_entries(db_session, wallet)) == 1 for wallet in wallets)


def test_each_interval_entry_is_announced_with_its_purchase(
    app: Flask, client: FlaskClient, db_session: Session
) -> None:
    rule = {"trigger": "interval", "interval": "weekly", "paid_credits": "20",
            "granted_credits": "2"}  # fmt: skip
    _, wallet_id = wallet_with_rule(client, rule, granted="10")
    started = rule_of(db_session, wallet_id).started_at
    assert started is not None

    run_worker(app, started)

    bodies = [
        json.loads(body)
        for body in db_session.execute(
            select(Event.body).where(
                Event.wallet_id == wallet_id, Event.type == "wallet_transaction.created"
            )
        ).scalars()
    ]
    announced = {
        body["data"]["wallet_transaction"]["transaction_status"]: body["data"]["wallet_transaction"]
        for body in bodies
        if body["data"]["wallet_transaction"]["source"] == "interval"
    }
    assert set(announced) == {"purchased", "granted"}
    assert announced["purchased"]["invoice"] is not None
    assert announced["purchased"]["status"] == "pending"
