"""The transactional outbox: every change writes its event in its own transaction,
with the API's JSON of the resources and a per-wallet sequence."""

from __future__ import annotations

import json
import threading
from datetime import UTC, datetime, timedelta

import pytest
from flask import Flask
from flask.testing import FlaskClient, FlaskCliRunner
from sqlalchemy import select, update
from sqlalchemy.orm import Session

from gateway import events
from gateway.models import Event, Wallet
from gateway.providers.stripe.sandbox import StripeStub
from tests.support.api import (
    apply,
    create_wallet,
    delete,
    get,
    post,
    put,
    spend,
    subscribed_customer,
    unique,
)
from tests.support.events import types_of, wallet_events
from tests.support.purchases import customer_of, settled_purchase
from tests.support.threads import app_session
from tests.support.webhooks import deliver_object, invoice_event, make_purchase, post_signed


def test_a_wallets_life_is_published_in_order_with_the_apis_json(
    client: FlaskClient, db_session: Session
) -> None:
    customer = subscribed_customer(client)
    created = create_wallet(client, customer, granted_credits="10")
    wallet_id = created["wallet"]["id"]
    renamed = put(client, f"/wallets/{wallet_id}", {"wallet": {"name": "main"}})
    assert renamed.status_code == 200
    applied = apply(client, customer, 1000)  # 10 credits at 1.00: the whole balance
    assert applied.status_code == 201
    ended = delete(client, f"/wallets/{wallet_id}")
    assert ended.status_code == 200

    rows = wallet_events(db_session, wallet_id)
    assert types_of(rows) == [
        "wallet.created",
        "wallet_transaction.created",  # the granted credits
        "wallet.updated",
        "wallet_transaction.created",  # the invoiced credits
        "wallet.depleted",
        "credit_application.applied",
        "wallet.terminated",
    ]
    assert [row["data"]["sequence"] for row in rows] == list(range(1, 8))
    for row in rows:
        assert row["id"].startswith("evt_")
        assert row["created_at"].endswith("Z")
        assert set(row) == {"id", "type", "created_at", "data"}
    # Each resource exactly as the API answered it at that moment.
    assert rows[0]["data"]["wallet"]["credits_balance"] == "0.00000"
    assert rows[1]["data"]["wallet_transaction"] == created["wallet_transactions"][0]
    assert rows[1]["data"]["wallet"] == created["wallet"]
    assert rows[2]["data"]["wallet"] == renamed.json["wallet"]  # type: ignore[index]
    application = applied.json["credit_application"]  # type: ignore[index]
    assert rows[5]["data"]["credit_application"] == application
    invoiced_id = rows[3]["data"]["wallet_transaction"]["id"]
    entry = get(client, f"/wallet_transactions/{invoiced_id}")
    assert rows[3]["data"]["wallet_transaction"] == entry.json["wallet_transaction"]  # type: ignore[index]
    assert rows[4]["data"]["wallet"]["credits_balance"] == "0.00000"
    assert rows[6]["data"]["reason"] == "manual"
    assert rows[6]["data"]["wallet"] == ended.json["wallet"]  # type: ignore[index]


def test_termination_voids_with_an_event_per_entry(
    client: FlaskClient, db_session: Session
) -> None:
    wallet_id = create_wallet(client, subscribed_customer(client), granted_credits="5")["wallet"][
        "id"
    ]
    delete(client, f"/wallets/{wallet_id}")
    rows = wallet_events(db_session, wallet_id)
    assert types_of(rows)[-2:] == ["wallet_transaction.created", "wallet.terminated"]
    voided = rows[-2]["data"]["wallet_transaction"]
    assert (voided["transaction_status"], voided["credit_amount"]) == ("voided", "5.00000")
    assert rows[-1]["data"]["reason"] == "manual"
    # A repeated DELETE changes nothing, so it publishes nothing.
    delete(client, f"/wallets/{wallet_id}")
    assert len(wallet_events(db_session, wallet_id)) == len(rows)


def test_the_expiry_sweep_publishes_reason_expired(
    client: FlaskClient, runner: FlaskCliRunner, db_session: Session
) -> None:
    expires = (datetime.now(UTC) + timedelta(days=3)).isoformat()
    ids = [
        create_wallet(
            client, subscribed_customer(client), granted_credits="2", expiration_at=expires
        )["wallet"]["id"]
        for _ in range(3)
    ]
    db_session.execute(
        update(Wallet)
        .where(Wallet.id.in_(ids))
        .values(expiration_at=datetime.now(UTC) - timedelta(hours=1))
    )
    db_session.commit()

    assert runner.invoke(args=["expire-wallets"]).exit_code == 0

    for wallet_id in ids:
        rows = wallet_events(db_session, wallet_id)
        assert types_of(rows) == [
            "wallet.created",
            "wallet_transaction.created",
            "wallet_transaction.created",
            "wallet.terminated",
        ]
        assert rows[2]["data"]["wallet_transaction"]["transaction_status"] == "voided"
        assert rows[3]["data"]["reason"] == "expired"
        assert rows[3]["data"]["wallet"]["status"] == "terminated"
        assert [row["data"]["sequence"] for row in rows] == [1, 2, 3, 4]


