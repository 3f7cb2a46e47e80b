"""A wallet that ends takes its unpaid purchases with it, and their invoices at Stripe."""

from __future__ import annotations

import json
from collections.abc import Iterator
from datetime import timedelta
from decimal import Decimal
from typing import Any

import pytest
import responses
from flask import Flask
from flask.testing import FlaskClient, FlaskCliRunner
from sqlalchemy import Engine, create_engine, text
from sqlalchemy.orm import Session

from gateway import settlement
from gateway.db import get_db, utcnow
from gateway.models import EntryStatus, PurchaseStatus, Wallet, WalletStatus
from gateway.providers import get_provider
from tests.support.api import delete
from tests.support.config import postgres_url
from tests.support.stripe import STRIPE_API, answer_invoice, void_calls
from tests.support.threads import app_session
from tests.support.webhooks import (
    invoice_event,
    invoice_object,
    make_purchase,
    post_signed,
    state_of,
)


def test_terminating_a_wallet_fails_its_unpaid_purchase_and_voids_the_invoice(
    client: FlaskClient, db_session: Session, stripe_mock: responses.RequestsMock
) -> None:
    purchase = make_purchase(db_session, granted=Decimal("2"))
    answer_invoice(stripe_mock, purchase, "open")

    response = delete(client, f"/wallets/{purchase.wallet_id}")

    assert response.status_code == 200, response.json
    [void] = void_calls(stripe_mock)
    assert void.request.headers["Idempotency-Key"] == f"{purchase.invoice_id}:void"
    state = state_of(db_session, purchase.id)
    assert state.purchase_status == PurchaseStatus.FAILED
    assert state.entry_status == EntryStatus.FAILED
    assert state.invoice_status == "void"
    assert not state.void_pending
    assert state.balance == 0


def test_a_failed_void_leaves_the_purchase_flagged_and_a_later_run_finishes_it(
    app: Flask, client: FlaskClient, db_session: Session, stripe_mock: responses.RequestsMock
) -> None:
    purchase = make_purchase(db_session)
    stripe_mock.get(
        f"{STRIPE_API}/invoices/{purchase.invoice_id}", json=invoice_object(purchase, "open")
    )
    stripe_mock.post(
        f"{STRIPE_API}/invoices/{purchase.invoice_id}/void",
        status=500,
        json={"error": {"type": "api_error", "message": "down"}},
    )

    response = delete(client, f"/wallets/{purchase.wallet_id}")

    assert response.status_code == 200  # best effort: the termination stands
    state = state_of(db_session, purchase.id)
    assert state.purchase_status == PurchaseStatus.FAILED
    assert state.entry_status == EntryStatus.FAILED
    assert state.void_pending

    # Stripe is back; the reconciliation run calls the same routine for every flag.
    stripe_mock.reset()
    answer_invoice(stripe_mock, purchase, "open")
    with app.app_context():
        result = settlement.void_flagged_invoices(get_db().session, get_provider())
    assert result.voided == [purchase.id]
    state = state_of(db_session, purchase.id)
    assert not state.void_pending
    assert state.invoice_status == "void"


def test_a_payment_that_beat_the_void_is_marked_for_refund(
    client: FlaskClient, db_session: Session, stripe_mock: responses.RequestsMock
) -> None:
    purchase = make_purchase(db_session)
    # The customer paid just before the wallet ended: there is nothing left to void.
    answer_invoice(stripe_mock, purchase, "paid")

    assert delete(client, f"/wallets/{purchase.wallet_id}").status_code == 200

    assert void_calls(stripe_mock) == []
    state = state_of(db_session, purchase.id)
    assert state.purchase_status == PurchaseStatus.REFUND_REQUIRED
    assert state.entry_status == EntryStatus.FAILED
    assert not state.void_pending
    assert state.balance == 0
    # The paid webhook arriving afterwards changes nothing.
    assert post_signed(client, invoice_event(purchase, "invoice.paid")).status_code == 200
    assert state_of(db_session, purchase.id) == state


def test_payment_landing_after_termination_adds_no_credits(
    client: FlaskClient, db_session: Session, stripe_mock: responses.RequestsMock
) -> None:
    purchase = make_purchase(db_session, granted=Decimal("4"))
    answer_invoice(stripe_mock, purchase, "open")
    assert delete(client, f"/wallets/{purchase.wallet_id}").status_code == 200

    # Stripe's void webhook, then a payment that raced it anyway.
    assert post_signed(client, invoice_event(purchase, "invoice.voided")).status_code == 200
    assert post_signed(client, invoice_event(purchase, "invoice.paid")).status_code == 200

    state = state_of(db_session, purchase.id)
    assert state.purchase_status == PurchaseStatus.REFUND_REQUIRED
    assert state.attention_reason is not None and "refund" in state.attention_reason
    assert state.entry_status == EntryStatus.FAILED
    assert state.balance == 0


