"""Reconciliation repairs what lost webhooks and crashes left behind, and reports the rest.

Stripe is the in-process stub behind `responses` (gateway/providers/stripe/sandbox.py):
purchases are made through the API, then Stripe's side moves on (paid, voided, refunded)
without the webhook that would have told us.
"""

from __future__ import annotations

from datetime import timedelta
from decimal import Decimal

import pytest
from flask import Flask
from flask.testing import FlaskClient
from sqlalchemy import Connection, func, select, text, update
from sqlalchemy.orm import Session

from gateway.api.auth import principal_of
from gateway.models import EntryStatus, Purchase, PurchaseStatus, Wallet
from gateway.providers.base import META_PURCHASE_ID
from gateway.providers.stripe.sandbox import StripeStub
from gateway.reconcile import (
    CLOCK_SLACK,
    FindingAction,
    FindingKind,
    ReconcileAborted,
)
from tests.support.api import applied, delete
from tests.support.config import API_KEY
from tests.support.purchases import (
    buy_more,
    buy_wallet,
    refund_required_purchase,
    settled_purchase,
)
from tests.support.reconcile import (
    actions,
    backdate,
    claimable,
    findings,
    foreign_invoice,
    invoice_at_stripe,
    many_open_purchases,
    only,
    run,
    table_rows,
)
from tests.support.webhooks import (
    deliver_object,
    invoice_event,
    make_purchase,
    post_signed,
    state_of,
)

pytestmark = pytest.mark.usefixtures("stripe_http")


def stripe_writes(stub: StripeStub, since: int = 0) -> list[tuple[str, str]]:
    return [(r.method, r.path) for r in stub.requests[since:] if r.method == "POST"]


# --- a consistent world ----------------------------------------------------------------


def test_nothing_to_do_is_consistent_and_exit_0(
    app: Flask, client: FlaskClient, db_session: Session, stub: StripeStub
) -> None:
    bought = buy_wallet(client, db_session, paid="10", granted_credits="5")

    report = run(app)

    assert report.findings == []
    assert report.consistent and report.exit_code == 0
    assert report.invoices_scanned == 1
    assert report.wallets_checked == 1
    assert state_of(db_session, bought.purchase_id).purchase_status == PurchaseStatus.OPEN


# --- 2. pending purchases whose invoice moved on at Stripe -----------------------------


def test_lost_paid_webhook_is_repaired_through_settlement(
    app: Flask, client: FlaskClient, db_session: Session, stub: StripeStub
) -> None:
    bought = buy_wallet(client, db_session, paid="10", granted_credits="2")
    stub.mark_paid(bought.invoice_id or "")  # paid; the webhook never arrives

    report = run(app)

    finding = only(report, FindingKind.INVOICE_PAID_NOT_SETTLED)
    assert finding.action == FindingAction.REPAIRED
    assert finding.outcome == "settled"
    assert finding.purchase_id == bought.purchase_id
    assert finding.invoice_id == bought.invoice_id
    assert report.exit_code == 1
    state = state_of(db_session, bought.purchase_id)
    assert state.purchase_status == PurchaseStatus.SETTLED
    assert state.entry_status == EntryStatus.SETTLED
    assert state.invoice_status == "paid"
    assert state.balance == Decimal("12")  # 2 granted + 10 bought

    again = run(app)  # the repair holds: a second run finds nothing

    assert again.findings == [] and again.exit_code == 0
    assert state_of(db_session, bought.purchase_id).balance == Decimal("12")


def test_a_webhook_that_arrives_after_the_repair_changes_nothing(
    app: Flask, client: FlaskClient, db_session: Session, stub: StripeStub
) -> None:
    bought = buy_wallet(client, db_session, paid="3")
    stub.mark_paid(bought.invoice_id or "")
    run(app)

    late = post_signed(client, stub.event(bought.invoice_id or "", "invoice.paid"))

    assert late.status_code == 200
    assert state_of(db_session, bought.purchase_id).balance == Decimal("3")


@pytest.mark.parametrize("how", ["void", "uncollectible"])
def test_voided_or_uncollectible_invoice_fails_the_pending_purchase(
    app: Flask, client: FlaskClient, db_session: Session, stub: StripeStub, how: str
) -> None:
    bought = buy_wallet(client, db_session, paid="4", granted_credits="1")
    invoice_id = bought.invoice_id or ""
    if how == "void":
        with app.app_context():
            from gateway.providers import get_provider

            get_provider().void_invoice(invoice_id)  # voided in the dashboard, say
    else:
        stub.mark_uncollectible(invoice_id)

    report = run(app)

    finding = only(report, FindingKind.INVOICE_FAILED_STILL_OPEN)
    assert (finding.action, finding.outcome, finding.invoice_status) == (
        FindingAction.REPAIRED,
        "failed",
        how,
    )
    state = state_of(db_session, bought.purchase_id)
    assert state.purchase_status == PurchaseStatus.FAILED
    assert state.entry_status == EntryStatus.FAILED
    assert state.balance == Decimal("1")


def test_a_payment_short_of_the_total_goes_to_review_not_to_the_balance(
    app: Flask, client: FlaskClient, db_session: Session, stub: StripeStub
) -> None:
    bought = buy_wallet(client, db_session, paid="10")
    invoice = stub.invoices[bought.invoice_id or ""]
    stub.mark_paid(bought.invoice_id or "")
    invoice["amount_paid"] = 1  # Stripe says paid; the amount says otherwise

    report = run(app)

    finding = only(report, FindingKind.INVOICE_PAID_NOT_SETTLED)
    assert finding.outcome == "review_required"
    assert "expected at least 1000" in finding.detail
    assert findings(report, FindingKind.REVIEW_REQUIRED) == []  # reported once, not twice
    state = state_of(db_session, bought.purchase_id)
    assert state.purchase_status == PurchaseStatus.REVIEW_REQUIRED
    assert state.balance == 0


# --- 1. purchases stuck before their invoice id was stored -----------------------------


