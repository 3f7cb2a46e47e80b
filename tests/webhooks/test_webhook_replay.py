"""`gateway webhooks replay`: stored events processed again by operators."""

from __future__ import annotations

from decimal import Decimal
from typing import Any

from flask.testing import FlaskClient, FlaskCliRunner
from sqlalchemy.orm import Session

from gateway.models import EntryStatus, PurchaseStatus, WalletTransaction, WebhookEventStatus
from tests.support.webhooks import (
    PurchaseRow,
    invoice_event,
    make_purchase,
    post_signed,
    state_of,
    stored_event,
    stripe_event,
)


def _set_entry(session: Session, purchase: PurchaseRow, status: EntryStatus) -> None:
    session.get_one(WalletTransaction, purchase.transaction_id).status = status
    session.commit()


def _failed_delivery(
    client: FlaskClient, session: Session, purchase: PurchaseRow
) -> dict[str, Any]:
    """A paid event whose processing fails: the ledger disagrees with the purchase."""
    _set_entry(session, purchase, EntryStatus.SETTLED)
    event = invoice_event(purchase, "invoice.paid")
    assert post_signed(client, event).status_code == 500
    row = stored_event(session, event["id"])
    assert row is not None and row.status == WebhookEventStatus.FAILED
    return event


def test_replaying_a_failed_event_after_the_cause_is_fixed_settles_it(
    client: FlaskClient, runner: FlaskCliRunner, db_session: Session
) -> None:
    purchase = make_purchase(db_session)
    event = _failed_delivery(client, db_session, purchase)
    _set_entry(db_session, purchase, EntryStatus.PENDING)

    result = runner.invoke(args=["webhooks", "replay", event["id"]])

    assert result.exit_code == 0, result.output
    assert f"{event['id']}  invoice.paid  processed" in result.output
    row = stored_event(db_session, event["id"])
    assert row is not None and row.status == WebhookEventStatus.PROCESSED
    assert row.attempts == 2 and row.error is None
    assert state_of(db_session, purchase.id).balance == purchase.credits


def test_replaying_a_processed_event_changes_nothing(
    client: FlaskClient, runner: FlaskCliRunner, db_session: Session
) -> None:
    purchase = make_purchase(db_session, granted=Decimal("2"))
    event = invoice_event(purchase, "invoice.paid")
    assert post_signed(client, event).status_code == 200
    before = state_of(db_session, purchase.id)

    result = runner.invoke(args=["webhooks", "replay", event["id"]])

    assert result.exit_code == 0, result.output
    assert "already settled" in result.output
    assert state_of(db_session, purchase.id) == before
    row = stored_event(db_session, event["id"])
    assert row is not None and row.attempts == 2


def test_replay_failed_reprocesses_every_failed_event_and_reports_those_still_failing(
    client: FlaskClient, runner: FlaskCliRunner, db_session: Session
) -> None:
    fixed = make_purchase(db_session)
    broken = make_purchase(db_session)
    fixed_event = _failed_delivery(client, db_session, fixed)
    broken_event = _failed_delivery(client, db_session, broken)
    ignored = stripe_event("customer.updated", {"id": "cus_1", "object": "customer"})
    assert post_signed(client, ignored).status_code == 200
    _set_entry(db_session, fixed, EntryStatus.PENDING)

    result = runner.invoke(args=["webhooks", "replay", "--failed"])

    assert result.exit_code == 1, result.output
    assert f"{fixed_event['id']}  invoice.paid  processed" in result.output
    assert f"{broken_event['id']}  failed  TransitionError" in result.output
    assert ignored["id"] not in result.output
    assert "replayed 2 event(s), 1 failed" in result.output
    assert state_of(db_session, fixed.id).purchase_status == PurchaseStatus.SETTLED
    row = stored_event(db_session, broken_event["id"])
    assert row is not None and row.status == WebhookEventStatus.FAILED and row.attempts == 2


def test_replay_failed_with_nothing_to_do_succeeds(runner: FlaskCliRunner) -> None:
    result = runner.invoke(args=["webhooks", "replay", "--failed"])

    assert result.exit_code == 0, result.output
    assert "replayed 0 event(s), 0 failed" in result.output


def test_replay_of_an_unknown_event_exits_2(runner: FlaskCliRunner) -> None:
    result = runner.invoke(args=["webhooks", "replay", "evt_never_seen"])

    assert result.exit_code == 2
    assert "evt_never_seen" in result.output


def test_replay_needs_exactly_one_of_an_id_or_failed(runner: FlaskCliRunner) -> None:
    assert runner.invoke(args=["webhooks", "replay"]).exit_code == 2
    assert runner.invoke(args=["webhooks", "replay", "evt_1", "--failed"]).exit_code == 2
