"""Threshold top-ups: started in the credit application's transaction, never twice while
unpaid, completed by the worker's duty, paused when they fail."""

from __future__ import annotations

from decimal import Decimal
from typing import Any

import pytest
import responses
from flask import Flask
from flask.testing import FlaskClient, FlaskCliRunner
from sqlalchemy import event, select
from sqlalchemy.engine import Connection
from sqlalchemy.orm import Session

from gateway import topups
from gateway.db import get_session
from gateway.models import (
    EntrySource,
    Purchase,
    PurchaseStatus,
    RecurringTransactionRule,
    WalletTransaction,
)
from gateway.providers import get_provider
from gateway.providers.stripe.sandbox import StripeStub
from tests.support.api import (
    applied,
    get,
    put,
    wallet_with_rule,
)
from tests.support.purchases import settled_purchase
from tests.support.stripe import routes, sent
from tests.support.webhooks import post_signed


def automatic_entries(session: Session, wallet_id: str) -> list[WalletTransaction]:
    return list(
        session.execute(
            select(WalletTransaction)
            .where(
                WalletTransaction.wallet_id == wallet_id,
                WalletTransaction.source != EntrySource.MANUAL,
            )
            .order_by(WalletTransaction.created_at, WalletTransaction.transaction_status)
            .execution_options(populate_existing=True)
        ).scalars()
    )


def the_rule(session: Session, wallet_id: str) -> RecurringTransactionRule:
    return session.execute(
        select(RecurringTransactionRule)
        .where(RecurringTransactionRule.wallet_id == wallet_id)
        .execution_options(populate_existing=True)
    ).scalar_one()


def complete(app: Flask) -> topups.CompletionRun:
    """The worker's duty: make the invoices of automatic top-ups."""
    with app.app_context():
        return topups.complete_automatic_purchases(get_session(), get_provider(), limit=100)


FIXED = {"trigger": "threshold", "threshold_credits": "10", "paid_credits": "50"}


def test_crossing_the_threshold_starts_one_purchase_without_calling_stripe(
    client: FlaskClient, db_session: Session, stripe_http: responses.RequestsMock
) -> None:
    customer, wallet_id = wallet_with_rule(client, FIXED, granted="30")

    applied(client, customer, 1500, invoice_type="usage")  # 30 -> 15: above the threshold, nothing
    assert automatic_entries(db_session, wallet_id) == []
    applied(client, customer, 500, invoice_type="usage")  # 15 -> 10: at the threshold

    [entry] = automatic_entries(db_session, wallet_id)
    assert (entry.source, entry.transaction_status, entry.status) == (
        "threshold",
        "purchased",
        "pending",
    )
    assert entry.credit_amount == Decimal("50")
    assert entry.rule_id == the_rule(db_session, wallet_id).id
    purchase = db_session.execute(select(Purchase)).scalar_one()
    assert purchase.status == PurchaseStatus.CREATING
    assert purchase.collection_method == "charge_automatically"
    assert routes(stripe_http) == []  # the request answered without Stripe
    wallet = get(client, f"/wallets/{wallet_id}").json["wallet"]
    assert wallet["pending_credits"] == "50.00000"
    listed = get(
        client, f"/wallets/{wallet_id}/wallet_transactions", transaction_status="purchased"
    )
    assert listed.json["wallet_transactions"][0]["source"] == "threshold"


def test_a_credit_application_reads_its_wallets_rules_once(
    client: FlaskClient, connection: Connection
) -> None:
    """The threshold check takes the rules the answer's events read, under the same
    lock, in the same transaction: no second SELECT of them while the wallet is locked
    (on a busy wallet, every statement under the lock is one more wait for the next)."""
    customer, _ = wallet_with_rule(client, FIXED, granted="30")
    statements: list[str] = []

    def sent(_conn: Any, _cursor: Any, statement: str, *_args: Any) -> None:
        if "recurring_transaction_rules" in statement:
            statements.append(" ".join(statement.split()[:2]))

    event.listen(connection, "before_cursor_execute", sent)
    try:
        applied(client, customer, 1500, invoice_type="usage")
    finally:
        event.remove(connection, "before_cursor_execute", sent)

    assert statements == ["SELECT wallet_transactions.id"]  # the events' read, rules joined


def test_no_second_top_up_while_the_first_is_unpaid(
    client: FlaskClient, db_session: Session, stripe_http: responses.RequestsMock
) -> None:
    rule = {"trigger": "threshold", "threshold_credits": "10", "paid_credits": "5"}
    customer, wallet_id = wallet_with_rule(client, rule, granted="12")

    applied(client, customer, 300, invoice_type="usage")  # 12 -> 9: buys 5 (9 + 5 pending = 14)
    applied(client, customer, 300, invoice_type="usage")  # 9 -> 6: 6 + 5 = 11 > 10
    applied(
        client, customer, 300, invoice_type="usage"
    )  # 6 -> 3: 3 + 5 = 8 <= 10, but the rule's top-up is unpaid

    assert len(automatic_entries(db_session, wallet_id)) == 1


