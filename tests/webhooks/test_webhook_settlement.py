"""What verified Stripe events do to purchases: settle once, fail, flag, ignore."""

from __future__ import annotations

import copy
import logging
from datetime import timedelta
from decimal import Decimal
from typing import Any

import pytest
from flask.testing import FlaskClient
from sqlalchemy.orm import Session

from gateway.db import utcnow
from gateway.models import (
    EntryStatus,
    Purchase,
    PurchaseStatus,
    Wallet,
    WalletTransaction,
    WebhookEventStatus,
)
from tests.support.api import assert_error, delete, get
from tests.support.webhooks import (
    invoice_event,
    invoice_object,
    make_purchase,
    post_signed,
    state_of,
    stored_event,
    stored_events,
    stripe_event,
)


def _ok(response: Any) -> dict[str, Any]:
    assert response.status_code == 200, response.get_data(as_text=True)
    return response.json["event"]  # type: ignore[no-any-return]


def test_paid_event_settles_the_purchase_and_raises_the_balance(
    client: FlaskClient, db_session: Session
) -> None:
    purchase = make_purchase(
        db_session, credits=Decimal("10"), rate=Decimal("5.00"), tax_cents=1000
    )
    event = invoice_event(purchase, "invoice.paid")

    answer = _ok(post_signed(client, event))

    assert answer == {
        "id": event["id"],
        "type": "invoice.paid",
        "status": "processed",
        "duplicate": False,
    }
    state = state_of(db_session, purchase.id)
    assert state.purchase_status == PurchaseStatus.SETTLED
    assert state.entry_status == EntryStatus.SETTLED
    assert state.invoice_status == "paid"
    assert state.balance == Decimal("10.00000")
    entry = get(client, f"/wallet_transactions/{purchase.transaction_id}").json[
        "wallet_transaction"
    ]
    assert entry["status"] == "settled"
    assert entry["settled_at"] is not None
    wallet = get(client, f"/wallets/{purchase.wallet_id}").json["wallet"]
    assert wallet["credits_balance"] == "10.00000"
    assert wallet["balance_cents"] == 5000
    row = stored_event(db_session, event["id"])
    assert row is not None
    assert row.status == WebhookEventStatus.PROCESSED
    assert row.type == "invoice.paid"
    assert row.attempts == 1
    assert row.purchase_id == purchase.id
    assert row.processed_at is not None and row.received_at is not None
    assert row.error is None


def test_the_same_event_five_times_in_a_row_credits_once(
    client: FlaskClient, db_session: Session
) -> None:
    purchase = make_purchase(db_session, granted=Decimal("3"))
    event = invoice_event(purchase, "invoice.paid")

    answers = [_ok(post_signed(client, event)) for _ in range(5)]

    assert [answer["duplicate"] for answer in answers] == [False, True, True, True, True]
    assert {answer["status"] for answer in answers} == {"processed"}
    assert state_of(db_session, purchase.id).balance == Decimal("13.00000")
    row = stored_event(db_session, event["id"])
    assert row is not None and row.attempts == 1
    assert stored_events(db_session) == 1


def test_paid_and_payment_succeeded_for_one_invoice_credit_once(
    client: FlaskClient, db_session: Session
) -> None:
    purchase = make_purchase(db_session)

    _ok(post_signed(client, invoice_event(purchase, "invoice.paid")))
    second = _ok(post_signed(client, invoice_event(purchase, "invoice.payment_succeeded")))

    assert second["status"] == "processed" and not second["duplicate"]
    assert state_of(db_session, purchase.id).balance == purchase.credits
    assert stored_events(db_session) == 2


def test_event_before_the_invoice_id_is_stored_is_found_by_metadata_and_credited_once(
    client: FlaskClient, db_session: Session
) -> None:
    purchase = make_purchase(db_session, invoice_stored=False)
    assert state_of(db_session, purchase.id).invoice_id is None

    _ok(post_signed(client, invoice_event(purchase, "invoice.paid")))
    _ok(post_signed(client, invoice_event(purchase, "invoice.payment_succeeded")))

    state = state_of(db_session, purchase.id)
    assert state.invoice_id == purchase.invoice_id
    assert state.purchase_status == PurchaseStatus.SETTLED
    assert state.balance == purchase.credits