def test_stuck_purchase_adopts_its_invoice_found_by_metadata_and_settles_it(
    app: Flask, client: FlaskClient, db_session: Session, stub: StripeStub
) -> None:
    purchase = make_purchase(db_session, invoice_stored=False, rate=Decimal("1"))
    invoice = invoice_at_stripe(app, db_session, purchase.id)  # crash before storing it
    stub.mark_paid(invoice.id)
    backdate(db_session, purchase.id, minutes=600)  # even past the grace period

    report = run(app)

    finding = only(report, FindingKind.STUCK_PURCHASE)
    assert (finding.action, finding.outcome) == (FindingAction.REPAIRED, "settled")
    assert finding.invoice_id == invoice.id
    state = state_of(db_session, purchase.id)
    assert state.purchase_status == PurchaseStatus.SETTLED
    assert state.invoice_id == invoice.id
    assert state.balance == Decimal("10")


def test_stuck_purchase_with_an_open_invoice_is_adopted_while_its_caller_can_claim_it(
    app: Flask, client: FlaskClient, db_session: Session, stub: StripeStub
) -> None:
    purchase = make_purchase(db_session, invoice_stored=False, rate=Decimal("1"))
    claimable(db_session, purchase.id)  # its Idempotency-Key is still live
    invoice = invoice_at_stripe(app, db_session, purchase.id)

    report = run(app)

    finding = only(report, FindingKind.STUCK_PURCHASE)
    assert (finding.action, finding.outcome) == (FindingAction.REPAIRED, "adopted")
    state = state_of(db_session, purchase.id)
    assert (state.purchase_status, state.invoice_id, state.invoice_status) == (
        PurchaseStatus.OPEN,
        invoice.id,
        "open",
    )


# --- 1b. a caller told "failed" is never billed by reconciliation -----------------------


def test_a_purchase_that_answered_503_is_not_billed_after_a_retry_without_key(
    app: Flask, client: FlaskClient, db_session: Session, stub: StripeStub
) -> None:
    """Issue 12 #1: 503 on the invoice's creation, the caller retries (no key) and is
    billed; reconciliation must not create a second invoice for the first attempt."""
    first = buy_wallet(client, db_session, paid="1")
    stub.fail_next("POST", "/v1/invoices", status=500)  # never reached Stripe's books
    told_failed = buy_more(client, db_session, first.wallet_id, paid="2")
    retried = buy_more(client, db_session, first.wallet_id, paid="2")
    assert retried.invoice_id is not None  # 201: the retry is billed
    backdate(db_session, told_failed.purchase_id, minutes=61)

    report = run(app, grace=timedelta(minutes=60))

    finding = only(report, FindingKind.STUCK_PURCHASE)
    assert (finding.purchase_id, finding.outcome) == (told_failed.purchase_id, "abandoned")
    assert stub.invoices_with(**{META_PURCHASE_ID: told_failed.purchase_id}) == []
    billed = [i for i in stub.invoices.values() if i["status"] != "draft" and i["total"] == 200]
    assert [i["id"] for i in billed] == [retried.invoice_id]  # exactly one invoice for it
    state = state_of(db_session, told_failed.purchase_id)
    assert (state.purchase_status, state.entry_status) == (
        PurchaseStatus.FAILED,
        EntryStatus.FAILED,
    )
    # Later runs do not take it up either.
    assert run(app).findings == []
    assert stub.invoices_with(**{META_PURCHASE_ID: told_failed.purchase_id}) == []


def test_a_purchase_whose_key_is_live_is_left_to_the_retry_with_that_key(
    app: Flask, client: FlaskClient, db_session: Session, stub: StripeStub
) -> None:
    first = buy_wallet(client, db_session, paid="1")
    stub.fail_next("POST", "/v1/invoices", after=True)  # a draft made, answer lost
    stuck = buy_more(client, db_session, first.wallet_id, paid="2", key="top-up-1")
    backdate(db_session, stuck.purchase_id, minutes=600)  # well past the grace period
    before = len(stub.requests)

    report = run(app, grace=timedelta(minutes=60))

    assert report.findings == []  # not resumed, not abandoned: its caller may retry
    assert stripe_writes(stub, before) == []
    [draft] = stub.invoices_with(**{META_PURCHASE_ID: stuck.purchase_id})
    assert draft["status"] == "draft"

    retry = buy_more(client, db_session, first.wallet_id, paid="2", key="top-up-1")

    assert retry.purchase_id == stuck.purchase_id  # the retry resumes it
    [invoice] = stub.invoices_with(**{META_PURCHASE_ID: stuck.purchase_id})
    assert (invoice["id"], invoice["status"]) == (draft["id"], "open")


def test_a_purchase_whose_caller_retried_with_a_new_key_is_given_up_when_its_key_expires(
    app: Flask, client: FlaskClient, db_session: Session, stub: StripeStub
) -> None:
    first = buy_wallet(client, db_session, paid="1")
    stub.fail_next("POST", "/v1/invoices", status=500)
    told_failed = buy_more(client, db_session, first.wallet_id, paid="2", key="attempt-1")
    retried = buy_more(client, db_session, first.wallet_id, paid="2", key="attempt-2")
    backdate(db_session, told_failed.purchase_id, minutes=61)

    assert run(app, grace=timedelta(minutes=60)).findings == []  # "attempt-1" may still come
    assert stub.invoices_with(**{META_PURCHASE_ID: told_failed.purchase_id}) == []

    claimable(db_session, told_failed.purchase_id, minutes=-1)  # the key has expired
    report = run(app, grace=timedelta(minutes=60))

    assert only(report, FindingKind.STUCK_PURCHASE).outcome == "abandoned"
    assert stub.invoices_with(**{META_PURCHASE_ID: told_failed.purchase_id}) == []
    assert state_of(db_session, retried.purchase_id).purchase_status == PurchaseStatus.OPEN


def test_an_unclaimable_purchase_whose_finalize_answer_was_lost_has_its_invoice_voided(
    app: Flask, client: FlaskClient, db_session: Session, stub: StripeStub
) -> None:
    first = buy_wallet(client, db_session, paid="1", granted_credits="3")
    stub.fail_next("POST", "/v1/invoices/", after=True)  # finalized at Stripe, answer lost
    stuck = buy_more(client, db_session, first.wallet_id, paid="2")  # told 503, no key
    state = state_of(db_session, stuck.purchase_id)
    assert (state.purchase_status, state.invoice_id) == (PurchaseStatus.CREATING, None)
    [invoice] = stub.invoices_with(**{META_PURCHASE_ID: stuck.purchase_id})
    assert invoice["status"] == "open"

    assert run(app).findings == []  # seconds old: maybe still its request's

    backdate(db_session, stuck.purchase_id, minutes=10)
    report = run(app)

    finding = only(report, FindingKind.STUCK_PURCHASE)
    assert (finding.action, finding.outcome) == (FindingAction.REPAIRED, "voided")
    assert stub.invoices[invoice["id"]]["status"] == "void"  # never collected
    after = state_of(db_session, stuck.purchase_id)
    assert (after.purchase_status, after.entry_status, after.invoice_id) == (
        PurchaseStatus.FAILED,
        EntryStatus.FAILED,
        invoice["id"],
    )
    assert after.balance == Decimal("3")
    assert run(app).findings == []


