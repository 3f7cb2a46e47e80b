"""Credits follow the money back out (contract section 7): refunds, credit notes and
disputes delivered as Stripe events take purchased credits back, exactly once, in any
order. Stripe is the in-process stub behind `responses`; purchases are made through the
API and paid at the stub, and events carry the stub's objects as Stripe sends them.
"""

from __future__ import annotations

from decimal import Decimal
from typing import Any

import pytest
from flask.testing import FlaskClient
from sqlalchemy import select
from sqlalchemy.orm import Session

from gateway import ledger
from gateway.models import (
    Purchase,
    PurchaseStatus,
    TransactionStatus,
    Wallet,
    WalletTransaction,
    WebhookEventStatus,
)
from gateway.providers.stripe.sandbox import StripeStub
from tests.support.api import delete, get, spend
from tests.support.events import types_of, wallet_events
from tests.support.purchases import (
    Bought,
    buy_wallet,
    customer_of,
    refund_required_purchase,
    settled_purchase,
)
from tests.support.webhooks import deliver_object, post_signed, stored_event

pytestmark = pytest.mark.usefixtures("stripe_http")

D = Decimal


# --- helpers ---------------------------------------------------------------------------


def purchase_row(session: Session, purchase_id: str) -> Purchase:
    session.expire_all()
    return session.get_one(Purchase, purchase_id)


def balance(session: Session, wallet_id: str) -> Decimal:
    session.expire_all()
    wallet = session.get_one(Wallet, wallet_id)
    assert wallet.credits_balance == ledger.ledger_balance(session, wallet_id)
    assert wallet.credits_balance >= 0
    return wallet.credits_balance


def settled_credits(session: Session, wallet_id: str, kind: TransactionStatus) -> list[Decimal]:
    session.expire_all()
    return list(
        session.execute(
            select(WalletTransaction.credit_amount)
            .where(
                WalletTransaction.wallet_id == wallet_id,
                WalletTransaction.transaction_status == kind,
                WalletTransaction.status == "settled",
            )
            .order_by(WalletTransaction.created_at, WalletTransaction.id)
        ).scalars()
    )


def invoice_of(client: FlaskClient, bought: Bought) -> dict[str, Any]:
    response = get(client, f"/wallet_transactions/{bought.transaction_id}")
    assert response.status_code == 200
    block: dict[str, Any] = response.json["wallet_transaction"]["invoice"]
    return block


# --- refunds ---------------------------------------------------------------------------


def test_a_full_refund_takes_the_purchased_credits_back(
    client: FlaskClient, db_session: Session, stub: StripeStub
) -> None:
    bought = settled_purchase(client, db_session, stub, paid="10")
    refund = stub.refund_payment(bought.invoice_id or "")

    assert deliver_object(client, stub, refund, "refund.created") == "processed"

    assert settled_credits(db_session, bought.wallet_id, TransactionStatus.REFUNDED) == [D("10")]
    assert balance(db_session, bought.wallet_id) == 0
    purchase = purchase_row(db_session, bought.purchase_id)
    assert purchase.status == PurchaseStatus.REFUNDED
    assert (purchase.returned_cents, purchase.shortfall_credits) == (1000, 0)
    block = invoice_of(client, bought)
    assert (block["status"], block["returned_cents"], block["dispute_status"]) == (
        "refunded",
        1000,
        None,
    )
    listed = get(
        client, f"/wallets/{bought.wallet_id}/wallet_transactions", transaction_status="refunded"
    )
    assert [entry["transaction_type"] for entry in listed.json["wallet_transactions"]] == [
        "outbound"
    ]


def test_partial_refunds_add_up_to_exactly_the_purchased_credits(
    client: FlaskClient, db_session: Session, stub: StripeStub
) -> None:
    # 10 credits at 0.333 bill 333 cents: each third is 3.333333... credits.
    bought = settled_purchase(client, db_session, stub, paid="10", rate_amount="0.333")
    for _ in range(3):
        refund = stub.refund_payment(bought.invoice_id or "", amount=111)
        deliver_object(client, stub, refund, "refund.created")

    taken = settled_credits(db_session, bought.wallet_id, TransactionStatus.REFUNDED)
    # The running total rounds: 3.33333, 6.66667, then exactly 10.
    assert taken == [D("3.33333"), D("3.33334"), D("3.33333")]
    assert sum(taken) == D("10")
    assert purchase_row(db_session, bought.purchase_id).status == PurchaseStatus.REFUNDED
    assert balance(db_session, bought.wallet_id) == 0


