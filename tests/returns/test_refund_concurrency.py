"""Refunds, credit notes and disputes delivered concurrently from real threads on
PostgreSQL take credits back exactly once."""

from __future__ import annotations

from decimal import Decimal
from typing import Any

import pytest
from flask import Flask
from sqlalchemy import select

from gateway.models import Purchase, PurchaseStatus, TransactionStatus, WalletTransaction
from gateway.providers.stripe.sandbox import StripeStub
from tests.support.purchases import settled_purchase
from tests.support.reconcile import race_with_webhooks
from tests.support.threads import app_session
from tests.support.webhooks import (
    PurchaseRow,
    deliver_at_once,
    encode,
    invoice_object,
    make_purchase,
    post_signed,
    state_of,
    stripe_event,
)

pytestmark = pytest.mark.postgres

PAYMENT = "pi_concurrent"


def settled(app: Flask, payment_id: str = PAYMENT) -> PurchaseRow:
    """A purchase of 10 credits (1000 cents) settled by an invoice that names its
    payment, so refunds map to it without asking Stripe."""
    with app_session(app) as session:
        purchase = make_purchase(session, credits=Decimal("10"), rate=Decimal("1"))
    invoice = {**invoice_object(purchase, "paid"), "payment_intent": payment_id}
    client = app.test_client()
    assert post_signed(client, stripe_event("invoice.paid", invoice)).status_code == 200
    return purchase


def refund(refund_id: str, amount: int, payment_id: str = PAYMENT) -> dict[str, Any]:
    return {
        "id": refund_id,
        "object": "refund",
        "amount": amount,
        "currency": "usd",
        "payment_intent": payment_id,
        "status": "succeeded",
    }


def taken_back(session: Any, wallet_id: str) -> list[Decimal]:
    return list(
        session.execute(
            select(WalletTransaction.credit_amount).where(
                WalletTransaction.wallet_id == wallet_id,
                WalletTransaction.transaction_status.in_(
                    [TransactionStatus.REFUNDED, TransactionStatus.DISPUTED]
                ),
            )
        ).scalars()
    )


def test_the_same_refund_event_ten_times_concurrently_takes_back_once(
    committed_app: Flask,
) -> None:
    purchase = settled(committed_app)
    body = encode(stripe_event("refund.created", refund("re_once", 400)))

    answers = deliver_at_once(committed_app, [body] * 10)

    assert [status for status, _ in answers] == [200] * 10, answers

    def check(session: Any) -> None:
        assert taken_back(session, purchase.wallet_id) == [Decimal("4")]
        assert state_of(session, purchase.id).balance == Decimal("6")

    with app_session(committed_app) as session:
        check(session)


def test_every_event_of_three_partial_refunds_racing_adds_up_exactly(
    committed_app: Flask,
) -> None:
    purchase = settled(committed_app)
    refunds = [refund(f"re_part{index}", 333 + (index == 0)) for index in range(3)]
    bodies = [
        encode(stripe_event(event_type, data))
        for data in refunds
        for event_type in ("refund.created", "refund.updated", "refund.created")
    ]
    charge = {
        "id": "ch_concurrent",
        "object": "charge",
        "payment_intent": PAYMENT,
        "refunds": {"object": "list", "data": refunds, "has_more": False},
    }
    bodies.append(encode(stripe_event("charge.refunded", charge)))

    answers = deliver_at_once(committed_app, bodies)

    assert [status for status, _ in answers] == [200] * len(bodies), answers

    def check(session: Any) -> None:
        # One entry per increase (how many depends on who won the lock: the charge
        # lists all three), adding up to exactly the purchased credits.
        taken = taken_back(session, purchase.wallet_id)
        assert 1 <= len(taken) <= 3 and sum(taken) == Decimal("10")
        state = state_of(session, purchase.id)
        assert state.balance == 0 and state.purchase_status == PurchaseStatus.REFUNDED

    with app_session(committed_app) as session:
        check(session)