def test_an_unclaimable_purchase_whose_invoice_was_paid_anyway_is_settled(
    app: Flask, client: FlaskClient, db_session: Session, stub: StripeStub
) -> None:
    first = buy_wallet(client, db_session, paid="1")
    stub.fail_next("POST", "/v1/invoices/", after=True)
    stuck = buy_more(client, db_session, first.wallet_id, paid="2")
    [invoice] = stub.invoices_with(**{META_PURCHASE_ID: stuck.purchase_id})
    stub.mark_paid(invoice["id"])  # the money arrived: the credits follow it

    report = run(app)

    assert only(report, FindingKind.STUCK_PURCHASE).outcome == "settled"
    assert state_of(db_session, stuck.purchase_id).purchase_status == PurchaseStatus.SETTLED


def test_a_purchase_being_created_right_now_is_left_to_its_request(
    app: Flask, client: FlaskClient, db_session: Session, stub: StripeStub
) -> None:
    first = buy_wallet(client, db_session, paid="1")
    stub.fail_next("POST", "/v1/invoices", status=500)
    stuck = buy_more(client, db_session, first.wallet_id, paid="2")  # seconds old

    report = run(app)

    assert report.findings == []
    assert stub.invoices_with(**{META_PURCHASE_ID: stuck.purchase_id}) == []
    assert state_of(db_session, stuck.purchase_id).purchase_status == PurchaseStatus.CREATING


def test_stuck_purchase_is_failed_after_the_grace_period_when_stripe_has_no_invoice(
    app: Flask, client: FlaskClient, db_session: Session, stub: StripeStub
) -> None:
    first = buy_wallet(client, db_session, paid="1", granted_credits="3")
    stub.fail_next("POST", "/v1/invoices", status=500)
    stuck = buy_more(client, db_session, first.wallet_id, paid="2")
    backdate(db_session, stuck.purchase_id, minutes=61)
    before = len(stub.requests)

    report = run(app, grace=timedelta(minutes=60))

    finding = only(report, FindingKind.STUCK_PURCHASE)
    assert (finding.action, finding.outcome) == (FindingAction.REPAIRED, "abandoned")
    assert "no invoice was made at Stripe" in finding.detail
    state = state_of(db_session, stuck.purchase_id)
    assert state.purchase_status == PurchaseStatus.FAILED
    assert state.entry_status == EntryStatus.FAILED
    assert state.balance == Decimal("3")
    failed = db_session.get_one(Purchase, stuck.purchase_id)
    assert failed.failure_code == "creation_abandoned"
    # Looked for by metadata once more before giving up; nothing written at Stripe.
    assert stub.requests_to("GET", "/v1/invoices/search")
    assert stripe_writes(stub, before) == []


def test_a_draft_left_past_the_grace_period_is_abandoned_not_finalized(
    app: Flask, client: FlaskClient, db_session: Session, stub: StripeStub
) -> None:
    first = buy_wallet(client, db_session, paid="1")
    stub.fail_next("POST", "/v1/invoices", after=True)
    stuck = buy_more(client, db_session, first.wallet_id, paid="2")
    backdate(db_session, stuck.purchase_id, minutes=90)
    before = len(stub.requests)

    report = run(app, grace=timedelta(minutes=60))

    assert only(report, FindingKind.STUCK_PURCHASE).outcome == "abandoned"
    [draft] = stub.invoices_with(**{META_PURCHASE_ID: stuck.purchase_id})
    assert draft["status"] == "draft"  # never finalized, so never charged
    assert stripe_writes(stub, before) == []
    assert state_of(db_session, stuck.purchase_id).purchase_status == PurchaseStatus.FAILED


# --- 3. reported, not fixed -------------------------------------------------------------


def test_paid_invoice_with_our_metadata_that_we_do_not_know_is_reported(
    app: Flask, client: FlaskClient, db_session: Session, stub: StripeStub
) -> None:
    buy_wallet(client, db_session, paid="5")
    stranger = foreign_invoice(app, "pur_from_another_database", 500)
    unpaid = foreign_invoice(app, "pur_also_elsewhere", 700)
    stub.mark_paid(stranger.id)
    before = table_rows(db_session.connection())

    report = run(app)

    finding = only(report, FindingKind.UNKNOWN_PAID_INVOICE)  # the paid one only
    assert finding.action == FindingAction.REPORTED
    assert finding.invoice_id == stranger.id != unpaid.id
    assert finding.purchase_id == "pur_from_another_database"
    assert "5.00 USD" in finding.detail
    assert report.exit_code == 1
    assert table_rows(db_session.connection()) == before


def test_settled_purchase_whose_invoice_is_no_longer_paid_is_reported(
    app: Flask, client: FlaskClient, db_session: Session, stub: StripeStub
) -> None:
    bought = buy_wallet(client, db_session, paid="5")
    stub.mark_paid(bought.invoice_id or "")
    post_signed(client, stub.event(bought.invoice_id or "", "invoice.paid"))
    stub.invoices[bought.invoice_id or ""]["status"] = "void"  # reversed at Stripe

    report = run(app)

    finding = only(report, FindingKind.SETTLED_INVOICE_NOT_PAID)
    assert (finding.action, finding.invoice_status) == (FindingAction.REPORTED, "void")
    state = state_of(db_session, bought.purchase_id)
    assert state.purchase_status == PurchaseStatus.SETTLED  # a person decides
    assert state.balance == Decimal("5")


def test_a_credit_note_the_webhooks_missed_takes_the_credits_back_once(
    app: Flask, client: FlaskClient, db_session: Session, stub: StripeStub
) -> None:
    bought = settled_purchase(client, db_session, stub, paid="5")
    note = stub.credit_note(bought.invoice_id or "", 200, refund=True)
    assert len(stub.refunds) == 1  # the note's refund of the payment

    report = run(app)

    finding = only(report, FindingKind.SETTLED_INVOICE_REFUNDED)
    assert (finding.action, finding.outcome) == (FindingAction.REPAIRED, "refunded")
    assert note["id"] in finding.detail and "2.00000 credits taken back" in finding.detail
    assert report.refunds_scanned == 1
    assert [f.kind for f in report.findings] == [FindingKind.SETTLED_INVOICE_REFUNDED]
    assert state_of(db_session, bought.purchase_id).balance == Decimal("3")
    assert run(app).findings == []  # repaired: the next run finds nothing