def test_repeats_and_every_event_of_one_refund_count_it_once(
    client: FlaskClient, db_session: Session, stub: StripeStub
) -> None:
    bought = settled_purchase(client, db_session, stub, paid="10")
    refund = stub.refund_payment(bought.invoice_id or "", amount=400)
    event = stub.object_event(refund, "refund.created")
    post_signed(client, event)
    post_signed(client, event)  # the same delivery again
    deliver_object(client, stub, refund, "refund.updated")  # another event, same refund
    pi = stub.payment_intent_of(bought.invoice_id or "") or ""
    deliver_object(client, stub, stub.charge_of(pi), "charge.refunded")
    # charge.refunded without its refunds listed: the service lists them itself.
    deliver_object(client, stub, stub.charge_of(pi, list_refunds=False), "charge.refunded")

    assert settled_credits(db_session, bought.wallet_id, TransactionStatus.REFUNDED) == [D("4")]
    assert balance(db_session, bought.wallet_id) == D("6")
    purchase = purchase_row(db_session, bought.purchase_id)
    assert purchase.status == PurchaseStatus.SETTLED
    assert purchase.returned_cents == 400


def test_a_pending_refund_counts_once_it_succeeds(
    client: FlaskClient, db_session: Session, stub: StripeStub
) -> None:
    bought = settled_purchase(client, db_session, stub, paid="10")
    refund = stub.refund_payment(bought.invoice_id or "", amount=500, status="pending")
    assert deliver_object(client, stub, refund, "refund.created") == "processed"
    assert balance(db_session, bought.wallet_id) == D("10")

    deliver_object(client, stub, {**refund, "status": "succeeded"}, "refund.updated")

    assert balance(db_session, bought.wallet_id) == D("5")


def test_a_refund_before_the_payment_event_takes_the_credits_when_it_settles(
    client: FlaskClient, db_session: Session, stub: StripeStub
) -> None:
    bought = buy_wallet(client, db_session, paid="10")
    stub.mark_paid(bought.invoice_id or "")
    refund = stub.refund_payment(bought.invoice_id or "", amount=250)

    assert deliver_object(client, stub, refund, "refund.created") == "processed"
    assert balance(db_session, bought.wallet_id) == 0  # nothing credited yet
    assert purchase_row(db_session, bought.purchase_id).returned_cents == 250

    post_signed(client, stub.event(bought.invoice_id or "", "invoice.paid"))

    assert settled_credits(db_session, bought.wallet_id, TransactionStatus.REFUNDED) == [D("2.5")]
    assert balance(db_session, bought.wallet_id) == D("7.5")


def test_a_refund_above_what_was_paid_is_capped(
    client: FlaskClient, db_session: Session, stub: StripeStub
) -> None:
    bought = settled_purchase(client, db_session, stub, paid="10")
    pi = stub.payment_intent_of(bought.invoice_id or "") or ""
    deliver_object(client, stub, stub.refund_payment_intent(pi, 800), "refund.created")
    deliver_object(client, stub, stub.refund_payment_intent(pi, 800), "refund.created")

    assert settled_credits(db_session, bought.wallet_id, TransactionStatus.REFUNDED) == [
        D("8"),
        D("2"),
    ]
    purchase = purchase_row(db_session, bought.purchase_id)
    assert (purchase.returned_cents, purchase.status) == (1000, PurchaseStatus.REFUNDED)


