"""Concurrent deliveries from real threads on PostgreSQL still credit exactly once."""

from __future__ import annotations

from decimal import Decimal
from typing import Any

import pytest
from flask import Flask
from sqlalchemy import func, select

from gateway.models import EntryStatus, PurchaseStatus, WebhookEvent, WebhookEventStatus
from tests.support.threads import app_session
from tests.support.webhooks import (
    PurchaseRow,
    deliver_at_once,
    encode,
    invoice_event,
    make_purchase,
    state_of,
)

pytestmark = pytest.mark.postgres


def _purchase(app: Flask) -> PurchaseRow:
    with app_session(app) as session:
        return make_purchase(session, credits=Decimal("7.5"), granted=Decimal("1"))


def test_the_same_event_ten_times_concurrently_credits_once(committed_app: Flask) -> None:
    purchase = _purchase(committed_app)
    body = encode(invoice_event(purchase, "invoice.paid"))

    answers = deliver_at_once(committed_app, [body] * 10)

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

    with app_session(committed_app) as session:
        check(session)


def test_paid_and_payment_succeeded_racing_each_other_credit_once(committed_app: Flask) -> None:
    purchase = _purchase(committed_app)
    paid = encode(invoice_event(purchase, "invoice.paid"))
    succeeded = encode(invoice_event(purchase, "invoice.payment_succeeded"))

    answers = deliver_at_once(committed_app, [paid, succeeded] * 5)

    assert [status for status, _ in answers] == [200] * 10, answers

    def check(session: Any) -> None:
        assert state_of(session, purchase.id).balance == Decimal("8.50000")
        assert session.execute(select(func.count()).select_from(WebhookEvent)).scalar_one() == 2

    with app_session(committed_app) as session:
        check(session)


def test_paid_racing_voided_never_leaves_a_half_applied_purchase(committed_app: Flask) -> None:
    purchases = [_purchase(committed_app) for _ in range(5)]
    bodies = [
        encode(invoice_event(purchase, event_type))
        for purchase in purchases
        for event_type in ("invoice.paid", "invoice.voided")
    ]

    answers = deliver_at_once(committed_app, bodies)

    assert [status for status, _ in answers] == [200] * 10, answers

    def check(session: Any) -> None:
        for purchase in purchases:
            # Whichever came first, a paid invoice ends settled and credited once.
            state = state_of(session, purchase.id)
            assert state.purchase_status == PurchaseStatus.SETTLED
            assert state.entry_status == EntryStatus.SETTLED
            assert state.balance == Decimal("8.50000")

    with app_session(committed_app) as session:
        check(session)