def test_a_refund_made_on_the_payment_alone_is_applied(
    app: Flask, client: FlaskClient, db_session: Session, stub: StripeStub
) -> None:
    bought = settled_purchase(client, db_session, stub, paid="5")
    refund = stub.refund_payment(bought.invoice_id or "", amount=300)  # no credit note
    before = len(stub.requests)

    report = run(app)

    finding = only(report, FindingKind.SETTLED_PAYMENT_REFUNDED)
    assert (finding.action, finding.outcome) == (FindingAction.REPAIRED, "refunded")
    assert (finding.purchase_id, finding.wallet_id, finding.invoice_id) == (
        bought.purchase_id,
        bought.wallet_id,
        bought.invoice_id,
    )
    assert "3.00 USD" in finding.detail and refund["id"] in finding.detail
    assert "3.00000 credits taken back" in finding.detail
    assert report.exit_code == 1 and report.refunds_scanned == 1
    assert report.to_dict()["summary"]["by_kind"] == {"settled_payment_refunded": 1}
    calls = [(r.method, r.path) for r in stub.requests[before:]]
    assert calls == [
        ("GET", "/v1/invoices"),
        ("GET", "/v1/refunds"),
        ("GET", "/v1/invoice_payments"),
        ("GET", "/v1/disputes"),
    ]
    state = state_of(db_session, bought.purchase_id)
    assert state.purchase_status == PurchaseStatus.SETTLED
    assert state.balance == Decimal("2")
    assert run(app).findings == []


def test_a_pending_refund_takes_credits_once_it_succeeds_and_failed_ones_never(
    app: Flask, client: FlaskClient, db_session: Session, stub: StripeStub
) -> None:
    bought = settled_purchase(client, db_session, stub, paid="5")
    stub.refund_payment(bought.invoice_id or "", amount=400, status="failed")
    stub.refund_payment(bought.invoice_id or "", amount=100, status="canceled")
    pending = stub.refund_payment(bought.invoice_id or "", amount=200, status="pending")

    assert run(app).findings == []  # the pending one is recorded, nothing to take yet
    assert state_of(db_session, bought.purchase_id).balance == Decimal("5")

    stub.refunds[pending["id"]]["status"] = "succeeded"
    finding = only(run(app), FindingKind.SETTLED_PAYMENT_REFUNDED)

    assert "2.00 USD" in finding.detail
    assert state_of(db_session, bought.purchase_id).balance == Decimal("3")


def test_a_refund_that_failed_after_it_was_counted_gives_the_credits_back(
    app: Flask, client: FlaskClient, db_session: Session, stub: StripeStub
) -> None:
    bought = settled_purchase(client, db_session, stub, paid="5")
    refund = stub.refund_payment(bought.invoice_id or "", amount=300)
    only(run(app), FindingKind.SETTLED_PAYMENT_REFUNDED)
    assert state_of(db_session, bought.purchase_id).balance == Decimal("2")
    stub.fail_refund(refund["id"])  # its refund.failed event was lost

    planned = only(run(app, dry_run=True), FindingKind.SETTLED_PAYMENT_REFUNDED)
    assert planned.outcome == "give back"
    finding = only(run(app), FindingKind.SETTLED_PAYMENT_REFUNDED)

    assert (finding.action, finding.outcome) == (FindingAction.REPAIRED, "reinstated")
    assert f"did not go back after all ({refund['id']} (failed))" in finding.detail
    assert "3.00000 credits given back" in finding.detail
    state = state_of(db_session, bought.purchase_id)
    assert (state.purchase_status, state.balance) == (PurchaseStatus.SETTLED, Decimal("5"))
    assert db_session.get_one(Purchase, bought.purchase_id).returned_cents == 0
    assert run(app).findings == []


def test_a_voided_credit_note_the_webhooks_missed_gives_the_credits_back(
    app: Flask, client: FlaskClient, db_session: Session, stub: StripeStub
) -> None:
    bought = settled_purchase(client, db_session, stub, paid="5")
    note = stub.credit_note(bought.invoice_id or "", 200)
    only(run(app), FindingKind.SETTLED_INVOICE_REFUNDED)
    assert state_of(db_session, bought.purchase_id).balance == Decimal("3")
    stub.void_credit_note(note["id"])  # its credit_note.voided event was lost

    finding = only(run(app), FindingKind.SETTLED_INVOICE_REFUNDED)

    assert (finding.action, finding.outcome) == (FindingAction.REPAIRED, "reinstated")
    assert f"credit note {note['id']} (2.00 USD) voided" in finding.detail
    assert "2.00000 credits given back" in finding.detail
    assert state_of(db_session, bought.purchase_id).balance == Decimal("5")
    assert run(app).findings == []


# --- disputes the webhooks missed ---------------------------------------------------------


def test_a_dispute_the_webhooks_missed_holds_the_credits(
    app: Flask, client: FlaskClient, db_session: Session, stub: StripeStub
) -> None:
    bought = settled_purchase(client, db_session, stub, paid="5")
    dispute = stub.dispute(bought.invoice_id or "")  # charge.dispute.created was lost

    dry = only(run(app, dry_run=True), FindingKind.SETTLED_PAYMENT_DISPUTED)
    assert (dry.action, dry.outcome) == (FindingAction.WOULD_REPAIR, "hold")
    assert state_of(db_session, bought.purchase_id).balance == Decimal("5")
    report = run(app)

    finding = only(report, FindingKind.SETTLED_PAYMENT_DISPUTED)
    assert (finding.action, finding.outcome) == (FindingAction.REPAIRED, "dispute_open")
    assert f"dispute {dispute['id']} of its payment (5.00 USD) is open" in finding.detail
    assert "5.00000 credits held" in finding.detail
    assert report.disputes_scanned == 1
    assert state_of(db_session, bought.purchase_id).balance == 0
    assert db_session.get_one(Purchase, bought.purchase_id).dispute_status == "open"
    assert run(app).findings == []