def test_target_buys_up_to_the_target_counting_pending_credits(
    client: FlaskClient, db_session: Session, stripe_http: responses.RequestsMock
) -> None:
    rule = {"trigger": "threshold", "threshold_credits": "10", "method": "target",
            "target_credits": "40"}  # fmt: skip
    customer, wallet_id = wallet_with_rule(client, rule, granted="30")

    applied(client, customer, 2250, invoice_type="usage")  # 30 -> 7.5

    [entry] = automatic_entries(db_session, wallet_id)
    assert entry.credit_amount == Decimal("32.5")


def test_fixed_rule_grants_its_free_credits_at_once(
    client: FlaskClient, db_session: Session, stripe_http: responses.RequestsMock
) -> None:
    rule = {"trigger": "threshold", "threshold_credits": "10", "paid_credits": "50",
            "granted_credits": "5"}  # fmt: skip
    customer, wallet_id = wallet_with_rule(client, rule, granted="30")

    applied(client, customer, 2500, invoice_type="usage")  # 30 -> 5, then 5 granted

    entries = automatic_entries(db_session, wallet_id)
    assert sorted((e.transaction_status, e.status) for e in entries) == [
        ("granted", "settled"),
        ("purchased", "pending"),
    ]
    assert get(client, f"/wallets/{wallet_id}").json["wallet"]["credits_balance"] == "10.00000"


@pytest.mark.parametrize("settings_overrides", [{"STRIPE_COLLECTION_METHOD": "send_invoice"}])
def test_worker_completes_it_charged_automatically_then_payment_rearms_the_rule(
    app: Flask,
    client: FlaskClient,
    db_session: Session,
    stub: StripeStub,
    stripe_http: responses.RequestsMock,
) -> None:
    customer, wallet_id = wallet_with_rule(client, FIXED, granted="30")
    applied(client, customer, 2000, invoice_type="usage")  # 30 -> 10

    run = complete(app)

    assert (run.completed, run.rejected, run.unavailable) == (1, 0, False)
    [created] = [r for r in sent(stripe_http) if r.path == "/v1/invoices"]
    assert created.params["collection_method"] == "charge_automatically"
    assert "days_until_due" not in created.params
    purchase = db_session.execute(
        select(Purchase).execution_options(populate_existing=True)
    ).scalar_one()
    assert created.headers["Idempotency-Key"] == f"{purchase.id}:invoice"
    assert purchase.status == PurchaseStatus.OPEN
    assert complete(app).completed == 0  # nothing left to do

    stub.mark_paid(purchase.provider_invoice_id or "")
    assert post_signed(client, stub.event(purchase.provider_invoice_id or "")).status_code == 200
    wallet = get(client, f"/wallets/{wallet_id}").json["wallet"]
    assert (wallet["credits_balance"], wallet["pending_credits"]) == ("60.00000", "0.00000")

    applied(client, customer, 5000, invoice_type="usage")  # 60 -> 10: a new crossing, a new top-up
    assert len(automatic_entries(db_session, wallet_id)) == 2


@pytest.mark.parametrize(
    ("fail", "event_type", "reason"),
    [
        (StripeStub.mark_uncollectible, "invoice.marked_uncollectible", "invoice_uncollectible"),
        (None, "invoice.payment_failed", "payment_failed"),
    ],
)
def test_a_failed_top_up_pauses_its_rule_until_a_put_updates_it(
    app: Flask,
    client: FlaskClient,
    *,
    db_session: Session,
    stub: StripeStub,
    stripe_http: responses.RequestsMock,
    fail: Any,
    event_type: str,
    reason: str,
) -> None:
    rule = {"trigger": "threshold", "threshold_credits": "10", "paid_credits": "5"}
    customer, wallet_id = wallet_with_rule(client, rule, granted="30")
    applied(client, customer, 2100, invoice_type="usage")  # 30 -> 9
    complete(app)
    invoice_id = db_session.execute(select(Purchase.provider_invoice_id)).scalar_one()
    assert invoice_id is not None
    if fail is not None:
        fail(stub, invoice_id)

    assert post_signed(client, stub.event(invoice_id, event_type)).status_code == 200

    paused = get(client, f"/wallets/{wallet_id}").json["wallet"]["recurring_transaction_rules"][0]
    assert paused["status"] == "paused"
    assert paused["paused_reason"].startswith(reason)
    if event_type == "invoice.payment_failed":
        stub.mark_uncollectible(invoice_id)  # then Stripe gives up
        post_signed(client, stub.event(invoice_id, "invoice.marked_uncollectible"))
    applied(client, customer, 500, invoice_type="usage")  # 9 -> 4: a paused rule buys nothing
    assert len(automatic_entries(db_session, wallet_id)) == 1

    resumed = put(
        client, f"/wallets/{wallet_id}", {"wallet": {"recurring_transaction_rules": [rule]}}
    )
    assert resumed.json["wallet"]["recurring_transaction_rules"][0]["status"] == "active"
    assert resumed.json["wallet"]["recurring_transaction_rules"][0]["paused_reason"] is None
    applied(client, customer, 100, invoice_type="usage")  # 4 -> 3
    assert len(automatic_entries(db_session, wallet_id)) == 2


