"""Reconciliation racing webhooks (and other runs) on PostgreSQL, with real threads:
whoever applies a paid invoice first, the credits arrive exactly once."""

from __future__ import annotations

from collections.abc import Iterator
from decimal import Decimal
from typing import Any

import pytest
from flask import Flask
from sqlalchemy import func, select
from sqlalchemy.orm import Session

from gateway import ledger
from gateway.models import EntryStatus, Purchase, PurchaseStatus, Wallet, WalletTransaction
from gateway.providers.stripe.sandbox import StripeStub
from gateway.reconcile import FindingKind, ReconcileReport
from tests.support.purchases import Bought, buy_more, buy_wallet
from tests.support.reconcile import race_with_webhooks, run_in_thread
from tests.support.threads import app_session

pytestmark = [pytest.mark.postgres, pytest.mark.usefixtures("stripe_http")]

WALLETS = 3
PURCHASES_PER_WALLET = 4


@pytest.fixture
def session(committed_app: Flask) -> Iterator[Session]:
    with app_session(committed_app) as db_session:
        yield db_session


def _paid_purchases(app: Flask, session: Session, stub: StripeStub) -> list[Bought]:
    """Purchases in several wallets, all paid at Stripe; not one webhook delivered yet."""
    client = app.test_client()
    bought: list[Bought] = []
    for _ in range(WALLETS):
        first = buy_wallet(client, session, paid="2", granted_credits="1")
        bought.append(first)
        bought += [
            buy_more(client, session, first.wallet_id, paid="3")
            for _ in range(PURCHASES_PER_WALLET - 1)
        ]
    for purchase in bought:
        stub.mark_paid(purchase.invoice_id or "")
    return bought


def _assert_credited_once(session: Session, bought: list[Bought]) -> None:
    session.expire_all()
    purchases = session.execute(select(Purchase)).scalars().all()
    assert {p.status for p in purchases} == {PurchaseStatus.SETTLED}
    entries = session.execute(
        select(WalletTransaction).where(
            WalletTransaction.id.in_([purchase.transaction_id for purchase in bought])
        )
    ).scalars()
    assert {entry.status for entry in entries} == {EntryStatus.SETTLED}
    expected = Decimal(1 + 2 + 3 * (PURCHASES_PER_WALLET - 1))  # granted + first + top-ups
    for wallet in session.execute(select(Wallet)).scalars():
        assert wallet.credits_balance == expected, wallet.id
        assert ledger.ledger_balance(session, wallet.id) == expected
    settled_entries = session.execute(
        select(func.count())
        .select_from(WalletTransaction)
        .where(WalletTransaction.status == EntryStatus.SETTLED)
    ).scalar_one()
    assert settled_entries == len(bought) + WALLETS  # each purchase once, plus the grants


def test_lost_webhooks_repaired_while_duplicate_webhooks_race_credit_once(
    committed_app: Flask, session: Session, stub: StripeStub
) -> None:
    bought = _paid_purchases(committed_app, session, stub)

    # Webhook senders go through the purchases oldest first while reconciliation (which
    # reads Stripe newest first) settles them: they meet on the same purchases at the
    # same moment. Each delivery is a new event for the invoice (a duplicate webhook),
    # and the senders keep going until reconciliation is done.
    def events(round_number: int) -> list[dict[str, Any]]:
        event_type = "invoice.paid" if round_number % 2 else "invoice.payment_succeeded"
        return [stub.event(purchase.invoice_id or "", event_type) for purchase in bought]

    report, statuses = race_with_webhooks(committed_app, stub, "/v1/invoices", events, senders=4)

    assert set(statuses) == {200}
    assert report.error is None
    repaired = [f for f in report.findings if f.kind == FindingKind.INVOICE_PAID_NOT_SETTLED]
    assert {f.outcome for f in repaired} <= {"settled"}
    _assert_credited_once(session, bought)


def test_two_reconciliation_runs_at_once_credit_once(
    committed_app: Flask, session: Session, stub: StripeStub
) -> None:
    bought = _paid_purchases(committed_app, session, stub)
    gate = stub.hold("GET", "/v1/invoices")
    reports: list[ReconcileReport] = []
    errors: list[BaseException] = []
    runners = [run_in_thread(committed_app, reports, errors) for _ in range(3)]
    assert gate.arrived.wait(10)
    gate.release()
    for thread in runners:
        thread.join(timeout=120)
        assert not thread.is_alive()

    assert errors == []
    settled = [
        f.purchase_id
        for report in reports
        for f in report.findings
        if f.kind == FindingKind.INVOICE_PAID_NOT_SETTLED and f.outcome == "settled"
    ]
    assert sorted(settled) == sorted(purchase.purchase_id for purchase in bought)  # once each
    _assert_credited_once(session, bought)