@pytest.mark.parametrize(
    "event_type", ["invoice.paid", "invoice.payment_succeeded", "invoice.voided"]
)
@pytest.mark.parametrize("invoice_stored", [False, True])
def test_an_event_of_a_connected_account_is_ignored_and_changes_nothing(
    client: FlaskClient, db_session: Session, event_type: str, invoice_stored: bool
) -> None:
    """Issue 12 #2: a Connect account's event carrying our metadata (or even our
    invoice id) is not about our invoice: recorded as ignored, nothing moves."""
    purchase = make_purchase(db_session, invoice_stored=invoice_stored)
    before = state_of(db_session, purchase.id)
    event = {**invoice_event(purchase, event_type), "account": "acct_1OtherAccount"}

    received = _ok(post_signed(client, event))

    assert received["status"] == WebhookEventStatus.IGNORED
    assert state_of(db_session, purchase.id) == before
    stored = stored_event(db_session, event["id"])
    assert stored is not None and stored.status == WebhookEventStatus.IGNORED
    assert stored.error is not None and "acct_1OtherAccount" in stored.error
    assert stored.purchase_id is None


def test_expected_total_is_the_amount_when_the_total_is_not_stored_yet(
    client: FlaskClient, db_session: Session
) -> None:
    purchase = make_purchase(db_session, invoice_stored=False, tax_cents=800)
    short = invoice_event(purchase, "invoice.paid", amount_paid=purchase.amount_cents - 1)

    _ok(post_signed(client, short))

    state = state_of(db_session, purchase.id)
    assert state.purchase_status == PurchaseStatus.REVIEW_REQUIRED
    assert state.balance == 0


@pytest.mark.parametrize(
    ("invoice", "reason"),
    [
        ({"currency": "EUR"}, "paid in EUR, but the purchase is in USD"),
        ({"amount_paid": 5999}, "paid 5999 in minor units of USD, expected at least 6000"),
        ({"discounts": ["di_1"]}, "discount"),
        (
            {"credited_after_payment": 2000},
            "paid 4000 in minor units of USD (2000 credited back after payment)",
        ),
    ],
    ids=["other-currency", "underpaid", "discounted", "refunded-by-credit-note"],
)
def test_unacceptable_payment_is_flagged_for_review_and_credits_nothing(
    client: FlaskClient, db_session: Session, invoice: dict[str, Any], reason: str
) -> None:
    purchase = make_purchase(db_session, credits=Decimal("10"), rate=Decimal("5"), tax_cents=1000)

    _ok(post_signed(client, invoice_event(purchase, "invoice.paid", **invoice)))
    _ok(post_signed(client, invoice_event(purchase, "invoice.payment_succeeded")))

    state = state_of(db_session, purchase.id)
    assert state.purchase_status == PurchaseStatus.REVIEW_REQUIRED
    assert state.attention_reason is not None and reason in state.attention_reason
    assert state.balance == 0
    assert state.entry_status == EntryStatus.PENDING


def test_overpayment_settles(client: FlaskClient, db_session: Session) -> None:
    purchase = make_purchase(db_session)

    _ok(post_signed(client, invoice_event(purchase, "invoice.paid", amount_paid=99_999)))

    assert state_of(db_session, purchase.id).purchase_status == PurchaseStatus.SETTLED


def test_payment_failed_is_recorded_and_the_entry_stays_pending(
    client: FlaskClient, db_session: Session
) -> None:
    purchase = make_purchase(db_session)

    _ok(post_signed(client, invoice_event(purchase, "invoice.payment_failed", attempt_count=2)))

    state = state_of(db_session, purchase.id)
    assert state.purchase_status == PurchaseStatus.OPEN
    assert state.entry_status == EntryStatus.PENDING
    assert state.last_payment_error is not None
    assert state.last_payment_error.startswith("payment attempt 2 failed")
    # Stripe's retry then succeeds.
    _ok(post_signed(client, invoice_event(purchase, "invoice.paid")))
    assert state_of(db_session, purchase.id).balance == purchase.credits


@pytest.mark.parametrize(
    ("event_type", "invoice_status"),
    [("invoice.voided", "void"), ("invoice.marked_uncollectible", "uncollectible")],
)
def test_void_or_uncollectible_fails_the_purchase(
    client: FlaskClient, db_session: Session, event_type: str, invoice_status: str
) -> None:
    purchase = make_purchase(db_session)

    _ok(post_signed(client, invoice_event(purchase, event_type)))

    state = state_of(db_session, purchase.id)
    assert state.purchase_status == PurchaseStatus.FAILED
    assert state.entry_status == EntryStatus.FAILED
    assert state.invoice_status == invoice_status
    assert state.balance == 0
    entry = get(client, f"/wallet_transactions/{purchase.transaction_id}").json[
        "wallet_transaction"
    ]
    assert entry["status"] == "failed" and entry["failed_at"] is not None