def test_credits_already_spent_are_a_shortfall_and_the_balance_stays_at_zero(
    client: FlaskClient, db_session: Session, stub: StripeStub
) -> None:
    bought = settled_purchase(client, db_session, stub, paid="10")
    spend(client, customer_of(db_session, bought), 700)  # 7 of the 10 credits
    refund = stub.refund_payment(bought.invoice_id or "")

    deliver_object(client, stub, refund, "refund.created")

    assert settled_credits(db_session, bought.wallet_id, TransactionStatus.REFUNDED) == [D("3")]
    assert balance(db_session, bought.wallet_id) == 0
    purchase = purchase_row(db_session, bought.purchase_id)
    assert purchase.shortfall_credits == D("7")
    assert purchase.attention_reason == "refunded_after_consumption"
    assert purchase.status == PurchaseStatus.REFUNDED


def test_a_refund_after_the_wallet_ended_does_not_call_its_credits_consumed(
    client: FlaskClient, db_session: Session, stub: StripeStub
) -> None:
    # A customer leaves (their credits are voided), then gets their money back.
    bought = settled_purchase(client, db_session, stub, paid="10")
    assert delete(client, f"/wallets/{bought.wallet_id}").status_code == 200

    deliver_object(client, stub, stub.refund_payment(bought.invoice_id or ""), "refund.created")

    purchase = purchase_row(db_session, bought.purchase_id)
    assert (purchase.status, purchase.shortfall_credits) == (PurchaseStatus.REFUNDED, D("10"))
    published = wallet_events(db_session, bought.wallet_id)[-1]
    assert published["type"] == "purchase.attention_required"
    detail = published["data"]["detail"]
    assert "has ended (spent before it ended, or voided when it did)" in detail
    assert "already consumed" not in detail


def test_a_refund_of_a_refund_required_purchase_resolves_it(
    client: FlaskClient, db_session: Session, stub: StripeStub
) -> None:
    bought = refund_required_purchase(client, db_session, stub)

    deliver_object(client, stub, stub.refund_payment(bought.invoice_id or ""), "refund.created")

    purchase = purchase_row(db_session, bought.purchase_id)
    assert (purchase.status, purchase.returned_cents) == (PurchaseStatus.REFUNDED, 1000)
    assert settled_credits(db_session, bought.wallet_id, TransactionStatus.REFUNDED) == []


def test_every_event_of_a_resolved_refund_required_purchase_counts_it_once(
    client: FlaskClient, db_session: Session, stub: StripeStub
) -> None:
    bought = refund_required_purchase(client, db_session, stub)
    refund = stub.refund_payment(bought.invoice_id or "")
    before = types_of(wallet_events(db_session, bought.wallet_id))

    # Stripe sends all three for one refund; the purchase never held credits.
    deliver_object(client, stub, refund, "refund.created")
    deliver_object(client, stub, refund, "refund.updated")
    pi = stub.payment_intent_of(bought.invoice_id or "") or ""
    deliver_object(client, stub, stub.charge_of(pi), "charge.refunded")

    purchase = purchase_row(db_session, bought.purchase_id)
    assert (purchase.status, purchase.returned_cents) == (PurchaseStatus.REFUNDED, 1000)
    assert (purchase.reclaimed_credits, purchase.shortfall_credits) == (0, 0)
    assert purchase.attention_reason != "refunded_after_consumption"
    assert types_of(wallet_events(db_session, bought.wallet_id)) == before


# --- money that did not go back after all ------------------------------------------------


@pytest.mark.parametrize("failed_as", ["refund.failed", "charge.refund.updated"])
def test_a_refund_that_fails_after_it_succeeded_gives_the_credits_back(
    client: FlaskClient, db_session: Session, stub: StripeStub, failed_as: str
) -> None:
    bought = settled_purchase(client, db_session, stub, paid="10")
    refund = stub.refund_payment(bought.invoice_id or "")
    deliver_object(client, stub, refund, "refund.created")
    assert purchase_row(db_session, bought.purchase_id).status == PurchaseStatus.REFUNDED

    failed = stub.fail_refund(refund["id"])
    assert deliver_object(client, stub, failed, failed_as) == "processed"

    purchase = purchase_row(db_session, bought.purchase_id)
    assert (purchase.status, purchase.returned_cents) == (PurchaseStatus.SETTLED, 0)
    assert purchase.reclaimed_credits == 0
    assert settled_credits(db_session, bought.wallet_id, TransactionStatus.REINSTATED) == [D("10")]
    assert balance(db_session, bought.wallet_id) == D("10")
    assert invoice_of(client, bought)["status"] == "paid"  # no longer "refunded"
    published = wallet_events(db_session, bought.wallet_id)[-1]
    assert published["type"] == "wallet_transaction.created"
    assert published["data"]["wallet_transaction"]["transaction_status"] == "reinstated"

    # Its older states, delivered late, change nothing: a refund only moves forward.
    for stale in ({**refund, "status": "succeeded"}, {**refund, "status": "pending"}):
        deliver_object(client, stub, stale, "refund.updated")
    assert purchase_row(db_session, bought.purchase_id).returned_cents == 0
    assert balance(db_session, bought.wallet_id) == D("10")


