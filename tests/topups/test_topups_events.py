"""wallet.balance_low / wallet.balance_recovered: once per crossing of the wallet's
low_balance_threshold_credits, whichever change crosses it, through the outbox."""

from __future__ import annotations

import json
from typing import Any

import responses
from flask import Flask
from flask.testing import FlaskClient
from sqlalchemy import select
from sqlalchemy.orm import Session

from gateway import topups
from gateway.db import get_session
from gateway.models import Event, Purchase, RecurringTransactionRule
from gateway.providers.stripe.sandbox import StripeStub
from tests.support.api import applied, create_wallet, post, put, subscribed_customer
from tests.support.webhooks import post_signed

CROSSINGS = ("wallet.balance_low", "wallet.balance_recovered", "wallet.depleted")


def crossings(session: Session, wallet_id: str) -> list[tuple[str, str]]:
    """The wallet's crossing events in order, each with the balance its wallet shows."""
    bodies = session.execute(
        select(Event.body)
        .where(Event.wallet_id == wallet_id, Event.type.in_(CROSSINGS))
        .order_by(Event.position)
    ).scalars()
    return [
        (event["type"], event["data"]["wallet"]["credits_balance"])
        for event in map(json.loads, bodies)
    ]


def grant(client: FlaskClient, wallet_id: str, credits: str) -> None:
    body = {"wallet_transaction": {"wallet_id": wallet_id, "granted_credits": credits}}
    assert post(client, "/wallet_transactions", body).status_code == 201


def low_wallet(client: FlaskClient, **fields: Any) -> tuple[str, str]:
    customer = subscribed_customer(client)
    wallet = create_wallet(
        client, customer, granted_credits="30", low_balance_threshold_credits="10", **fields
    )["wallet"]
    return customer, wallet["id"]


def test_each_crossing_is_announced_once(client: FlaskClient, db_session: Session) -> None:
    customer, wallet_id = low_wallet(client)

    applied(client, customer, 1500, invoice_type="usage")  # 30 -> 15: above
    applied(client, customer, 600, invoice_type="usage")  # 15 -> 9: crossed down
    applied(client, customer, 400, invoice_type="usage")  # 9 -> 5: still low, nothing
    grant(client, wallet_id, "3")  # 5 -> 8: still low
    grant(client, wallet_id, "2")  # 8 -> 10: at the threshold is low
    grant(client, wallet_id, "0.5")  # 10 -> 10.5: recovered
    applied(client, customer, 1050, invoice_type="usage")  # 10.5 -> 0: low again, and depleted

    assert crossings(db_session, wallet_id) == [
        ("wallet.balance_low", "9.00000"),
        ("wallet.balance_recovered", "10.50000"),
        ("wallet.depleted", "0.00000"),
        ("wallet.balance_low", "0.00000"),
    ]


def test_no_threshold_no_crossing_events(client: FlaskClient, db_session: Session) -> None:
    customer = subscribed_customer(client)
    wallet_id = create_wallet(client, customer, granted_credits="30")["wallet"]["id"]

    applied(client, customer, 2500, invoice_type="usage")
    grant(client, wallet_id, "20")

    assert crossings(db_session, wallet_id) == []


def test_a_paid_top_up_recovers_the_balance(
    client: FlaskClient, db_session: Session, stub: StripeStub, stripe_http: responses.RequestsMock
) -> None:
    customer, wallet_id = low_wallet(client)
    applied(client, customer, 2500, invoice_type="usage")  # 30 -> 5: low
    body = {"wallet_transaction": {"wallet_id": wallet_id, "paid_credits": "20"}}
    assert post(client, "/wallet_transactions", body).status_code == 201
    invoice_id = db_session.execute(select(Purchase.provider_invoice_id)).scalar_one()
    assert invoice_id is not None
    stub.mark_paid(invoice_id)

    assert post_signed(client, stub.event(invoice_id, "invoice.paid")).status_code == 200

    assert crossings(db_session, wallet_id) == [
        ("wallet.balance_low", "5.00000"),
        ("wallet.balance_recovered", "25.00000"),
    ]


def test_an_interval_grant_recovers_the_balance(
    app: Flask, client: FlaskClient, db_session: Session
) -> None:
    weekly = {"trigger": "interval", "interval": "weekly", "granted_credits": "20"}
    customer, wallet_id = low_wallet(client, recurring_transaction_rules=[weekly])
    applied(client, customer, 2500, invoice_type="usage")  # 30 -> 5: low
    rule = db_session.execute(select(RecurringTransactionRule)).scalar_one()
    assert rule.started_at is not None

    with app.app_context():
        topups.buy_all_due_interval_top_ups(get_session(), rule.started_at, 10)

    assert crossings(db_session, wallet_id) == [
        ("wallet.balance_low", "5.00000"),
        ("wallet.balance_recovered", "25.00000"),
    ]


def test_changing_the_threshold_announces_nothing_by_itself(
    client: FlaskClient, db_session: Session
) -> None:
    customer, wallet_id = low_wallet(client)
    applied(client, customer, 1500, invoice_type="usage")  # 30 -> 15

    put(client, f"/wallets/{wallet_id}", {"wallet": {"low_balance_threshold_credits": "20"}})
    applied(
        client, customer, 100, invoice_type="usage"
    )  # 15 -> 14: already below the new threshold, no crossing

    assert crossings(db_session, wallet_id) == []