def test_a_won_dispute_whose_closing_was_missed_gives_the_credits_back(
    app: Flask, client: FlaskClient, db_session: Session, stub: StripeStub
) -> None:
    bought = settled_purchase(client, db_session, stub, paid="5")
    dispute = stub.dispute(bought.invoice_id or "")
    deliver_object(client, stub, dispute, "charge.dispute.created")
    assert state_of(db_session, bought.purchase_id).balance == 0
    stub.close_dispute(dispute["id"], "won")  # charge.dispute.closed was lost

    finding = only(run(app), FindingKind.SETTLED_PAYMENT_DISPUTED)

    assert (finding.action, finding.outcome) == (FindingAction.REPAIRED, "dispute_won")
    assert "5.00000 credits given back" in finding.detail
    assert state_of(db_session, bought.purchase_id).balance == Decimal("5")
    assert run(app).findings == []


def test_a_dispute_opened_before_the_window_is_read_again_until_it_closes(
    app: Flask, client: FlaskClient, db_session: Session, stub: StripeStub
) -> None:
    bought = settled_purchase(client, db_session, stub, paid="5")
    dispute = stub.dispute(bought.invoice_id or "")
    deliver_object(client, stub, dispute, "charge.dispute.created")
    stub.disputes[dispute["id"]]["created"] -= int(timedelta(days=90).total_seconds())

    before = len(stub.requests)
    assert run(app).findings == []  # still open: nothing to do
    assert ("GET", f"/v1/disputes/{dispute['id']}") in [
        (r.method, r.path) for r in stub.requests[before:]
    ]
    stub.close_dispute(dispute["id"], "lost")
    report = run(app)

    finding = only(report, FindingKind.SETTLED_PAYMENT_DISPUTED)
    assert (finding.outcome, report.disputes_scanned) == ("dispute_lost", 0)
    assert db_session.get_one(Purchase, bought.purchase_id).dispute_status == "lost"
    assert state_of(db_session, bought.purchase_id).balance == 0  # lost: they stay out
    assert run(app).findings == []


def test_a_disputed_payment_waiting_for_its_refund_is_not_to_be_refunded(
    app: Flask, client: FlaskClient, db_session: Session, stub: StripeStub
) -> None:
    bought = refund_required_purchase(client, db_session, stub, paid="5")
    deliver_object(client, stub, stub.dispute(bought.invoice_id or ""), "charge.dispute.created")

    finding = only(run(app), FindingKind.REFUND_REQUIRED)

    assert "refund the payment" in finding.detail
    assert "its payment is disputed: do not refund it while the dispute is open" in finding.detail


def test_a_direct_refund_beside_a_credit_note_counts_each_once(
    app: Flask, client: FlaskClient, db_session: Session, stub: StripeStub
) -> None:
    bought = settled_purchase(client, db_session, stub, paid="5")
    stub.refund(bought.invoice_id or "", amount=200)
    direct = stub.refund_payment(bought.invoice_id or "", amount=100)

    report = run(app)

    assert "2.00 USD" in only(report, FindingKind.SETTLED_INVOICE_REFUNDED).detail
    payment = only(report, FindingKind.SETTLED_PAYMENT_REFUNDED)
    assert f"1.00 USD of its payment was refunded ({direct['id']})" in payment.detail
    assert state_of(db_session, bought.purchase_id).balance == Decimal("2")
    purchase = db_session.get_one(Purchase, bought.purchase_id)
    assert purchase.returned_cents == 300


def test_a_refund_of_an_invoice_older_than_the_window_is_applied(
    app: Flask, client: FlaskClient, db_session: Session, stub: StripeStub
) -> None:
    bought = settled_purchase(client, db_session, stub, paid="5")
    invoice_id = bought.invoice_id or ""
    stub.invoices[invoice_id]["created"] -= 40 * 86400  # before the default window
    backdate(db_session, bought.purchase_id, minutes=40 * 24 * 60)
    stub.refund_payment(invoice_id, amount=500)  # refunded today
    before = len(stub.requests)

    report = run(app)

    assert report.invoices_scanned == 0
    assert "5.00 USD" in only(report, FindingKind.SETTLED_PAYMENT_REFUNDED).detail
    assert [r.path for r in stub.requests[before:]] == [
        "/v1/invoices",
        "/v1/refunds",
        "/v1/invoice_payments",
        "/v1/disputes",
    ]
    state = state_of(db_session, bought.purchase_id)
    assert (state.purchase_status, state.balance) == (PurchaseStatus.REFUNDED, 0)


def test_a_refund_of_a_purchase_waiting_for_one_resolves_it(
    app: Flask, client: FlaskClient, db_session: Session, stub: StripeStub
) -> None:
    bought = buy_wallet(client, db_session, paid="5")
    stub.mark_paid(bought.invoice_id or "")
    assert delete(client, f"/wallets/{bought.wallet_id}").status_code == 200
    assert state_of(db_session, bought.purchase_id).purchase_status == (
        PurchaseStatus.REFUND_REQUIRED
    )
    refund = stub.refund_payment(bought.invoice_id or "")

    dry = run(app, dry_run=True)
    waiting = only(dry, FindingKind.REFUND_REQUIRED)
    assert waiting.action == FindingAction.WOULD_REPAIR
    report = run(app)

    resolved = only(report, FindingKind.REFUND_REQUIRED)
    assert (resolved.action, resolved.outcome) == (FindingAction.REPAIRED, "refunded")
    assert refund["id"] in resolved.detail
    assert [f.kind for f in report.findings] == [FindingKind.REFUND_REQUIRED]
    assert state_of(db_session, bought.purchase_id).purchase_status == PurchaseStatus.REFUNDED
    assert run(app).findings == []


def test_refunds_of_payments_that_pay_no_invoice_of_ours_are_ignored(
    app: Flask, client: FlaskClient, db_session: Session, stub: StripeStub
) -> None:
    settled_purchase(client, db_session, stub, paid="5")
    stub.refund_payment_intent("pi_elsewhere", 900)  # a payment made without an invoice
    other = foreign_invoice(app, "pur_elsewhere", 700)
    stub.mark_paid(other.id)
    stub.refund_payment(other.id)  # an invoice that names no purchase of ours
    open_one = buy_wallet(client, db_session, paid="3")
    stub.mark_paid(open_one.invoice_id or "")
    post_signed(client, stub.event(open_one.invoice_id or "", "invoice.paid"))

    report = run(app)

    assert report.refunds_scanned == 1  # pi_elsewhere pays no invoice: not even yielded
    assert findings(report, FindingKind.SETTLED_PAYMENT_REFUNDED) == []
    assert [f.kind for f in report.findings] == [FindingKind.UNKNOWN_PAID_INVOICE]


