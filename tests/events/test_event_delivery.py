"""Delivering outgoing events: signed with Standard Webhooks, retried on the schedule,
recorded attempt by attempt, never lost (both databases; the worker in-process)."""

from __future__ import annotations

import json
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from flask import Flask
from flask.testing import FlaskClient, FlaskCliRunner
from sqlalchemy import select, update
from sqlalchemy.orm import Session
from standardwebhooks.webhooks import Webhook, WebhookVerificationError

from gateway import delivery
from gateway.db import get_db
from gateway.models import DeliveryAttempt, Event, EventDelivery
from gateway.settings import Settings
from gateway.worker import Worker
from tests.support.api import (
    create_wallet,
    delete,
    get,
    registered_endpoint,
    subscribed_customer,
)
from tests.support.receiver import Behaviour, Receiver, running_receiver


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    with running_receiver() as running:
        yield running


class Clock:
    def __init__(self) -> None:
        self.now = datetime.now(UTC)

    def __call__(self) -> datetime:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += timedelta(seconds=seconds)


def run_worker(app: Flask, clock: Clock | None = None, **overrides: Any) -> Any:
    with app.app_context():
        settings: Settings = app.extensions["settings"]
        if overrides:
            settings = Settings(**{**settings.__dict__, **overrides})
        worker = Worker(get_db(), settings, clock=clock or Clock(), duties=[])
        return worker.run_once()


def events_of(session: Session, wallet_id: str) -> list[Event]:
    session.expire_all()
    return list(
        session.execute(
            select(Event).where(Event.wallet_id == wallet_id).order_by(Event.position)
        ).scalars()
    )


def test_events_are_delivered_signed_with_standard_webhooks(
    app: Flask, client: FlaskClient, runner: FlaskCliRunner, db_session: Session, receiver: Receiver
) -> None:
    endpoint = registered_endpoint(client, receiver.url)
    wallet_id = create_wallet(client, subscribed_customer(client), granted_credits="3")["wallet"][
        "id"
    ]
    events = events_of(db_session, wallet_id)
    assert [event.type for event in events] == ["wallet.created", "wallet_transaction.created"]

    result = runner.invoke(args=["worker", "--once"])
    assert result.exit_code == 0, result.output
    assert "delivered 2" in result.output

    received = receiver.wait_for(2)
    assert [request.headers["webhook-id"] for request in received] == [e.id for e in events]
    verifier = Webhook(endpoint["secret"])
    for request, event in zip(received, events, strict=True):
        assert request.body.decode() == event.body
        assert verifier.verify(request.body, request.headers) == json.loads(event.body)
        assert request.headers["content-type"] == "application/json"
        # Signed with another secret, or altered, it does not verify.
        with pytest.raises(WebhookVerificationError):
            Webhook("whsec_" + "A" * 44).verify(request.body, request.headers)
        with pytest.raises(WebhookVerificationError):
            verifier.verify(request.body + b" ", request.headers)

    shown = get(client, f"/events/{events[0].id}").json
    [shown_delivery] = shown["deliveries"]  # type: ignore[index]
    assert shown_delivery["endpoint_id"] == endpoint["id"]
    assert shown_delivery["status"] == "delivered"
    assert [attempt["status_code"] for attempt in shown_delivery["attempts"]] == [200]
    # Nothing is due any more: a second run sends nothing.
    assert run_worker(app).delivered == 0
    assert len(receiver.received) == 2


def test_an_endpoint_gets_only_its_event_types_and_only_events_after_it_existed(
    app: Flask, client: FlaskClient, receiver: Receiver
) -> None:
    create_wallet(client, subscribed_customer(client))  # before the endpoint: not sent
    registered_endpoint(client, receiver.url, event_types=["wallet.updated"])
    wallet_id = create_wallet(client, subscribed_customer(client), granted_credits="1")["wallet"][
        "id"
    ]
    client.put(
        f"/api/v1/wallets/{wallet_id}",
        json={"wallet": {"name": "x"}},
        headers={"Authorization": "Bearer test-key-1"},
    )
    run_worker(app)
    [request] = receiver.wait_for(1)
    assert json.loads(request.body)["type"] == "wallet.updated"