def test_a_credit_note_and_its_refund_racing_count_once(committed_app: Flask) -> None:
    purchases = [settled(committed_app, payment_id=f"pi_note{index}") for index in range(4)]
    bodies = []
    for index, purchase in enumerate(purchases):
        note = {
            "id": f"cn_race{index}",
            "object": "credit_note",
            "invoice": purchase.invoice_id,
            "amount": 500,
            "post_payment_amount": 500,
            "currency": "usd",
            "type": "post_payment",
            "status": "issued",
            "refunds": [{"refund": f"re_note{index}", "amount_refunded": 500}],
        }
        bodies.append(encode(stripe_event("credit_note.created", note)))
        made = refund(f"re_note{index}", 500, payment_id=f"pi_note{index}")
        bodies.append(encode(stripe_event("refund.created", made)))

    answers = deliver_at_once(committed_app, bodies)

    assert [status for status, _ in answers] == [200] * len(bodies), answers

    def check(session: Any) -> None:
        for purchase in purchases:
            assert taken_back(session, purchase.wallet_id) == [Decimal("5")]
            row = session.get_one(Purchase, purchase.id)
            assert row.returned_cents == 500

    with app_session(committed_app) as session:
        check(session)


@pytest.mark.usefixtures("stripe_http")
def test_reconcile_racing_refund_webhooks_takes_each_refund_back_once(
    committed_app: Flask, stub: StripeStub
) -> None:
    """Purchases refunded at Stripe every way (on the payment, through a credit note,
    by a credit to the balance): reconciliation applies them while the same refunds and
    credit notes arrive as webhooks, repeatedly, from several threads."""
    with app_session(committed_app) as session:
        client = committed_app.test_client()
        bought = [settled_purchase(client, session, stub, paid="10") for _ in range(4)]
    objects: list[tuple[dict[str, Any], str]] = []
    for index, purchase in enumerate(bought):
        invoice_id = purchase.invoice_id or ""
        direct = stub.refund_payment(invoice_id, amount=300)
        objects.append((direct, "refund.created"))
        if index % 2:
            note = stub.credit_note(invoice_id, 200, refund=True)
            objects.append((stub.refunds[note["refunds"][0]["refund"]], "refund.created"))
        else:
            note = stub.credit_note(invoice_id, 200)
        objects.append((note, "credit_note.created"))
    _, statuses = race_with_webhooks(
        committed_app,
        stub,
        "/v1/invoices",
        lambda _round: [stub.object_event(obj, event_type) for obj, event_type in objects],
        senders=3,
    )

    assert set(statuses) == {200}

    def check(session: Any) -> None:
        for purchase in bought:
            assert taken_back(session, purchase.wallet_id) != []
            assert sum(taken_back(session, purchase.wallet_id)) == Decimal("5")
            state = state_of(session, purchase.purchase_id)
            assert state.balance == Decimal("5")
            assert session.get_one(Purchase, purchase.purchase_id).returned_cents == 500

    with app_session(committed_app) as session:
        check(session)


def reinstated(session: Any, wallet_id: str) -> list[Decimal]:
    return list(
        session.execute(
            select(WalletTransaction.credit_amount).where(
                WalletTransaction.wallet_id == wallet_id,
                WalletTransaction.transaction_status == TransactionStatus.REINSTATED,
            )
        ).scalars()
    )