def test_a_shortfall_is_reported_until_a_person_clears_it(
    app: Flask, client: FlaskClient, db_session: Session, stub: StripeStub
) -> None:
    bought = settled_purchase(client, db_session, stub, paid="5")
    wallet = db_session.get_one(Wallet, bought.wallet_id)
    applied(
        client,
        wallet.customer.external_id,
        400,
        invoice=f"inv-{bought.purchase_id}",
        invoice_type="usage",
    )
    stub.refund_payment(bought.invoice_id or "")

    report = run(app)

    assert only(report, FindingKind.SETTLED_PAYMENT_REFUNDED).action == FindingAction.REPAIRED
    short = only(report, FindingKind.REFUNDED_AFTER_CONSUMPTION)
    assert short.action == FindingAction.REPORTED
    assert "4.00000 of its credits were spent" in short.detail
    again = run(app)
    assert [f.kind for f in again.findings] == [FindingKind.REFUNDED_AFTER_CONSUMPTION]
    assert state_of(db_session, bought.purchase_id).balance == 0


def test_a_shortfall_after_the_wallet_ended_says_so(
    app: Flask, client: FlaskClient, db_session: Session, stub: StripeStub
) -> None:
    bought = settled_purchase(client, db_session, stub, paid="5")
    assert delete(client, f"/wallets/{bought.wallet_id}").status_code == 200
    stub.refund_payment(bought.invoice_id or "")

    short = only(run(app), FindingKind.REFUNDED_AFTER_CONSUMPTION)

    assert "after its wallet ended: 5.00000 of its credits were spent before it ended, or " \
        "voided when it did" in short.detail  # fmt: skip


def test_dry_run_plans_the_refund_repairs_and_changes_nothing(
    app: Flask,
    client: FlaskClient,
    db_session: Session,
    connection: Connection,
    stub: StripeStub,
) -> None:
    bought = settled_purchase(client, db_session, stub, paid="5")
    stub.refund_payment(bought.invoice_id or "", amount=250)
    stub.credit_note(bought.invoice_id or "", 100)
    before = table_rows(connection)
    stripe_before = len(stub.requests)

    dry = run(app, dry_run=True)

    assert table_rows(connection) == before
    assert stripe_writes(stub, stripe_before) == []
    assert {(f.kind, f.action, f.outcome) for f in dry.findings} == {
        (FindingKind.SETTLED_INVOICE_REFUNDED, FindingAction.WOULD_REPAIR, "take back"),
        (FindingKind.SETTLED_PAYMENT_REFUNDED, FindingAction.WOULD_REPAIR, "take back"),
    }
    assert (
        dry.exit_code == 1 and "2.50 USD" in only(dry, FindingKind.SETTLED_PAYMENT_REFUNDED).detail
    )
    real = run(app)
    assert [(f.kind, f.action) for f in real.findings] == [
        (f.kind, FindingAction.REPAIRED) for f in dry.findings
    ]
    assert state_of(db_session, bought.purchase_id).balance == Decimal("1.5")


def test_stripe_unreachable_during_the_refund_pass_aborts_the_run(
    app: Flask, client: FlaskClient, db_session: Session, stub: StripeStub
) -> None:
    bought = settled_purchase(client, db_session, stub, paid="5")
    stub.refund_payment(bought.invoice_id or "")
    stub.fail_next("GET", "/v1/invoice_payments", status=None, times=10)

    with pytest.raises(ReconcileAborted) as aborted:
        run(app)

    report = aborted.value.report
    assert report.exit_code == 2 and report.status == "error"
    assert "could not be reached to look up an invoice payment" in (report.error or "")


def test_payment_on_a_terminated_wallet_is_reported_for_refund(
    app: Flask, client: FlaskClient, db_session: Session, stub: StripeStub
) -> None:
    bought = buy_wallet(client, db_session, paid="5")
    stub.mark_paid(bought.invoice_id or "")  # paid just before the wallet is deleted
    assert delete(client, f"/wallets/{bought.wallet_id}").status_code == 200
    assert state_of(db_session, bought.purchase_id).purchase_status == (
        PurchaseStatus.REFUND_REQUIRED
    )

    report = run(app)

    finding = only(report, FindingKind.REFUND_REQUIRED)
    assert finding.action == FindingAction.REPORTED
    assert finding.purchase_id == bought.purchase_id
    assert "refund" in finding.detail
    assert state_of(db_session, bought.purchase_id).balance == 0


def test_purchase_flagged_for_review_is_reported(
    app: Flask, client: FlaskClient, db_session: Session
) -> None:
    purchase = make_purchase(db_session)
    post_signed(client, invoice_event(purchase, "invoice.paid", currency="EUR"))

    report = run(app)

    finding = only(report, FindingKind.REVIEW_REQUIRED)
    assert finding.purchase_id == purchase.id
    assert "EUR" in finding.detail


def test_ledger_mismatch_injected_with_direct_sql_is_reported(
    app: Flask, client: FlaskClient, db_session: Session, connection: Connection
) -> None:
    healthy = make_purchase(db_session, granted=Decimal("3"))
    broken = make_purchase(db_session, granted=Decimal("7"))
    connection.execute(
        text("UPDATE wallets SET credits_balance = credits_balance + 1 WHERE id = :id"),
        {"id": broken.wallet_id},
    )

    report = run(app)

    finding = only(report, FindingKind.LEDGER_MISMATCH)
    assert finding.wallet_id == broken.wallet_id != healthy.wallet_id
    assert finding.ledger_balance == Decimal("7")
    assert finding.stored_balance is not None and finding.stored_balance > Decimal("7")
    assert report.wallets_checked == 2
    assert report.exit_code == 1


def test_a_wallet_with_a_balance_and_no_ledger_entries_is_a_mismatch(
    app: Flask, client: FlaskClient, db_session: Session, connection: Connection
) -> None:
    purchase = make_purchase(db_session)  # only a pending entry: ledger says 0
    connection.execute(
        text("UPDATE wallets SET credits_balance = 5 WHERE id = :id"), {"id": purchase.wallet_id}
    )

    finding = only(run(app), FindingKind.LEDGER_MISMATCH)

    assert finding.ledger_balance == 0
    assert finding.stored_balance is not None and finding.stored_balance > 0


