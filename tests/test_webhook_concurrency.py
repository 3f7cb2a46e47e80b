"""Concurrent deliveries from real threads on PostgreSQL still credit exactly once."""

from __future__ import annotations

import threading
from collections.abc import Callable
from decimal import Decimal
from typing import Any

import pytest
from flask import Flask
from sqlalchemy import func, select

from gateway.db import get_db
from gateway.models import EntryStatus, PurchaseStatus, WebhookEvent, WebhookEventStatus
from tests.support.webhooks import (
    PurchaseRow,
    encode,
    invoice_event,
    make_purchase,
    sign,
    state_of,
)

pytestmark = pytest.mark.postgres


def _purchase(app: Flask) -> PurchaseRow:
    with app.app_context():
        session = get_db().session()
        try:
            return make_purchase(session, credits=Decimal("7.5"), granted=Decimal("1"))
        finally:
            session.close()


def _at_once(app: Flask, bodies: list[bytes]) -> list[Any]:
    """POST each body from its own thread, all released together by a barrier."""
    barrier = threading.Barrier(len(bodies))
    answers: list[Any] = [None] * len(bodies)

    def deliver(index: int, body: bytes) -> None:
        client = app.test_client()
        barrier.wait()
        response = client.post(
            "/webhooks/stripe",
            data=body,
            headers={"Stripe-Signature": sign(body)},
            content_type="application/json",
        )
        answers[index] = (response.status_code, response.json)

    threads = [
        threading.Thread(target=deliver, args=(index, body)) for index, body in enumerate(bodies)
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
    assert not any(thread.is_alive() for thread in threads)
    return answers


def _inspect(app: Flask, check: Callable[[Any], None]) -> None:
    with app.app_context():
        session = get_db().session()
        try:
            check(session)
        finally:
            session.close()


def test_the_same_event_ten_times_concurrently_credits_once(committed_app: Flask) -> None:
    purchase = _purchase(committed_app)
    body = encode(invoice_event(purchase, "invoice.paid"))

    answers = _at_once(committed_app, [body] * 10)

    assert [status for status, _ in answers] == [200] * 10, answers
    firsts = [answer for _, answer in answers if not answer["event"]["duplicate"]]
    assert len(firsts) == 1

    def check(session: Any) -> None:
        state = state_of(session, purchase.id)
        assert state.purchase_status == PurchaseStatus.SETTLED
        assert state.entry_status == EntryStatus.SETTLED
        assert state.balance == Decimal("8.50000")  # 1 granted + 7.5 bought, once
        [row] = session.execute(select(WebhookEvent)).scalars().all()
        assert row.status == WebhookEventStatus.PROCESSED
        assert row.attempts == 1

    _inspect(committed_app, check)


def test_paid_and_payment_succeeded_racing_each_other_credit_once(committed_app: Flask) -> None:
    purchase = _purchase(committed_app)
    paid = encode(invoice_event(purchase, "invoice.paid"))
    succeeded = encode(invoice_event(purchase, "invoice.payment_succeeded"))

    answers = _at_once(committed_app, [paid, succeeded] * 5)

    assert [status for status, _ in answers] == [200] * 10, answers

    def check(session: Any) -> None:
        assert state_of(session, purchase.id).balance == Decimal("8.50000")
        assert session.execute(select(func.count()).select_from(WebhookEvent)).scalar_one() == 2

    _inspect(committed_app, check)


def test_paid_racing_voided_never_leaves_a_half_applied_purchase(committed_app: Flask) -> None:
    purchases = [_purchase(committed_app) for _ in range(5)]
    bodies = [
        encode(invoice_event(purchase, event_type))
        for purchase in purchases
        for event_type in ("invoice.paid", "invoice.voided")
    ]

    answers = _at_once(committed_app, bodies)

    assert [status for status, _ in answers] == [200] * 10, answers

    def check(session: Any) -> None:
        for purchase in purchases:
            # Whichever came first, a paid invoice ends settled and credited once.
            state = state_of(session, purchase.id)
            assert state.purchase_status == PurchaseStatus.SETTLED
            assert state.entry_status == EntryStatus.SETTLED
            assert state.balance == Decimal("8.50000")

    _inspect(committed_app, check)