@pytest.mark.parametrize("ending", ["terminated", "expired"])
def test_a_payment_waiting_for_review_is_resolved_when_its_wallet_ends(
    client: FlaskClient,
    runner: FlaskCliRunner,
    db_session: Session,
    stripe_mock: responses.RequestsMock,
    ending: str,
) -> None:
    """Issue 12 #6: a `review_required` purchase kept a pending entry in a terminated
    wallet. The wallet can no longer take the credits: the payment is to be refunded."""
    purchase = make_purchase(db_session, granted=Decimal("2"))
    underpaid = invoice_event(purchase, "invoice.paid", amount_paid=purchase.total_cents - 1)
    assert post_signed(client, underpaid).status_code == 200
    before = state_of(db_session, purchase.id)
    assert (before.purchase_status, before.entry_status) == (
        PurchaseStatus.REVIEW_REQUIRED,
        EntryStatus.PENDING,
    )

    if ending == "terminated":
        assert delete(client, f"/wallets/{purchase.wallet_id}").status_code == 200
    else:
        wallet = db_session.get_one(Wallet, purchase.wallet_id)
        wallet.expiration_at = utcnow() - timedelta(hours=1)
        db_session.commit()
        assert runner.invoke(args=["expire-wallets"]).exit_code == 0

    state = state_of(db_session, purchase.id)
    assert state.entry_status == EntryStatus.FAILED  # nothing left pending
    assert state.purchase_status == PurchaseStatus.REFUND_REQUIRED
    assert state.attention_reason is not None
    assert "refund" in state.attention_reason
    assert before.attention_reason is not None and before.attention_reason in state.attention_reason
    assert state.balance == 0
    assert void_calls(stripe_mock) == []  # paid: nothing to void
    # A repeat of the paid event changes nothing.
    assert post_signed(client, underpaid).status_code == 200
    assert state_of(db_session, purchase.id) == state


def test_the_expiry_sweep_voids_the_invoices_of_expired_wallets(
    runner: FlaskCliRunner, db_session: Session, stripe_mock: responses.RequestsMock
) -> None:
    purchase = make_purchase(db_session, granted=Decimal("3"))
    wallet = db_session.get_one(Wallet, purchase.wallet_id)
    wallet.expiration_at = utcnow() - timedelta(hours=1)
    db_session.commit()
    answer_invoice(stripe_mock, purchase, "open")

    result = runner.invoke(args=["expire-wallets"])

    assert result.exit_code == 0, result.output
    assert len(void_calls(stripe_mock)) == 1
    db_session.expire_all()
    assert db_session.get_one(Wallet, purchase.wallet_id).status == WalletStatus.TERMINATED
    state = state_of(db_session, purchase.id)
    assert state.purchase_status == PurchaseStatus.FAILED
    assert state.invoice_status == "void"
    assert not state.void_pending


@pytest.fixture
def observer() -> Iterator[Engine]:
    """A connection pool of its own, to look at what other transactions committed."""
    engine = create_engine(postgres_url())
    yield engine
    engine.dispose()


@pytest.mark.postgres
def test_the_invoice_is_voided_after_commit_with_no_lock_held(
    committed_app: Flask, observer: Engine, stripe_mock: responses.RequestsMock
) -> None:
    with app_session(committed_app) as session:
        purchase = make_purchase(session)
    seen: dict[str, Any] = {}

    def void(request: Any) -> tuple[int, dict[str, str], str]:
        with observer.connect() as conn:
            # Committed already, and the rows are free: NOWAIT fails if anyone holds them.
            conn.execute(text("SET lock_timeout = '1ms'"))
            seen["wallet"] = conn.execute(
                text("SELECT status FROM wallets WHERE id = :id FOR UPDATE NOWAIT"),
                {"id": purchase.wallet_id},
            ).scalar_one()
            seen["purchase"] = conn.execute(
                text("SELECT status FROM purchases WHERE id = :id FOR UPDATE NOWAIT"),
                {"id": purchase.id},
            ).scalar_one()
            conn.rollback()
        return 200, {}, json.dumps(invoice_object(purchase, "void"))

    stripe_mock.get(
        f"{STRIPE_API}/invoices/{purchase.invoice_id}", json=invoice_object(purchase, "open")
    )
    stripe_mock.add_callback(
        "POST", f"{STRIPE_API}/invoices/{purchase.invoice_id}/void", callback=void
    )

    response = delete(committed_app.test_client(), f"/wallets/{purchase.wallet_id}")

    assert response.status_code == 200
    assert seen == {"wallet": "terminated", "purchase": "failed"}
    with app_session(committed_app) as session:
        state = state_of(session, purchase.id)
    assert state.invoice_status == "void" and not state.void_pending