def test_a_disabled_endpoint_gets_nothing_more(
    app: Flask, client: FlaskClient, receiver: Receiver
) -> None:
    endpoint = registered_endpoint(client, receiver.url)
    create_wallet(client, subscribed_customer(client))
    delete(client, f"/webhook_endpoints/{endpoint['id']}")
    create_wallet(client, subscribed_customer(client))
    summary = run_worker(app)
    assert summary.delivered == 0
    assert receiver.received == []


def test_a_failing_receiver_gets_retries_on_the_schedule_then_the_delivery_fails(
    app: Flask, client: FlaskClient, db_session: Session, receiver: Receiver
) -> None:
    receiver.behaviour = Behaviour(status=500, body=b"down for maintenance")
    registered_endpoint(client, receiver.url, event_types=["wallet.created"])
    wallet_id = create_wallet(client, subscribed_customer(client))["wallet"]["id"]
    [event] = events_of(db_session, wallet_id)
    clock = Clock()
    schedule = (5, 300)

    run_worker(app, clock, outgoing_webhook_retry_schedule=schedule)
    first_at = clock.now
    clock.advance(4)  # not due yet
    assert run_worker(app, clock, outgoing_webhook_retry_schedule=schedule).failed_attempts == 0
    clock.advance(1)
    run_worker(app, clock, outgoing_webhook_retry_schedule=schedule)
    clock.advance(299)
    assert run_worker(app, clock, outgoing_webhook_retry_schedule=schedule).failed_attempts == 0
    clock.advance(1)
    last = run_worker(app, clock, outgoing_webhook_retry_schedule=schedule)
    assert last.gave_up == 1
    clock.advance(100_000)
    assert run_worker(app, clock, outgoing_webhook_retry_schedule=schedule).failed_attempts == 0

    assert receiver.ids() == [event.id] * 3  # the same webhook-id every time
    db_session.expire_all()
    record = db_session.execute(
        select(EventDelivery).where(EventDelivery.event_id == event.id)
    ).scalar_one()
    assert (record.status, record.attempts, record.next_attempt_at) == ("failed", 3, None)
    attempts = db_session.execute(
        select(DeliveryAttempt)
        .where(DeliveryAttempt.delivery_id == record.id)
        .order_by(DeliveryAttempt.attempted_at)
    ).scalars().all()  # fmt: skip
    assert [a.attempted_at - first_at for a in attempts] == [
        timedelta(0),
        timedelta(seconds=5),
        timedelta(seconds=305),
    ]
    assert {(a.status_code, a.response_body) for a in attempts} == {(500, "down for maintenance")}

    # Fixed, and sent again by hand: delivered, with the same id.
    receiver.behaviour = Behaviour()
    with app.app_context():
        result = app.test_cli_runner().invoke(args=["events", "redeliver", "--failed"])
    assert result.exit_code == 0 and "queued 1" in result.output, result.output
    assert run_worker(app, clock).delivered == 1
    assert receiver.ids() == [event.id] * 4


@pytest.mark.parametrize(
    ("behaviour", "status", "error"),
    [
        (Behaviour(garbage=True), None, "Error"),
        (Behaviour(status=302, location="http://127.0.0.1:9/elsewhere"), 302, None),
        (Behaviour(status=200, body=b"<html>" + b"x" * 100_000), 200, None),
        (Behaviour(status=404, body=b"\xff\xfe not utf-8"), 404, None),
    ],
    ids=["garbage", "redirect", "huge-answer", "binary-404"],
)
def test_whatever_a_receiver_answers_is_recorded_as_an_attempt(  # noqa: PLR0917
    app: Flask,
    client: FlaskClient,
    db_session: Session,
    receiver: Receiver,
    behaviour: Behaviour,
    status: int | None,
    error: str | None,
) -> None:
    receiver.behaviour = behaviour
    registered_endpoint(client, receiver.url, event_types=["wallet.created"])
    create_wallet(client, subscribed_customer(client))
    summary = run_worker(app)
    assert summary.delivered == (1 if status == 200 else 0)
    db_session.expire_all()
    [attempt] = db_session.execute(select(DeliveryAttempt)).scalars().all()
    assert attempt.status_code == status
    if error:
        assert attempt.error and error in attempt.error
    else:
        assert attempt.error is None
        assert attempt.response_body is not None
        assert len(attempt.response_body.encode()) <= delivery.MAX_RESPONSE_BYTES * 3
        assert len(attempt.response_body) <= delivery.MAX_RESPONSE_BYTES
    assert len(receiver.received) == 1  # a redirect is not followed