@pytest.mark.parametrize("event_type", ["invoice.voided", "invoice.marked_uncollectible"])
def test_no_later_event_undoes_a_settlement(
    client: FlaskClient, db_session: Session, event_type: str
) -> None:
    purchase = make_purchase(db_session)
    _ok(post_signed(client, invoice_event(purchase, "invoice.paid")))

    _ok(post_signed(client, invoice_event(purchase, event_type)))
    _ok(post_signed(client, invoice_event(purchase, "invoice.payment_failed")))

    state = state_of(db_session, purchase.id)
    assert state.purchase_status == PurchaseStatus.SETTLED
    assert state.entry_status == EntryStatus.SETTLED
    assert state.invoice_status == "paid"
    assert state.balance == purchase.credits


def test_uncollectible_invoice_paid_later_is_credited(
    client: FlaskClient, db_session: Session
) -> None:
    purchase = make_purchase(db_session)
    _ok(post_signed(client, invoice_event(purchase, "invoice.marked_uncollectible")))
    assert state_of(db_session, purchase.id).entry_status == EntryStatus.FAILED

    _ok(post_signed(client, invoice_event(purchase, "invoice.paid")))

    state = state_of(db_session, purchase.id)
    assert state.purchase_status == PurchaseStatus.SETTLED
    assert state.entry_status == EntryStatus.SETTLED
    assert state.balance == purchase.credits


def test_payment_for_a_terminated_wallet_adds_no_credits_and_asks_for_a_refund(
    client: FlaskClient, db_session: Session
) -> None:
    purchase = make_purchase(db_session, granted=Decimal("4"))
    assert delete(client, f"/wallets/{purchase.wallet_id}").status_code == 200

    _ok(post_signed(client, invoice_event(purchase, "invoice.paid")))
    _ok(post_signed(client, invoice_event(purchase, "invoice.payment_succeeded")))

    state = state_of(db_session, purchase.id)
    assert state.purchase_status == PurchaseStatus.REFUND_REQUIRED
    assert state.attention_reason is not None and "terminated" in state.attention_reason
    assert state.entry_status == EntryStatus.FAILED
    assert state.balance == 0
    assert state.invoice_status == "paid"


def test_payment_for_an_expired_wallet_the_sweep_has_not_reached_adds_no_credits(
    client: FlaskClient, db_session: Session
) -> None:
    purchase = make_purchase(db_session, granted=Decimal("4"))
    wallet = db_session.get_one(Wallet, purchase.wallet_id)
    wallet.expiration_at = utcnow() - timedelta(minutes=1)  # expired, still `active`
    db_session.commit()

    _ok(post_signed(client, invoice_event(purchase, "invoice.paid")))

    state = state_of(db_session, purchase.id)
    assert state.purchase_status == PurchaseStatus.REFUND_REQUIRED
    assert state.attention_reason is not None and "expired" in state.attention_reason
    assert state.entry_status == EntryStatus.FAILED
    assert state.balance == Decimal("4.00000")


def test_other_event_types_are_recorded_as_ignored(
    client: FlaskClient, db_session: Session
) -> None:
    event = stripe_event("customer.created", {"id": "cus_1", "object": "customer"})

    answer = _ok(post_signed(client, event))

    assert answer["status"] == "ignored"
    row = stored_event(db_session, event["id"])
    assert row is not None and row.status == WebhookEventStatus.IGNORED
    assert row.error == "customer.created events are not used"


def test_invoices_that_are_not_ours_are_recorded_as_ignored(
    client: FlaskClient, db_session: Session
) -> None:
    purchase = make_purchase(db_session)
    foreign = invoice_object(purchase, "paid", metadata={}, invoice_id="in_billing_core_1")
    unknown = invoice_object(
        purchase, "paid", metadata={"gateway_purchase_id": "pur_gone"}, invoice_id="in_other"
    )

    for data in (foreign, unknown):
        answer = _ok(post_signed(client, stripe_event("invoice.paid", data)))
        assert answer["status"] == "ignored"

    assert state_of(db_session, purchase.id).balance == 0


def test_a_second_invoice_naming_a_purchase_does_not_settle_it(
    client: FlaskClient, db_session: Session
) -> None:
    purchase = make_purchase(db_session)
    other = invoice_object(purchase, "paid", invoice_id="in_duplicate")

    answer = _ok(post_signed(client, stripe_event("invoice.paid", other)))

    assert answer["status"] == "ignored"
    state = state_of(db_session, purchase.id)
    assert state.invoice_id == purchase.invoice_id
    assert state.balance == 0