def test_a_paid_invoice_publishes_the_settled_entry_with_its_paid_invoice(
    client: FlaskClient, db_session: Session
) -> None:
    purchase = make_purchase(db_session)
    assert post_signed(client, invoice_event(purchase, "invoice.paid")).status_code == 200

    rows = wallet_events(db_session, purchase.wallet_id)
    assert types_of(rows)[-1] == "wallet_transaction.settled"
    settled = rows[-1]["data"]
    answer = get(client, f"/wallet_transactions/{purchase.transaction_id}").json
    assert settled["wallet_transaction"] == answer["wallet_transaction"]  # type: ignore[index]
    assert settled["wallet_transaction"]["invoice"]["status"] == "paid"
    assert settled["wallet"]["credits_balance"] == "10.00000"
    # The same event again changes nothing and publishes nothing.
    post_signed(client, invoice_event(purchase, "invoice.paid"))
    assert len(wallet_events(db_session, purchase.wallet_id)) == len(rows)


def test_a_void_invoice_publishes_the_failed_entry(
    client: FlaskClient, db_session: Session
) -> None:
    purchase = make_purchase(db_session)
    post_signed(client, invoice_event(purchase, "invoice.voided"))
    rows = wallet_events(db_session, purchase.wallet_id)
    assert types_of(rows)[-1] == "wallet_transaction.failed"
    assert rows[-1]["data"]["wallet_transaction"]["status"] == "failed"


def test_a_payment_on_an_ended_wallet_needs_attention(
    client: FlaskClient, db_session: Session
) -> None:
    purchase = make_purchase(db_session)
    db_session.execute(update(Wallet).where(Wallet.id == purchase.wallet_id).values(
        status="terminated", terminated_at=datetime.now(UTC)))  # fmt: skip
    db_session.commit()
    post_signed(client, invoice_event(purchase, "invoice.paid"))
    rows = wallet_events(db_session, purchase.wallet_id)
    assert types_of(rows)[-2:] == ["wallet_transaction.failed", "purchase.attention_required"]
    attention = rows[-1]["data"]
    assert attention["attention_reason"] == "refund_required"
    assert attention["wallet_transaction"]["id"] == purchase.transaction_id
    assert "refund" in attention["detail"]


def test_a_payment_that_cannot_be_accepted_needs_review(
    client: FlaskClient, db_session: Session
) -> None:
    purchase = make_purchase(db_session)
    post_signed(client, invoice_event(purchase, "invoice.paid", amount_paid=1))
    rows = wallet_events(db_session, purchase.wallet_id)
    assert types_of(rows)[-1] == "purchase.attention_required"
    assert rows[-1]["data"]["attention_reason"] == "review_required"
    assert rows[-1]["data"]["wallet_transaction"]["status"] == "pending"


@pytest.mark.settings(STRIPE_SECRET_KEY="")
class TestRolledBackWorkPublishesNothing:
    def test_a_refused_request_leaves_no_event(
        self, client: FlaskClient, db_session: Session
    ) -> None:
        customer = subscribed_customer(client)
        before = db_session.execute(select(Event.id)).scalars().all()
        response = post(
            client,
            "/wallets",
            {"wallet": {"external_customer_id": customer, "rate_amount": "1", "paid_credits": "5"}},
        )
        assert response.status_code == 503
        db_session.expire_all()
        assert db_session.execute(select(Event.id)).scalars().all() == before


def test_emit_refuses_an_unknown_wallet(db_session: Session) -> None:
    with pytest.raises(LookupError):
        events.emit_one(
            db_session, events.EventType.WALLET_UPDATED, "wal_missing", datetime.now(UTC)
        )