def test_a_failed_refund_of_spent_credits_cancels_the_shortfall_first(
    client: FlaskClient, db_session: Session, stub: StripeStub
) -> None:
    bought = settled_purchase(client, db_session, stub, paid="10")
    spend(client, customer_of(db_session, bought), 700)  # 7 of the 10 credits
    refund = stub.refund_payment(bought.invoice_id or "")
    deliver_object(client, stub, refund, "refund.created")
    assert purchase_row(db_session, bought.purchase_id).shortfall_credits == D("7")

    deliver_object(client, stub, stub.fail_refund(refund["id"]), "refund.updated")

    purchase = purchase_row(db_session, bought.purchase_id)
    assert (purchase.shortfall_credits, purchase.attention_reason) == (0, None)
    # Only the 3 credits that were taken come back; the 7 were spent on invoices.
    assert settled_credits(db_session, bought.wallet_id, TransactionStatus.REINSTATED) == [D("3")]
    assert balance(db_session, bought.wallet_id) == D("3")


def test_a_failed_refund_of_a_refund_required_purchase_needs_the_refund_again(
    client: FlaskClient, db_session: Session, stub: StripeStub
) -> None:
    bought = refund_required_purchase(client, db_session, stub)
    refund = stub.refund_payment(bought.invoice_id or "")
    deliver_object(client, stub, refund, "refund.created")

    deliver_object(client, stub, stub.fail_refund(refund["id"]), "refund.failed")

    purchase = purchase_row(db_session, bought.purchase_id)
    assert (purchase.status, purchase.returned_cents) == (PurchaseStatus.REFUND_REQUIRED, 0)
    assert settled_credits(db_session, bought.wallet_id, TransactionStatus.REINSTATED) == []
    published = wallet_events(db_session, bought.wallet_id)[-1]
    assert published["type"] == "purchase.attention_required"
    assert published["data"]["attention_reason"] == "refund_required"


def test_a_voided_credit_note_gives_its_credits_back(
    client: FlaskClient, db_session: Session, stub: StripeStub
) -> None:
    bought = settled_purchase(client, db_session, stub, paid="10")
    note = stub.credit_note(bought.invoice_id or "", 300)
    deliver_object(client, stub, note, "credit_note.created")
    assert balance(db_session, bought.wallet_id) == D("7")

    voided = stub.void_credit_note(note["id"])
    assert deliver_object(client, stub, voided, "credit_note.voided") == "processed"
    deliver_object(client, stub, note, "credit_note.created")  # a late repeat of the issue

    purchase = purchase_row(db_session, bought.purchase_id)
    assert (purchase.returned_cents, purchase.reclaimed_credits) == (0, 0)
    assert settled_credits(db_session, bought.wallet_id, TransactionStatus.REINSTATED) == [D("3")]
    assert balance(db_session, bought.wallet_id) == D("10")


def test_a_refund_made_through_a_voided_credit_note_still_counts(
    client: FlaskClient, db_session: Session, stub: StripeStub
) -> None:
    bought = settled_purchase(client, db_session, stub, paid="10")
    note = stub.credit_note(bought.invoice_id or "", 300, refund=True)
    refund = stub.refunds[note["refunds"][0]["refund"]]
    deliver_object(client, stub, note, "credit_note.created")
    deliver_object(client, stub, refund, "refund.created")

    deliver_object(client, stub, stub.void_credit_note(note["id"]), "credit_note.voided")

    # The note no longer counts, but its refund's money went back all the same.
    assert purchase_row(db_session, bought.purchase_id).returned_cents == 300
    assert settled_credits(db_session, bought.wallet_id, TransactionStatus.REINSTATED) == []
    assert balance(db_session, bought.wallet_id) == D("7")