def test_processing_error_rolls_back_records_the_failure_and_answers_500(
    client: FlaskClient, db_session: Session
) -> None:
    # A ledger that disagrees with its purchase (the entry already settled) stops
    # processing; the event's own effects (linking the invoice id) must roll back.
    purchase = make_purchase(db_session, invoice_stored=False)
    entry = db_session.get_one(WalletTransaction, purchase.transaction_id)
    entry.status = EntryStatus.SETTLED
    db_session.commit()
    event = invoice_event(purchase, "invoice.paid")

    response = post_signed(client, event)

    body = assert_error(response, 500, "webhook_processing_failed")
    assert body["error_details"] == {"event_id": event["id"]}
    assert "Traceback" not in response.get_data(as_text=True)
    row = stored_event(db_session, event["id"])
    assert row is not None
    assert row.status == WebhookEventStatus.FAILED
    assert row.attempts == 1
    assert row.error is not None and "TransitionError" in row.error
    db_session.expire_all()
    row_after = db_session.get_one(Purchase, purchase.id)
    assert row_after.provider_invoice_id is None  # rolled back with the rest
    assert row_after.status == PurchaseStatus.CREATING
    assert db_session.get_one(Wallet, purchase.wallet_id).credits_balance == 0

    # An operator repairs the entry; Stripe's next delivery processes the event.
    entry = db_session.get_one(WalletTransaction, purchase.transaction_id)
    entry.status = EntryStatus.PENDING
    db_session.commit()
    answer = _ok(post_signed(client, event))

    assert answer["status"] == "processed" and not answer["duplicate"]
    row = stored_event(db_session, event["id"])
    assert row is not None and row.attempts == 2 and row.error is None
    state = state_of(db_session, purchase.id)
    assert state.purchase_status == PurchaseStatus.SETTLED
    assert state.balance == purchase.credits


def test_settled_purchase_shows_the_paid_invoice_in_the_transaction(
    client: FlaskClient, db_session: Session
) -> None:
    purchase = make_purchase(db_session, tax_cents=1000)
    _ok(post_signed(client, invoice_event(purchase, "invoice.paid")))

    entry = get(client, f"/wallet_transactions/{purchase.transaction_id}").json[
        "wallet_transaction"
    ]

    assert entry["invoice"]["status"] == "paid"
    assert entry["invoice"]["provider_invoice_id"] == purchase.invoice_id
    assert entry["invoice"]["total_cents"] == purchase.total_cents
    row = db_session.get_one(Purchase, purchase.id)
    assert row.amount_paid_cents == purchase.total_cents


def test_a_repeat_of_an_earlier_event_changes_nothing_even_after_the_purchase_moved(
    client: FlaskClient, db_session: Session
) -> None:
    purchase = make_purchase(db_session)
    failed = invoice_event(purchase, "invoice.payment_failed", attempt_count=1)
    _ok(post_signed(client, failed))
    _ok(post_signed(client, invoice_event(purchase, "invoice.paid")))
    db_session.expire_all()
    settled = db_session.get_one(Purchase, purchase.id)
    before = (settled.updated_at, settled.last_payment_error, settled.status)

    # Stripe delivers the old failure again: it is applied, found done, rolled back.
    answer = _ok(post_signed(client, failed))

    assert answer["duplicate"] is True and answer["status"] == "processed"
    db_session.expire_all()
    after = db_session.get_one(Purchase, purchase.id)
    assert (after.updated_at, after.last_payment_error, after.status) == before
    row = stored_event(db_session, failed["id"])
    assert row is not None and row.attempts == 1


def test_a_repeat_that_fails_while_applied_again_answers_the_stored_outcome(
    client: FlaskClient, db_session: Session, caplog: pytest.LogCaptureFixture
) -> None:
    purchase = make_purchase(db_session)
    event = invoice_event(purchase, "invoice.paid")
    _ok(post_signed(client, event))

    # The same event again, with an invoice its processing cannot read (no id): this
    # delivery's processing fails for real, nothing of ours replaced.
    broken = copy.deepcopy(event)
    del broken["data"]["object"]["id"]
    with caplog.at_level(logging.ERROR, logger="gateway.webhooks"):
        answer = _ok(post_signed(client, broken))
    assert any(
        record.getMessage() == f"processing webhook event {event['id']} failed"
        for record in caplog.records
    ), "the repeat's processing failed"

    # Not a 500: Stripe would retry an event that is done, forever.
    assert answer == {"id": event["id"], "type": "invoice.paid", "status": "processed",
                      "duplicate": True}  # fmt: skip
    row = stored_event(db_session, event["id"])
    assert row is not None and row.status == WebhookEventStatus.PROCESSED and row.attempts == 1
    assert state_of(db_session, purchase.id).balance == purchase.credits
