"""Stored Stripe events are not kept forever: `gateway webhooks purge` and
`webhooks.purge_events` (the worker's hourly call) delete what nothing reads again."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

import pytest
from flask import Flask
from flask.testing import FlaskClient, FlaskCliRunner
from sqlalchemy import func, select, update
from sqlalchemy.orm import Session

from gateway.db import get_db, utcnow
from gateway.models import WebhookEvent, WebhookEventStatus
from gateway.webhooks import purge_events
from tests.support.webhooks import (
    invoice_event,
    make_purchase,
    post_signed,
    stripe_event,
)


def _stored(session: Session) -> dict[str, str]:
    session.expire_all()
    rows = session.execute(select(WebhookEvent.id, WebhookEvent.status))
    return {row.id: row.status for row in rows}


def _age(session: Session, event_id: str, days: int) -> None:
    session.execute(
        update(WebhookEvent)
        .where(WebhookEvent.id == event_id)
        .values(received_at=utcnow() - timedelta(days=days))
    )
    session.commit()


def _events_of_every_kind(client: FlaskClient, session: Session, days: int) -> dict[str, str]:
    """One processed, one ignored, one failed event, each received `days` ago."""
    purchase = make_purchase(session)
    processed = invoice_event(purchase, "invoice.paid")
    ignored = stripe_event("customer.created", {"id": "cus_1", "object": "customer"})
    assert post_signed(client, processed).status_code == 200
    assert post_signed(client, ignored).status_code == 200
    failing = invoice_event(purchase, "invoice.voided")
    failing["data"]["object"]["id"] = None  # unreadable: processing fails, it is recorded
    assert post_signed(client, failing).status_code == 500
    for event in (processed, ignored, failing):
        _age(session, event["id"], days)
    return {"processed": processed["id"], "ignored": ignored["id"], "failed": failing["id"]}


def test_old_processed_and_ignored_events_go_failed_ones_stay(
    app: Flask, client: FlaskClient, db_session: Session
) -> None:
    old = _events_of_every_kind(client, db_session, days=91)
    recent = _events_of_every_kind(client, db_session, days=89)
    assert _stored(db_session)[old["failed"]] == WebhookEventStatus.FAILED

    with app.app_context():
        purged = purge_events(get_db(), now=utcnow(), retention=timedelta(days=90))

    assert purged == 2
    stored = _stored(db_session)
    assert old["processed"] not in stored and old["ignored"] not in stored
    assert stored[old["failed"]] == WebhookEventStatus.FAILED  # replay still needs it
    assert set(recent.values()) <= set(stored)
    with app.app_context():  # nothing left to do
        assert purge_events(get_db(), now=utcnow(), retention=timedelta(days=90)) == 0


def test_purge_goes_in_batches_and_can_be_bounded(
    app: Flask, client: FlaskClient, db_session: Session
) -> None:
    events = [stripe_event("customer.created", {"id": f"cus_{n}"}) for n in range(5)]
    for event in events:
        assert post_signed(client, event).status_code == 200
        _age(db_session, event["id"], 400)

    with app.app_context():
        first = purge_events(
            get_db(), now=utcnow(), retention=timedelta(days=90), batch_size=2, max_batches=1
        )
        rest = purge_events(get_db(), now=utcnow(), retention=timedelta(days=90), batch_size=2)

    assert (first, rest) == (2, 3)
    assert db_session.scalar(select(func.count()).select_from(WebhookEvent)) == 0


def test_a_retention_shorter_than_stripes_redeliveries_is_refused(app: Flask) -> None:
    with app.app_context(), pytest.raises(ValueError, match="at least 7 days"):
        purge_events(get_db(), now=utcnow(), retention=timedelta(days=2))


class TestTheCommand:
    @pytest.fixture
    def settings_overrides(self) -> dict[str, Any]:
        from tests.support.config import TEST_SETTINGS

        return {**TEST_SETTINGS, "WEBHOOK_EVENT_RETENTION_DAYS": 30}

    def test_purges_by_the_configured_retention(
        self, runner: FlaskCliRunner, client: FlaskClient, db_session: Session
    ) -> None:
        old = _events_of_every_kind(client, db_session, days=31)
        recent = _events_of_every_kind(client, db_session, days=29)

        result = runner.invoke(args=["webhooks", "purge", "--batch-size", "1"])

        assert result.exit_code == 0, result.output
        assert "purged 2 webhook event(s) older than 30 day(s)" in result.output
        stored = _stored(db_session)
        assert set(stored) == {old["failed"], *recent.values()}