# --- credit notes ----------------------------------------------------------------------


@pytest.mark.parametrize("order", ["note first", "refund first"])
def test_a_refund_made_through_a_credit_note_counts_once(
    client: FlaskClient, db_session: Session, stub: StripeStub, order: str
) -> None:
    bought = settled_purchase(client, db_session, stub, paid="10")
    note = stub.credit_note(bought.invoice_id or "", 300, refund=True)
    refund = stub.refunds[note["refunds"][0]["refund"]]
    deliveries = [(note, "credit_note.created"), (refund, "refund.created")]
    if order == "refund first":
        deliveries.reverse()

    for obj, event_type in deliveries:
        deliver_object(client, stub, obj, event_type)

    assert settled_credits(db_session, bought.wallet_id, TransactionStatus.REFUNDED) == [D("3")]
    assert balance(db_session, bought.wallet_id) == D("7")
    assert purchase_row(db_session, bought.purchase_id).returned_cents == 300


def test_a_credit_note_to_the_customer_balance_takes_credits_back_too(
    client: FlaskClient, db_session: Session, stub: StripeStub
) -> None:
    bought = settled_purchase(client, db_session, stub, paid="10")
    note = stub.credit_note(bought.invoice_id or "", 200)

    assert deliver_object(client, stub, note, "credit_note.created") == "processed"

    assert settled_credits(db_session, bought.wallet_id, TransactionStatus.REFUNDED) == [D("2")]


def test_a_pre_payment_credit_note_takes_nothing(
    client: FlaskClient, db_session: Session, stub: StripeStub
) -> None:
    bought = settled_purchase(client, db_session, stub, paid="10")
    note = {
        **stub.credit_note(bought.invoice_id or "", 200),
        "type": "pre_payment",
        "pre_payment_amount": 200,
        "post_payment_amount": 0,
    }

    deliver_object(client, stub, note, "credit_note.created")

    assert balance(db_session, bought.wallet_id) == D("10")
    assert purchase_row(db_session, bought.purchase_id).returned_cents == 0


# --- disputes --------------------------------------------------------------------------


def test_a_dispute_holds_the_credits_and_a_won_dispute_gives_them_back(
    client: FlaskClient, db_session: Session, stub: StripeStub
) -> None:
    bought = settled_purchase(client, db_session, stub, paid="10")
    dispute = stub.dispute(bought.invoice_id or "")

    deliver_object(client, stub, dispute, "charge.dispute.created")

    assert settled_credits(db_session, bought.wallet_id, TransactionStatus.DISPUTED) == [D("10")]
    assert balance(db_session, bought.wallet_id) == 0
    assert invoice_of(client, bought)["dispute_status"] == "open"

    deliver_object(client, stub, stub.close_dispute(dispute["id"], "won"), "charge.dispute.closed")

    assert settled_credits(db_session, bought.wallet_id, TransactionStatus.REINSTATED) == [D("10")]
    assert balance(db_session, bought.wallet_id) == D("10")
    assert invoice_of(client, bought)["dispute_status"] == "won"
    assert purchase_row(db_session, bought.purchase_id).status == PurchaseStatus.SETTLED


def test_a_lost_dispute_of_a_refund_required_payment_resolves_it(
    client: FlaskClient, db_session: Session, stub: StripeStub
) -> None:
    bought = refund_required_purchase(client, db_session, stub)
    dispute = stub.dispute(bought.invoice_id or "")

    deliver_object(client, stub, dispute, "charge.dispute.created")
    purchase = purchase_row(db_session, bought.purchase_id)
    assert (purchase.status, purchase.dispute_status) == (PurchaseStatus.REFUND_REQUIRED, "open")

    deliver_object(client, stub, stub.close_dispute(dispute["id"], "lost"), "charge.dispute.closed")

    # The customer's bank gave the money back: nobody should refund it a second time.
    purchase = purchase_row(db_session, bought.purchase_id)
    assert (purchase.status, purchase.dispute_status) == (PurchaseStatus.REFUNDED, "lost")
    assert (purchase.reclaimed_credits, purchase.shortfall_credits) == (0, 0)
    assert settled_credits(db_session, bought.wallet_id, TransactionStatus.DISPUTED) == []