@pytest.mark.postgres
def test_concurrent_changes_to_one_wallet_get_consecutive_sequences(
    committed_app: Flask,
) -> None:
    client = committed_app.test_client()
    customer = subscribed_customer(client)
    wallet_id = create_wallet(client, customer, granted_credits="100")["wallet"]["id"]
    barrier = threading.Barrier(6)
    errors: list[BaseException] = []

    def spend() -> None:
        try:
            barrier.wait(timeout=10)
            for _ in range(3):
                response = apply(committed_app.test_client(), customer, 100, invoice=unique("inv"))
                assert response.status_code == 201, response.json
        except BaseException as exc:  # pragma: no cover - reported below
            errors.append(exc)

    threads = [threading.Thread(target=spend) for _ in range(6)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
    assert not errors, errors
    with app_session(committed_app) as session:
        rows = session.execute(
            select(Event.sequence, Event.body).where(Event.wallet_id == wallet_id)
        ).all()
    sequences = sorted(sequence for sequence, _ in rows)
    # created + granted entry, then 18 applications of two events each
    assert sequences == list(range(1, 2 + 18 * 2 + 1))
    # The wallet JSON of each application's event shows the balance it left, and
    # balances fall as sequences rise: each was read under the wallet's lock.
    applied = sorted(
        (sequence, json.loads(body)["data"]["wallet"]["credits_balance"])
        for sequence, body in rows
        if json.loads(body)["type"] == "credit_application.applied"
    )
    balances = [float(balance) for _, balance in applied]
    assert balances == sorted(balances, reverse=True)
    assert len(set(balances)) == 18


# --- credits following the money back out (section 7) ----------------------------------


@pytest.mark.usefixtures("stripe_http")
def test_a_refund_after_consumption_publishes_the_take_back_and_the_shortfall(
    client: FlaskClient, db_session: Session, stub: StripeStub
) -> None:
    bought = settled_purchase(client, db_session, stub, paid="10")
    spend(client, customer_of(db_session, bought), 700)
    deliver_object(client, stub, stub.refund_payment(bought.invoice_id or ""), "refund.created")

    rows = wallet_events(db_session, bought.wallet_id)
    assert types_of(rows)[-3:] == [
        "wallet_transaction.created",
        "wallet.depleted",
        "purchase.attention_required",
    ]
    taken = rows[-3]["data"]["wallet_transaction"]
    assert (taken["transaction_status"], taken["credit_amount"]) == ("refunded", "3.00000")
    attention = rows[-1]["data"]
    assert attention["attention_reason"] == "refunded_after_consumption"
    assert attention["wallet_transaction"]["id"] == bought.transaction_id
    sequences = [row["data"]["sequence"] for row in rows]
    assert sequences == list(range(1, len(rows) + 1))


@pytest.mark.usefixtures("stripe_http")
def test_a_won_dispute_publishes_the_hold_and_the_reinstatement(
    client: FlaskClient, db_session: Session, stub: StripeStub
) -> None:
    bought = settled_purchase(client, db_session, stub, paid="10")
    dispute = stub.dispute(bought.invoice_id or "")
    deliver_object(client, stub, dispute, "charge.dispute.created")
    deliver_object(client, stub, stub.close_dispute(dispute["id"], "won"), "charge.dispute.closed")

    rows = wallet_events(db_session, bought.wallet_id)
    created = [
        row["data"]["wallet_transaction"]["transaction_status"]
        for row in rows
        if row["type"] == "wallet_transaction.created"
    ]
    assert created[-2:] == ["disputed", "reinstated"]
    assert rows[-1]["data"]["wallet"]["credits_balance"] == "10.00000"


def test_an_event_carries_rules_threshold_name_and_metadata_as_the_api_answers_them(
    client: FlaskClient, db_session: Session
) -> None:
    """The events read their rows without the ORM: every part of a wallet and an entry
    (rules, threshold, pending credits, an entry's name and metadata) as the API has it."""
    customer = subscribed_customer(client)
    created = create_wallet(
        client,
        customer,
        name="main",
        low_balance_threshold_credits="3",
        recurring_transaction_rules=[
            {"trigger": "threshold", "threshold_credits": "2", "method": "fixed",
             "granted_credits": "1"},
            {"trigger": "interval", "interval": "weekly", "method": "target",
             "target_credits": "9"},
        ],
    )  # fmt: skip
    wallet_id = created["wallet"]["id"]
    topped = post(
        client,
        "/wallet_transactions",
        {"wallet_transaction": {"wallet_id": wallet_id, "granted_credits": "4.5",
                                "name": "goodwill",
                                "metadata": [{"key": "ticket", "value": "T-1"}]}},
    )  # fmt: skip
    assert topped.status_code == 201, topped.json
    [entry] = topped.json["wallet_transactions"]  # type: ignore[index]

    rows = wallet_events(db_session, wallet_id)
    assert (
        rows[0]["data"]["wallet"]["recurring_transaction_rules"]
        == (created["wallet"]["recurring_transaction_rules"])
    )
    assert len(rows[0]["data"]["wallet"]["recurring_transaction_rules"]) == 2
    [granted] = [
        row for row in rows if row["data"].get("wallet_transaction", {}).get("id") == entry["id"]
    ]
    assert granted["data"]["wallet_transaction"] == entry
    assert granted["data"]["wallet_transaction"]["metadata"] == [{"key": "ticket", "value": "T-1"}]
    wallet_now = get(client, f"/wallets/{wallet_id}").json["wallet"]  # type: ignore[index]
    assert granted["data"]["wallet"] == wallet_now
