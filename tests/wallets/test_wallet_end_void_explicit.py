"""The void of an ended wallet's invoices is an explicit call made after the commit.

Ending a wallet (the use case in `gateway.wallets`) only flags the purchases it failed
and says which they are; the caller commits and then asks the provider to void their
invoices. Nothing registered on import or on a session reaches Stripe by itself, so an
ending that is rolled back, or committed by code that does not ask, calls no one.
"""

from __future__ import annotations

from decimal import Decimal
from typing import Any

import pytest
import responses
from flask import Flask
from flask.testing import FlaskClient, FlaskCliRunner
from sqlalchemy.orm import Session

from gateway import settlement, wallets
from gateway.actors import SYSTEM
from gateway.db import get_db, unit_of_work, utcnow
from gateway.models import Customer, PurchaseStatus, Wallet, WalletStatus
from gateway.providers import get_provider
from tests.support.api import create_subscription, post
from tests.support.clock import past
from tests.support.console import make_operator, sign_in, submit
from tests.support.ledger import set_expiration
from tests.support.stripe import answer_invoice, void_calls
from tests.support.webhooks import PurchaseRow, make_purchase, state_of


def _assert_voided(db_session: Session, purchase: PurchaseRow) -> None:
    state = state_of(db_session, purchase.id)
    assert state.purchase_status == PurchaseStatus.FAILED
    assert state.invoice_status == "void"
    assert not state.void_pending


def test_committing_an_ending_calls_no_one_the_explicit_void_does(
    app: Flask, db_session: Session, stripe_mock: responses.RequestsMock
) -> None:
    purchase = make_purchase(db_session, granted=Decimal("2"))
    answer_invoice(stripe_mock, purchase, "open")

    with app.app_context():
        db = get_db()
        with unit_of_work(db.session()) as session:
            ended = wallets.terminate_wallet(
                session, purchase.wallet_id, utcnow(), created_by=SYSTEM
            )
            # Nothing waits on the commit to call the provider.
            assert not list(session.dispatch.after_commit)
        session.close()

        # Committed: the purchase failed and is flagged, and Stripe heard nothing yet.
        assert ended.purchases_to_void == [purchase.id]
        assert len(stripe_mock.calls) == 0
        flagged = state_of(db_session, purchase.id)
        assert flagged.purchase_status == PurchaseStatus.FAILED and flagged.void_pending

        settlement.void_invoices_of_ended_wallets(
            db.session, get_provider(), ended.purchases_to_void
        )

    [void] = void_calls(stripe_mock)
    assert void.request.headers["Idempotency-Key"] == f"{purchase.invoice_id}:void"
    _assert_voided(db_session, purchase)


def test_an_ending_rolled_back_flags_nothing_and_voids_nothing(
    app: Flask, db_session: Session, stripe_mock: responses.RequestsMock
) -> None:
    purchase = make_purchase(db_session)
    answer_invoice(stripe_mock, purchase, "open")

    with app.app_context(), pytest.raises(RuntimeError, match="after the ending"):
        session = get_db().session()
        try:
            with unit_of_work(session):
                wallets.terminate_wallet(session, purchase.wallet_id, utcnow(), created_by=SYSTEM)
                raise RuntimeError("something failed after the ending, before the commit")
        finally:
            session.close()

    assert len(stripe_mock.calls) == 0
    state = state_of(db_session, purchase.id)
    assert state.purchase_status == PurchaseStatus.OPEN
    assert not state.void_pending
    db_session.expire_all()
    assert db_session.get_one(Wallet, purchase.wallet_id).status == WalletStatus.ACTIVE


def test_terminating_from_the_console_voids_the_open_invoice(
    app: Flask, client: FlaskClient, db_session: Session, stripe_mock: responses.RequestsMock
) -> None:
    purchase = make_purchase(db_session, granted=Decimal("1"))
    answer_invoice(stripe_mock, purchase, "open")
    make_operator(app)
    assert sign_in(client).status_code == 303

    response = submit(client, f"/console/wallets/{purchase.wallet_id}/terminate")

    assert response.status_code == 303, response.get_data(as_text=True)
    assert len(void_calls(stripe_mock)) == 1
    _assert_voided(db_session, purchase)


def test_a_new_wallet_that_replaces_an_expired_one_voids_its_open_invoice(
    client: FlaskClient, db_session: Session, stripe_mock: responses.RequestsMock
) -> None:
    purchase = make_purchase(db_session, granted=Decimal("3"))
    customer = db_session.get_one(Wallet, purchase.wallet_id).customer_id
    external_id = db_session.get_one(Customer, customer).external_id
    create_subscription(client, external_id)
    set_expiration(db_session, purchase.wallet_id, past(hours=1))
    answer_invoice(stripe_mock, purchase, "open")

    response = post(
        client, "/wallets", {"wallet": {"external_customer_id": external_id, "rate_amount": "1"}}
    )

    assert response.status_code == 201, response.json
    assert len(void_calls(stripe_mock)) == 1
    _assert_voided(db_session, purchase)


def test_the_workers_expiry_duty_voids_the_open_invoice(
    runner: FlaskCliRunner, db_session: Session, stripe_mock: responses.RequestsMock
) -> None:
    purchase = make_purchase(db_session, granted=Decimal("3"))
    set_expiration(db_session, purchase.wallet_id, past(hours=1))
    answer_invoice(stripe_mock, purchase, "open")

    result = runner.invoke(args=["worker", "--once"])

    assert result.exit_code == 0, result.output
    assert len(void_calls(stripe_mock)) == 1
    _assert_voided(db_session, purchase)


@pytest.mark.parametrize("settings_overrides", [{"STRIPE_SECRET_KEY": ""}])
def test_without_a_provider_the_sweep_leaves_the_purchase_flagged(
    runner: FlaskCliRunner, db_session: Session, settings_overrides: dict[str, Any]
) -> None:
    purchase = make_purchase(db_session)
    set_expiration(db_session, purchase.wallet_id, past(hours=1))

    result = runner.invoke(args=["expire-wallets"])

    assert result.exit_code == 0, result.output
    state = state_of(db_session, purchase.id)
    assert state.purchase_status == PurchaseStatus.FAILED
    assert state.void_pending  # for reconciliation, once a provider is configured