def test_a_lost_dispute_keeps_the_credits_out_and_a_later_refund_takes_nothing_more(
    client: FlaskClient, db_session: Session, stub: StripeStub
) -> None:
    bought = settled_purchase(client, db_session, stub, paid="10")
    dispute = stub.dispute(bought.invoice_id or "")
    deliver_object(client, stub, dispute, "charge.dispute.created")
    deliver_object(client, stub, stub.close_dispute(dispute["id"], "lost"), "charge.dispute.closed")
    deliver_object(client, stub, stub.refund_payment(bought.invoice_id or ""), "refund.created")

    assert settled_credits(db_session, bought.wallet_id, TransactionStatus.DISPUTED) == [D("10")]
    assert settled_credits(db_session, bought.wallet_id, TransactionStatus.REFUNDED) == []
    assert settled_credits(db_session, bought.wallet_id, TransactionStatus.REINSTATED) == []
    assert invoice_of(client, bought)["dispute_status"] == "lost"


def test_a_dispute_closed_before_its_opening_arrives_stays_closed(
    client: FlaskClient, db_session: Session, stub: StripeStub
) -> None:
    bought = settled_purchase(client, db_session, stub, paid="10")
    dispute = stub.dispute(bought.invoice_id or "")
    closed = stub.close_dispute(dispute["id"], "won")

    deliver_object(client, stub, closed, "charge.dispute.closed")
    deliver_object(client, stub, dispute, "charge.dispute.created")

    assert balance(db_session, bought.wallet_id) == D("10")
    assert settled_credits(db_session, bought.wallet_id, TransactionStatus.DISPUTED) == []
    assert purchase_row(db_session, bought.purchase_id).dispute_status == "won"


def test_a_won_dispute_gives_back_only_what_was_held(
    client: FlaskClient, db_session: Session, stub: StripeStub
) -> None:
    bought = settled_purchase(client, db_session, stub, paid="10")
    spend(client, customer_of(db_session, bought), 600)
    dispute = stub.dispute(bought.invoice_id or "")
    deliver_object(client, stub, dispute, "charge.dispute.created")
    assert purchase_row(db_session, bought.purchase_id).shortfall_credits == D("6")

    deliver_object(client, stub, stub.close_dispute(dispute["id"], "won"), "charge.dispute.closed")

    assert settled_credits(db_session, bought.wallet_id, TransactionStatus.REINSTATED) == [D("4")]
    assert balance(db_session, bought.wallet_id) == D("4")
    purchase = purchase_row(db_session, bought.purchase_id)
    assert (purchase.shortfall_credits, purchase.attention_reason) == (0, None)


# --- mapping a payment to its purchase ----------------------------------------------------


def test_the_invoice_payment_lookup_is_made_once_then_the_stored_payment_maps(
    client: FlaskClient, db_session: Session, stub: StripeStub
) -> None:
    bought = settled_purchase(client, db_session, stub, paid="10")
    lookups = len(stub.requests_to("GET", "/v1/invoice_payments"))
    first = stub.refund_payment(bought.invoice_id or "", amount=100)
    deliver_object(client, stub, first, "refund.created")
    assert len(stub.requests_to("GET", "/v1/invoice_payments")) == lookups + 1
    pi = stub.payment_intent_of(bought.invoice_id or "")
    assert purchase_row(db_session, bought.purchase_id).payment_id == pi

    deliver_object(
        client, stub, stub.refund_payment(bought.invoice_id or "", amount=100), "refund.created"
    )

    assert len(stub.requests_to("GET", "/v1/invoice_payments")) == lookups + 1
    assert balance(db_session, bought.wallet_id) == D("8")