def test_the_ledger_check_is_one_query_whatever_the_number_of_wallets(
    app: Flask, db_session: Session, connection: Connection
) -> None:
    for _ in range(30):
        make_purchase(db_session, granted=Decimal("1"))
    statements: list[str] = []

    from sqlalchemy import event

    def count(_conn: object, _cursor: object, statement: str, *_args: object) -> None:
        statements.append(statement)

    event.listen(connection, "before_cursor_execute", count)
    try:
        report = run(app)
    finally:
        event.remove(connection, "before_cursor_execute", count)

    assert report.wallets_checked == 30
    ledger_queries = [s for s in statements if "wallet_transactions" in s and "GROUP BY" in s]
    assert len(ledger_queries) == 1


# --- 3b. invoices of ended wallets ------------------------------------------------------


def test_invoice_of_an_ended_wallet_left_open_is_voided(
    app: Flask, client: FlaskClient, db_session: Session, stub: StripeStub
) -> None:
    bought = buy_wallet(client, db_session, paid="5")
    invoice_id = bought.invoice_id or ""
    stub.fail_next("POST", f"/v1/invoices/{invoice_id}/void", status=500)
    assert delete(client, f"/wallets/{bought.wallet_id}").status_code == 200
    assert state_of(db_session, bought.purchase_id).void_pending

    report = run(app)

    finding = only(report, FindingKind.INVOICE_VOID_PENDING)
    assert (finding.action, finding.outcome) == (FindingAction.REPAIRED, "voided")
    assert stub.invoices[invoice_id]["status"] == "void"
    state = state_of(db_session, bought.purchase_id)
    assert not state.void_pending
    assert state.purchase_status == PurchaseStatus.FAILED


# --- 4. dry run and window ----------------------------------------------------------------


def test_dry_run_changes_nothing_in_the_database_nor_at_stripe(
    app: Flask,
    client: FlaskClient,
    db_session: Session,
    connection: Connection,
    stub: StripeStub,
) -> None:
    paid = buy_wallet(client, db_session, paid="5")
    stub.mark_paid(paid.invoice_id or "")
    voided = buy_wallet(client, db_session, paid="5")
    stub.mark_uncollectible(voided.invoice_id or "")
    stub.fail_next("POST", "/v1/invoices/", after=True)  # finalized, answer lost
    young = buy_more(client, db_session, paid.wallet_id, paid="1")
    backdate(db_session, young.purchase_id, minutes=20)
    stub.fail_next("POST", "/v1/invoices", status=500)
    old = buy_more(client, db_session, voided.wallet_id, paid="1")
    backdate(db_session, old.purchase_id, minutes=600)
    ended = buy_wallet(client, db_session, paid="5")
    stub.fail_next("POST", f"/v1/invoices/{ended.invoice_id}/void", status=500)
    delete(client, f"/wallets/{ended.wallet_id}")
    connection.execute(
        text("UPDATE wallets SET credits_balance = credits_balance + 1 WHERE id = :id"),
        {"id": paid.wallet_id},
    )
    before = table_rows(connection)
    stripe_before = len(stub.requests)

    report = run(app, dry_run=True)

    assert table_rows(connection) == before
    assert stripe_writes(stub, stripe_before) == []
    assert report.dry_run and report.exit_code == 1
    assert actions(report) == {FindingAction.WOULD_REPAIR, FindingAction.REPORTED}
    outcomes = {(f.kind, f.purchase_id): f.outcome for f in report.findings}
    assert outcomes == {
        (FindingKind.INVOICE_PAID_NOT_SETTLED, paid.purchase_id): "settle",
        (FindingKind.INVOICE_FAILED_STILL_OPEN, voided.purchase_id): "fail",
        (FindingKind.STUCK_PURCHASE, young.purchase_id): "void",
        (FindingKind.STUCK_PURCHASE, old.purchase_id): "abandon",
        (FindingKind.INVOICE_VOID_PENDING, ended.purchase_id): "void",
        (FindingKind.LEDGER_MISMATCH, None): None,
    }

    real = run(app)  # and the same world, repaired for real

    assert {(f.kind, f.purchase_id, f.action) for f in real.findings} >= {
        (FindingKind.INVOICE_PAID_NOT_SETTLED, paid.purchase_id, FindingAction.REPAIRED),
        (FindingKind.STUCK_PURCHASE, old.purchase_id, FindingAction.REPAIRED),
    }


def test_since_bounds_the_window_at_stripe_and_in_the_database(
    app: Flask, client: FlaskClient, db_session: Session, stub: StripeStub
) -> None:
    bought = buy_wallet(client, db_session, paid="5")
    invoice_id = bought.invoice_id or ""
    stub.mark_paid(invoice_id)
    stub.invoices[invoice_id]["created"] -= 10 * 86400  # both ten days old
    backdate(db_session, bought.purchase_id, minutes=10 * 24 * 60)
    from gateway.db import utcnow

    since = utcnow() - timedelta(days=7)

    bounded = run(app, since=since)

    assert bounded.findings == []
    [listing] = stub.requests_to("GET", "/v1/invoices")
    assert int(listing.params["created"]["gte"]) == int((since - CLOCK_SLACK).timestamp())
    assert state_of(db_session, bought.purchase_id).purchase_status == PurchaseStatus.OPEN

    unbounded = run(app)  # back to the oldest unsettled purchase

    assert only(unbounded, FindingKind.INVOICE_PAID_NOT_SETTLED).outcome == "settled"


# --- 5. Stripe is read in pages ----------------------------------------------------------


def test_250_pending_purchases_cost_three_list_pages_not_250_retrieves(
    app: Flask, client: FlaskClient, db_session: Session, stub: StripeStub
) -> None:
    bought = many_open_purchases(db_session, stub, 250)
    first = bought[0]
    for purchase in bought[::5]:
        stub.mark_paid(purchase.invoice_id or "")
    before = len(stub.requests)

    report = run(app)

    calls = [(r.method, r.path) for r in stub.requests[before:]]
    # 100 + 100 + 50 invoices, one page of refunds (none), and nothing else
    assert calls == [("GET", "/v1/invoices")] * 3 + [
        ("GET", "/v1/refunds"),
        ("GET", "/v1/disputes"),
    ]
    assert all(r.params["limit"] == "100" for r in stub.requests[before:])
    assert report.invoices_scanned == 250
    settled = findings(report, FindingKind.INVOICE_PAID_NOT_SETTLED)
    assert len(settled) == 50 and {f.outcome for f in settled} == {"settled"}
    assert state_of(db_session, first.purchase_id).balance == Decimal("50")


