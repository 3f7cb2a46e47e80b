"""Reconcile's default window is bounded; unsettled purchases older than it are paged
from the database by id and each read on its own, instead of listing the whole account
back to the oldest of them (one unpaid `send_invoice` made every nightly run do that)."""

from __future__ import annotations

from datetime import timedelta

import pytest
from flask import Flask
from flask.testing import FlaskClient
from sqlalchemy.orm import Session

from gateway import reconcile
from gateway.db import utcnow
from gateway.models import PurchaseStatus
from gateway.providers.stripe.sandbox import StripeStub
from gateway.reconcile import context
from tests.support.purchases import buy_wallet
from tests.support.reconcile import backdate, only, run
from tests.support.webhooks import state_of

pytestmark = pytest.mark.usefixtures("stripe_http")

DAY_MINUTES = 24 * 60


def _made_days_ago(
    stub: StripeStub, session: Session, purchase_id: str, invoice_id: str, days: int
) -> None:
    stub.invoices[invoice_id]["created"] -= days * 86400
    backdate(session, purchase_id, minutes=days * DAY_MINUTES)


def test_an_old_open_purchase_does_not_stretch_the_default_window(
    app: Flask, client: FlaskClient, db_session: Session, stub: StripeStub
) -> None:
    old = buy_wallet(client, db_session, paid="5")
    _made_days_ago(stub, db_session, old.purchase_id, old.invoice_id or "", 200)
    recent = buy_wallet(client, db_session, paid="5")
    stub.mark_paid(old.invoice_id or "")  # paid at last, its webhook lost
    stub.mark_paid(recent.invoice_id or "")

    report = run(app)

    assert report.window_start >= report.started_at - context.DEFAULT_LOOKBACK
    [listing] = stub.requests_to("GET", "/v1/invoices")
    listed_from = int(listing.params["created"]["gte"])
    assert listed_from >= int((utcnow() - timedelta(days=31, hours=2)).timestamp())
    # Still checked, on its own: read by its invoice id, and settled.
    assert stub.requests_to("GET", f"/v1/invoices/{old.invoice_id}")
    settled = {f.purchase_id: f.outcome for f in report.findings}
    assert settled == {old.purchase_id: "settled", recent.purchase_id: "settled"}
    assert state_of(db_session, old.purchase_id).purchase_status == PurchaseStatus.SETTLED
    assert report.to_dict()["window"]["since"] is not None


def test_old_open_purchases_are_paged_by_id(
    app: Flask,
    client: FlaskClient,
    db_session: Session,
    stub: StripeStub,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(context, "DB_BATCH", 2)
    old = [buy_wallet(client, db_session, paid="5") for _ in range(5)]
    for bought in old:
        _made_days_ago(stub, db_session, bought.purchase_id, bought.invoice_id or "", 90)
        stub.mark_paid(bought.invoice_id or "")

    report = run(app)

    assert report.invoices_scanned == 0  # none listed: all older than the window
    assert {f.purchase_id for f in report.findings} == {b.purchase_id for b in old}
    assert all(f.outcome == "settled" for f in report.findings)
    retrieves = [
        r for r in stub.requests if r.method == "GET" and r.path.startswith("/v1/invoices/in_")
    ]
    assert len(retrieves) == 5


def test_since_still_reaches_as_far_back_as_asked(
    app: Flask, client: FlaskClient, db_session: Session, stub: StripeStub
) -> None:
    old = buy_wallet(client, db_session, paid="5")
    _made_days_ago(stub, db_session, old.purchase_id, old.invoice_id or "", 200)
    stub.mark_paid(old.invoice_id or "")
    since = utcnow() - timedelta(days=365)

    report = run(app, since=since)

    assert report.window_start == since
    assert only(report, reconcile.FindingKind.INVOICE_PAID_NOT_SETTLED).outcome == "settled"