def test_a_payment_intent_on_the_paid_invoice_is_stored_at_settlement(
    client: FlaskClient, db_session: Session, stub: StripeStub
) -> None:
    bought = buy_wallet(client, db_session, paid="10")
    stub.mark_paid(bought.invoice_id or "")
    pi = stub.payment_intent_of(bought.invoice_id or "")
    event = stub.event(bought.invoice_id or "", "invoice.paid")
    event["data"]["object"]["payment_intent"] = pi  # endpoints on API versions before 2025-03
    post_signed(client, event)
    assert purchase_row(db_session, bought.purchase_id).payment_id == pi
    lookups = len(stub.requests_to("GET", "/v1/invoice_payments"))

    deliver_object(client, stub, stub.refund_payment(bought.invoice_id or ""), "refund.created")

    assert len(stub.requests_to("GET", "/v1/invoice_payments")) == lookups
    assert balance(db_session, bought.wallet_id) == 0


# --- bad input ---------------------------------------------------------------------------


def test_events_for_payments_and_invoices_we_do_not_know_are_ignored(
    client: FlaskClient, db_session: Session, stub: StripeStub
) -> None:
    foreign = stub.refund_payment_intent("pi_not_ours", 500)
    event = stub.object_event(foreign, "refund.created")
    response = post_signed(client, event)
    assert response.status_code == 200
    assert response.json["event"]["status"] == "ignored"  # type: ignore[index]
    row = stored_event(db_session, event["id"])
    assert row is not None and row.status == WebhookEventStatus.IGNORED
    note = {
        "id": "cn_not_ours",
        "object": "credit_note",
        "invoice": "in_not_ours",
        "amount": 100,
        "post_payment_amount": 100,
        "currency": "usd",
        "type": "post_payment",
        "status": "issued",
        "refunds": [],
    }
    assert deliver_object(client, stub, note, "credit_note.created") == "ignored"
    dispute = {**foreign, "id": "dp_not_ours", "object": "dispute", "status": "needs_response"}
    assert deliver_object(client, stub, dispute, "charge.dispute.created") == "ignored"


def test_a_failure_rolls_everything_back_and_the_event_is_replayable(
    client: FlaskClient, db_session: Session, stub: StripeStub
) -> None:
    bought = settled_purchase(client, db_session, stub, paid="10")
    refund = stub.refund_payment(bought.invoice_id or "", amount=500)
    event = stub.object_event(refund, "refund.created")
    stub.fail_next("GET", "/v1/invoice_payments", status=500)

    failed = post_signed(client, event)

    assert failed.status_code == 500
    row = stored_event(db_session, event["id"])
    assert row is not None and row.status == WebhookEventStatus.FAILED
    assert balance(db_session, bought.wallet_id) == D("10")
    assert purchase_row(db_session, bought.purchase_id).returned_cents == 0

    assert post_signed(client, event).status_code == 200  # Stripe's retry

    assert balance(db_session, bought.wallet_id) == D("5")


def test_the_invoice_payment_event_stores_the_payment_so_refunds_need_no_lookup(
    client: FlaskClient, db_session: Session, stub: StripeStub
) -> None:
    bought = buy_wallet(client, db_session, paid="10")
    stub.mark_paid(bought.invoice_id or "")
    [invoice_payment] = [
        row for row in stub.invoice_payments.values() if row["invoice"] == bought.invoice_id
    ]
    assert deliver_object(client, stub, invoice_payment, "invoice_payment.paid") == "processed"
    post_signed(client, stub.event(bought.invoice_id or "", "invoice.paid"))
    pi = stub.payment_intent_of(bought.invoice_id or "")
    assert purchase_row(db_session, bought.purchase_id).payment_id == pi
    lookups = len(stub.requests_to("GET", "/v1/invoice_payments"))

    deliver_object(
        client, stub, stub.refund_payment(bought.invoice_id or "", amount=100), "refund.created"
    )

    assert len(stub.requests_to("GET", "/v1/invoice_payments")) == lookups
    assert balance(db_session, bought.wallet_id) == D("9")
    other = {**invoice_payment, "id": "inpay_other", "invoice": "in_not_ours"}
    assert deliver_object(client, stub, other, "invoice_payment.paid") == "ignored"