def test_a_rate_limited_page_is_retried_after_retry_after(
    app: Flask, client: FlaskClient, db_session: Session, stub: StripeStub
) -> None:
    bought = buy_wallet(client, db_session, paid="5")
    stub.mark_paid(bought.invoice_id or "")
    stub.fail_next(
        "GET", "/v1/invoices", status=429, type_="rate_limit_error", retry_after=0, times=2
    )
    before = len(stub.requests)

    report = run(app)

    assert [r.path for r in stub.requests[before:]] == ["/v1/invoices"] * 3 + [
        "/v1/refunds",
        "/v1/disputes",
    ]
    assert only(report, FindingKind.INVOICE_PAID_NOT_SETTLED).outcome == "settled"


def test_rate_limit_retries_are_bounded(
    app: Flask, client: FlaskClient, db_session: Session, stub: StripeStub
) -> None:
    buy_wallet(client, db_session, paid="5")
    stub.fail_next(
        "GET", "/v1/invoices", status=429, type_="rate_limit_error", retry_after=0, times=50
    )
    before = len(stub.requests)

    with pytest.raises(ReconcileAborted) as aborted:
        run(app)

    assert len(stub.requests[before:]) == 6  # the first try and 5 retries, then it stops
    assert "HTTP 429" in (aborted.value.report.error or "")


def test_stripe_unreachable_aborts_the_run(
    app: Flask, client: FlaskClient, db_session: Session, stub: StripeStub
) -> None:
    bought = buy_wallet(client, db_session, paid="5")
    stub.mark_paid(bought.invoice_id or "")
    stub.fail_next("GET", "/v1/invoices", status=None, times=10)  # connection dropped

    with pytest.raises(ReconcileAborted) as aborted:
        run(app)

    report = aborted.value.report
    assert report.exit_code == 2 and report.status == "error"
    assert report.error is not None and "could not be reached" in report.error
    assert state_of(db_session, bought.purchase_id).purchase_status == PurchaseStatus.OPEN


def test_purchases_table_is_read_in_batches(
    app: Flask, db_session: Session, stub: StripeStub, monkeypatch: pytest.MonkeyPatch
) -> None:
    from gateway.reconcile import context

    monkeypatch.setattr(context, "DB_BATCH", 7)
    made = [make_purchase(db_session, invoice_stored=False) for _ in range(16)]
    for purchase in made:
        backdate(db_session, purchase.id, minutes=600)

    report = run(app, dry_run=True)

    stuck = findings(report, FindingKind.STUCK_PURCHASE)
    assert sorted(f.purchase_id or "" for f in stuck) == sorted(p.id for p in made)
    assert {f.outcome for f in stuck} == {"abandon"}
    count = db_session.execute(select(func.count()).select_from(Purchase)).scalar_one()
    assert count == 16


def test_an_automatic_top_up_left_creating_is_left_to_the_worker(
    app: Flask, client: FlaskClient, db_session: Session, stub: StripeStub
) -> None:
    """No caller was told anything about an automatic top-up: it has no Idempotency-Key
    and is still not given up (the worker completes it)."""
    purchase = make_purchase(db_session, invoice_stored=False, rate=Decimal("1"))
    db_session.get_one(Purchase, purchase.id).collection_method = "charge_automatically"
    db_session.commit()
    backdate(db_session, purchase.id, minutes=600)
    before = len(stub.requests)

    report = run(app, grace=timedelta(minutes=60))

    assert findings(report, FindingKind.STUCK_PURCHASE) == []
    assert stripe_writes(stub, before) == []
    assert state_of(db_session, purchase.id).purchase_status == PurchaseStatus.CREATING


def test_a_console_purchase_stays_claimable_whatever_the_api_keys(
    app: Flask, client: FlaskClient, db_session: Session, stub: StripeStub
) -> None:
    """A purchase opened in the console is claimed by the operator's form token (its
    request key begins `operator:ID`), not by an API key: rotating the API keys does not
    leave it without a caller."""
    first = buy_wallet(client, db_session, paid="1")
    stub.fail_next("POST", "/v1/invoices/", after=True)  # finalized at Stripe, answer lost
    stuck = buy_more(client, db_session, first.wallet_id, paid="2", key="buy-1")
    backdate(db_session, stuck.purchase_id, minutes=10)
    db_session.execute(
        update(Purchase)
        .where(Purchase.id == stuck.purchase_id)
        .values(request_key="operator:opr_1:form-token:purchase:0")
    )
    db_session.commit()

    report = run(app, dry_run=True, api_principals={principal_of("test-key-2")})

    assert only(report, FindingKind.STUCK_PURCHASE).outcome == "adopt the invoice"


def test_a_purchase_whose_api_key_was_rotated_out_cannot_be_claimed(
    app: Flask, client: FlaskClient, db_session: Session, stub: StripeStub
) -> None:
    """Issue 12 #1: its caller retried with its new API key (another purchase); the
    old key is gone, so nobody can claim the first one, whose key is still live."""
    first = buy_wallet(client, db_session, paid="1")
    stub.fail_next("POST", "/v1/invoices/", after=True)  # finalized at Stripe, answer lost
    stuck = buy_more(client, db_session, first.wallet_id, paid="2", key="buy-1")  # test-key-1
    [invoice] = stub.invoices_with(**{META_PURCHASE_ID: stuck.purchase_id})
    backdate(db_session, stuck.purchase_id, minutes=10)

    # With its key still configured its caller may claim it: the invoice would be adopted.
    still_configured = run(app, dry_run=True, api_principals={principal_of(API_KEY)})
    assert only(still_configured, FindingKind.STUCK_PURCHASE).outcome == "adopt the invoice"

    rotated = run(app, api_principals={principal_of("test-key-2")})

    assert only(rotated, FindingKind.STUCK_PURCHASE).outcome == "voided"
    assert stub.invoices[invoice["id"]]["status"] == "void"
    assert state_of(db_session, stuck.purchase_id).purchase_status == PurchaseStatus.FAILED