def test_a_top_up_the_provider_refuses_fails_and_pauses_its_rule(
    app: Flask,
    client: FlaskClient,
    db_session: Session,
    stub: StripeStub,
    stripe_http: responses.RequestsMock,
) -> None:
    customer, wallet_id = wallet_with_rule(client, FIXED, granted="30")
    applied(client, customer, 2000, invoice_type="usage")
    stub.fail_next("POST", "/v1/invoices", status=400)

    run = complete(app)

    assert run.rejected == 1
    assert the_rule(db_session, wallet_id).status == "paused"
    [entry] = automatic_entries(db_session, wallet_id)
    assert entry.status == "failed"


def test_the_worker_leaves_automatic_purchases_for_later_when_stripe_is_down(
    app: Flask,
    client: FlaskClient,
    db_session: Session,
    stub: StripeStub,
    stripe_http: responses.RequestsMock,
) -> None:
    customer, wallet_id = wallet_with_rule(client, FIXED, granted="30")
    applied(client, customer, 2000, invoice_type="usage")
    stub.fail_next("POST", "/v1/customers", status=503)

    assert complete(app).unavailable is True
    assert db_session.execute(select(Purchase.status)).scalar_one() == PurchaseStatus.CREATING
    assert the_rule(db_session, wallet_id).status == "active"

    assert complete(app).completed == 1
    assert len([r for r in sent(stripe_http) if r.path == "/v1/invoices"]) == 1


def test_an_ended_wallet_pauses_its_rules(client: FlaskClient, db_session: Session) -> None:
    _customer, wallet_id = wallet_with_rule(client, FIXED, granted="30")

    client.delete(f"/api/v1/wallets/{wallet_id}", headers={"Authorization": "Bearer test-key-1"})

    rule = the_rule(db_session, wallet_id)
    assert (rule.status, rule.paused_reason) == ("paused", "wallet_terminated")


def test_a_refund_taking_credits_back_past_the_threshold_starts_a_top_up(
    client: FlaskClient, db_session: Session, stub: StripeStub, stripe_http: responses.RequestsMock
) -> None:
    bought = settled_purchase(client, db_session, stub, paid="10")
    rule = {"trigger": "threshold", "threshold_credits": "5", "paid_credits": "20"}
    put(client, f"/wallets/{bought.wallet_id}", {"wallet": {"recurring_transaction_rules": [rule]}})
    refund = stub.refund_payment(bought.invoice_id or "")

    assert post_signed(client, stub.object_event(refund, "refund.created")).status_code == 200

    [entry] = automatic_entries(db_session, bought.wallet_id)
    assert (entry.transaction_status, entry.status, entry.credit_amount) == (
        "purchased",
        "pending",
        Decimal("20"),
    )


def test_gateway_worker_once_buys_due_interval_top_ups_and_makes_their_invoices(
    runner: FlaskCliRunner,
    client: FlaskClient,
    db_session: Session,
    stripe_http: responses.RequestsMock,
) -> None:
    monthly = {"trigger": "interval", "interval": "monthly", "paid_credits": "20"}
    customer, wallet_id = wallet_with_rule(client, FIXED, granted="30")
    put(
        client,
        f"/wallets/{wallet_id}",
        {"wallet": {"recurring_transaction_rules": [FIXED, monthly]}},
    )
    applied(client, customer, 2000, invoice_type="usage")  # 30 -> 10: the threshold's top-up

    result = runner.invoke(args=["worker", "--once"])

    assert result.exit_code == 0, result.output
    assert "1 interval top-up(s) started" in result.output
    assert "2 top-up invoice(s) made" in result.output
    statuses = db_session.execute(
        select(Purchase.status, Purchase.collection_method).execution_options(
            populate_existing=True
        )
    ).all()
    assert sorted(statuses) == [("open", "charge_automatically")] * 2