def test_a_failed_refund_reported_every_way_at_once_gives_its_credits_back_once(
    committed_app: Flask,
) -> None:
    purchase = settled(committed_app)
    made = refund("re_undone", 1000)
    first = post_signed(committed_app.test_client(), stripe_event("refund.created", made))
    assert first.status_code == 200
    failed = {**made, "status": "failed", "failure_reason": "expired_or_canceled_card"}
    bodies = [
        encode(stripe_event(event_type, data))
        for event_type, data in (
            ("refund.failed", failed),
            ("refund.updated", failed),
            ("charge.refund.updated", failed),
            ("refund.created", made),  # its older state, late
        )
        for _ in range(3)
    ]

    answers = deliver_at_once(committed_app, bodies)

    assert [status for status, _ in answers] == [200] * len(bodies), answers

    def check(session: Any) -> None:
        assert taken_back(session, purchase.wallet_id) == [Decimal("10")]
        assert reinstated(session, purchase.wallet_id) == [Decimal("10")]
        state = state_of(session, purchase.id)
        assert (state.balance, state.purchase_status) == (Decimal("10"), PurchaseStatus.SETTLED)
        assert session.get_one(Purchase, purchase.id).returned_cents == 0

    with app_session(committed_app) as session:
        check(session)


def test_a_voided_credit_note_racing_its_late_issue_gives_back_once(
    committed_app: Flask,
) -> None:
    purchase = settled(committed_app, payment_id="pi_void")
    note = {
        "id": "cn_void",
        "object": "credit_note",
        "invoice": purchase.invoice_id,
        "amount": 300,
        "post_payment_amount": 300,
        "currency": "usd",
        "type": "post_payment",
        "status": "issued",
        "refunds": [],
    }
    first = post_signed(committed_app.test_client(), stripe_event("credit_note.created", note))
    assert first.status_code == 200
    voided = {**note, "status": "void"}
    bodies = [encode(stripe_event("credit_note.voided", voided)) for _ in range(6)]
    bodies += [encode(stripe_event("credit_note.created", note)) for _ in range(4)]

    answers = deliver_at_once(committed_app, bodies)

    assert [status for status, _ in answers] == [200] * len(bodies), answers

    def check(session: Any) -> None:
        assert taken_back(session, purchase.wallet_id) == [Decimal("3")]
        assert reinstated(session, purchase.wallet_id) == [Decimal("3")]
        assert state_of(session, purchase.id).balance == Decimal("10")
        assert session.get_one(Purchase, purchase.id).returned_cents == 0

    with app_session(committed_app) as session:
        check(session)


@pytest.mark.usefixtures("stripe_http")
def test_reconcile_racing_dispute_webhooks_holds_and_gives_back_once(
    committed_app: Flask, stub: StripeStub
) -> None:
    """Disputes opened and closed at Stripe (won for some purchases, lost for others):
    reconciliation applies them while their `created` and `closed` events arrive,
    repeatedly and in any order, from several threads."""
    with app_session(committed_app) as session:
        client = committed_app.test_client()
        bought = [settled_purchase(client, session, stub, paid="10") for _ in range(4)]
    objects: list[tuple[dict[str, Any], str]] = []
    outcomes: dict[str, str] = {}
    for index, purchase in enumerate(bought):
        opened = stub.dispute(purchase.invoice_id or "")
        closed = stub.close_dispute(opened["id"], "won" if index % 2 else "lost")
        outcomes[purchase.purchase_id] = closed["status"]
        objects += [(opened, "charge.dispute.created"), (closed, "charge.dispute.closed")]
    _, statuses = race_with_webhooks(
        committed_app,
        stub,
        "/v1/disputes",
        lambda _round: [stub.object_event(obj, event_type) for obj, event_type in objects],
        senders=3,
    )

    assert set(statuses) == {200}

    def check(session: Any) -> None:
        for purchase in bought:
            held = taken_back(session, purchase.wallet_id)
            back = reinstated(session, purchase.wallet_id)
            # Held at most once and given back at most once, whichever event came
            # first; what stays out is all of it for a lost dispute, none for a won one.
            assert len(held) <= 1 and len(back) <= 1
            won = outcomes[purchase.purchase_id] == "won"
            assert sum(held) - sum(back) == (0 if won else Decimal("10"))
            state = state_of(session, purchase.purchase_id)
            assert state.balance == (Decimal("10") if won else 0)
            row = session.get_one(Purchase, purchase.purchase_id)
            assert row.dispute_status == ("won" if won else "lost")

    with app_session(committed_app) as session:
        check(session)