def test_a_receiver_slower_than_the_timeout_is_a_failed_attempt(
    app: Flask, client: FlaskClient, db_session: Session, receiver: Receiver
) -> None:
    receiver.behaviour = Behaviour(delay=2.5)
    registered_endpoint(client, receiver.url, event_types=["wallet.created"])
    create_wallet(client, subscribed_customer(client))
    summary = run_worker(app, outgoing_webhook_timeout_seconds=1)
    assert (summary.delivered, summary.failed_attempts) == (0, 1)
    db_session.expire_all()
    [attempt] = db_session.execute(select(DeliveryAttempt)).scalars().all()
    assert attempt.status_code is None
    assert attempt.error is not None and "Timeout" in attempt.error
    assert 900 <= attempt.duration_ms < 2400


class Killed(BaseException):
    """The process dies mid-delivery (what SIGKILL does to a worker)."""


def test_a_worker_killed_between_claim_and_delivery_loses_nothing(
    app: Flask, client: FlaskClient, db_session: Session, receiver: Receiver
) -> None:
    registered_endpoint(client, receiver.url, event_types=["wallet.created"])
    wallet_id = create_wallet(client, subscribed_customer(client))["wallet"]["id"]
    [event] = events_of(db_session, wallet_id)

    class DyingSender(delivery.Sender):
        def send(self, *args: Any, **kwargs: Any) -> delivery.Outcome:
            raise Killed

    with app.app_context():
        settings: Settings = app.extensions["settings"]
        worker = Worker(get_db(), settings, sender=DyingSender(1), duties=[])
        with pytest.raises(Killed):
            worker.run_once()
    db_session.expire_all()
    record = db_session.execute(select(EventDelivery)).scalar_one()
    assert (record.status, record.attempts) == ("pending", 0)
    assert db_session.execute(select(DeliveryAttempt)).first() is None

    assert run_worker(app).delivered == 1
    assert receiver.ids() == [event.id]


def test_old_settled_events_are_purged_and_owed_ones_kept(
    app: Flask, client: FlaskClient, db_session: Session, receiver: Receiver
) -> None:
    registered_endpoint(client, receiver.url, event_types=["wallet.created"])
    old_wallet = create_wallet(client, subscribed_customer(client))["wallet"]["id"]
    run_worker(app)
    receiver.behaviour = Behaviour(status=503)
    owed_wallet = create_wallet(client, subscribed_customer(client))["wallet"]["id"]
    run_worker(app)  # pending, to be retried
    fresh_wallet = create_wallet(client, subscribed_customer(client))["wallet"]["id"]
    long_ago = datetime.now(UTC) - timedelta(days=31)
    db_session.execute(
        update(Event)
        .where(Event.wallet_id.in_([old_wallet, owed_wallet]))
        .values(created_at=long_ago)
    )
    db_session.commit()
    with app.app_context():
        settings: Settings = app.extensions["settings"]
        from gateway.worker import DUTIES

        [purge] = [duty for duty in DUTIES if duty.name == "purge-events"]
        assert "purged 1 event" in (purge.run(get_db(), settings, datetime.now(UTC)) or "")
    db_session.expire_all()
    left = set(db_session.execute(select(Event.wallet_id)).scalars())
    assert old_wallet not in left
    assert {owed_wallet, fresh_wallet} <= left
    assert db_session.execute(select(EventDelivery.event_id)).scalars().all()  # kept ones


def test_redeliver_one_event_and_unknown_ids(
    app: Flask, client: FlaskClient, runner: FlaskCliRunner, receiver: Receiver, db_session: Session
) -> None:
    registered_endpoint(client, receiver.url, event_types=["wallet.created"])
    wallet_id = create_wallet(client, subscribed_customer(client))["wallet"]["id"]
    [event] = events_of(db_session, wallet_id)
    run_worker(app)
    result = runner.invoke(args=["events", "redeliver", event.id])
    assert result.exit_code == 0 and "queued 1" in result.output
    run_worker(app)
    assert receiver.ids() == [event.id, event.id]
    assert runner.invoke(args=["events", "redeliver", "evt_nope"]).exit_code == 2
    assert runner.invoke(args=["events", "redeliver"]).exit_code == 2  # usage
