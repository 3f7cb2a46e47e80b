"""Arranging what reconciliation finds: purchases made through the API against the Stripe
stub, then left behind the way lost webhooks and crashes leave them."""

from __future__ import annotations

import json
import threading
from collections.abc import Callable, Iterable
from datetime import timedelta
from decimal import Decimal
from typing import Any
from urllib.parse import urlencode

from flask import Flask
from sqlalchemy import Connection, select, update
from sqlalchemy.orm import Session

from gateway import ledger
from gateway.actors import SYSTEM
from gateway.db import get_db, utcnow
from gateway.models import Customer, Purchase, PurchaseStatus, Wallet, WalletTransaction
from gateway.providers import get_provider
from gateway.providers.base import (
    META_PURCHASE_ID,
    META_TRANSACTION_ID,
    META_WALLET_ID,
    CustomerRequest,
    InvoiceSnapshot,
    PurchaseInvoiceRequest,
)
from gateway.providers.stripe.sandbox import StripeStub
from gateway.purchases import invoice_description
from gateway.reconcile import Finding, FindingAction, FindingKind, ReconcileReport, reconcile
from tests.support.purchases import Bought
from tests.support.stripe import SECRET_KEY
from tests.support.webhooks import make_purchase, post_signed


def invoice_at_stripe(app: Flask, session: Session, purchase_id: str) -> InvoiceSnapshot:
    """Make the purchase's invoice at Stripe (through the provider) without storing its
    id: what a crash right after the create call leaves behind."""
    purchase = session.get_one(Purchase, purchase_id)
    wallet = session.get_one(Wallet, purchase.wallet_id)
    customer = session.get_one(Customer, purchase.customer_id)
    with app.app_context():
        provider = get_provider()
        provider_customer = provider.ensure_customer(
            CustomerRequest(customer.id, customer.external_id, customer.name, customer.email)
        )
        return provider.create_purchase_invoice(
            PurchaseInvoiceRequest(
                purchase_id=purchase.id,
                wallet_id=wallet.id,
                transaction_id=purchase.transaction_id,
                provider_customer_id=provider_customer,
                currency=purchase.currency,
                amount_cents=purchase.amount_cents,
                credits=purchase.credit_amount,
                rate_amount=wallet.rate_amount,
                description=invoice_description(
                    purchase.credit_amount, wallet.rate_amount, purchase.currency
                ),
            )
        )


def many_open_purchases(session: Session, stub: StripeStub, count: int) -> list[Bought]:
    """`count` purchases of 1 credit (1.00 USD) in one wallet, each with its invoice
    finalized at Stripe and stored, as the API leaves them. Made faster than through
    the API: rows written directly, invoices made by calling the stub's handler."""
    seed = make_purchase(session, credits=Decimal("1"), rate=Decimal("1"), invoice_stored=False)
    wallet = session.get_one(Wallet, seed.wallet_id)
    now = utcnow()
    rows = [session.get_one(Purchase, seed.id)]
    for _ in range(count - 1):
        entry = ledger.open_purchase_entry(session, wallet, Decimal("1"), now, created_by=SYSTEM)
        purchase = Purchase(
            wallet_id=wallet.id,
            customer_id=wallet.customer_id,
            transaction_id=entry.id,
            status=PurchaseStatus.CREATING,
            currency="USD",
            credit_amount=Decimal("1"),
            amount_cents=100,
            created_at=now,
        )
        session.add(purchase)
        rows.append(purchase)
    session.flush()
    customer = _stub_call(stub, "/v1/customers", [])["id"]
    made = []
    for purchase in rows:
        metadata = [
            (f"metadata[{META_PURCHASE_ID}]", purchase.id),
            (f"metadata[{META_WALLET_ID}]", wallet.id),
            (f"metadata[{META_TRANSACTION_ID}]", purchase.transaction_id),
        ]
        invoice_id = _stub_call(
            stub, "/v1/invoices", [("customer", customer), ("currency", "usd"), *metadata]
        )["id"]
        _stub_call(
            stub,
            "/v1/invoiceitems",
            [("customer", customer), ("invoice", invoice_id), ("amount", "100")],
        )
        invoice = _stub_call(stub, f"/v1/invoices/{invoice_id}/finalize", [])
        purchase.provider_invoice_id = invoice_id
        purchase.invoice_status = invoice["status"]
        purchase.subtotal_cents = purchase.total_cents = invoice["total"]
        purchase.tax_cents = 0
        purchase.status = PurchaseStatus.OPEN
        made.append(
            Bought(purchase.id, wallet.id, purchase.transaction_id, invoice_id, Decimal("1"))
        )
    session.commit()
    return made


def _stub_call(stub: StripeStub, path: str, form: list[tuple[str, str]]) -> dict[str, Any]:
    status, _headers, body = stub.handle(
        "POST", path, "", {"Authorization": f"Bearer {SECRET_KEY}"}, urlencode(form).encode()
    )
    assert status == 200, body
    answer: dict[str, Any] = json.loads(body)
    return answer


def foreign_invoice(app: Flask, purchase_id: str, amount_cents: int) -> InvoiceSnapshot:
    """An invoice at Stripe carrying our metadata for a purchase this database does not
    have (another environment on the same account, a restored backup...)."""
    with app.app_context():
        provider = get_provider()
        customer = provider.ensure_customer(
            CustomerRequest("cus_elsewhere", "elsewhere", None, None)
        )
        return provider.create_purchase_invoice(
            PurchaseInvoiceRequest(
                purchase_id=purchase_id,
                wallet_id="wal_elsewhere",
                transaction_id="wtx_elsewhere",
                provider_customer_id=customer,
                currency="USD",
                amount_cents=amount_cents,
                credits=Decimal(amount_cents) / 100,
                rate_amount=Decimal("1"),
                description="credits bought elsewhere",
            )
        )


def backdate(session: Session, purchase_id: str, minutes: int) -> None:
    """The purchase (and its entry) as if made `minutes` ago."""
    then = utcnow() - timedelta(minutes=minutes)
    purchase = session.get_one(Purchase, purchase_id)
    session.execute(update(Purchase).where(Purchase.id == purchase_id).values(created_at=then))
    session.execute(
        update(WalletTransaction)
        .where(WalletTransaction.id == purchase.transaction_id)
        .values(created_at=then)
    )
    session.commit()


def claimable(session: Session, purchase_id: str, minutes: int = 60) -> None:
    """The purchase as one whose caller's Idempotency-Key is still live for `minutes`."""
    session.execute(
        update(Purchase)
        .where(Purchase.id == purchase_id)
        .values(claimable_until=utcnow() + timedelta(minutes=minutes))
    )
    session.commit()


def run(app: Flask, **options: Any) -> ReconcileReport:
    with app.app_context():
        return reconcile(get_db(), get_provider(), **options)


def findings(report: ReconcileReport, kind: FindingKind) -> list[Finding]:
    return [finding for finding in report.findings if finding.kind == kind]


def only(report: ReconcileReport, kind: FindingKind) -> Finding:
    [finding] = findings(report, kind)
    return finding


def actions(report: ReconcileReport) -> set[FindingAction]:
    return {finding.action for finding in report.findings}


def table_rows(connection: Connection) -> dict[str, list[tuple[Any, ...]]]:
    """Every row of every table, in a stable order: the database's whole state."""
    from gateway.db import Base

    state: dict[str, list[tuple[Any, ...]]] = {}
    for table in Base.metadata.sorted_tables:
        rows = connection.execute(select(table)).all()
        state[table.name] = sorted((tuple(row) for row in rows), key=repr)
    return state


def race_with_webhooks(
    app: Flask,
    stub: StripeStub,
    held_at: str,
    events: Callable[[int], Iterable[dict[str, Any]]],
    *,
    senders: int,
) -> tuple[ReconcileReport, list[int]]:
    """A reconcile run and `senders` webhook threads at once: the run waits at Stripe's
    `GET held_at` until every sender is ready, then all are let go together. Each
    sender posts `events(round)`, signed, round after round until the run has ended.
    Returns the run's report and every delivery's status; the run raised nothing and
    every thread finished."""
    gate = stub.hold("GET", held_at)
    reports: list[ReconcileReport] = []
    errors: list[BaseException] = []
    reconciler = run_in_thread(app, reports, errors)
    assert gate.arrived.wait(10), f"reconciliation never reached {held_at}"
    start = threading.Barrier(senders + 1)
    statuses: list[int] = []

    def send() -> None:
        start.wait()
        round_number = 0
        while reconciler.is_alive() or not statuses:
            for event in events(round_number):
                statuses.append(post_signed(app.test_client(), event).status_code)
            round_number += 1

    threads = [threading.Thread(target=send) for _ in range(senders)]
    for thread in threads:
        thread.start()
    start.wait()
    gate.release()  # the run and every sender now go at once
    for thread in [reconciler, *threads]:
        thread.join(timeout=120)
        assert not thread.is_alive()
    assert errors == []
    [report] = reports
    return report, statuses


def run_in_thread(
    app: Flask, reports: list[ReconcileReport], errors: list[BaseException]
) -> threading.Thread:
    """A reconcile run on its own thread, started: its report or error lands in the lists."""

    def target() -> None:
        try:
            reports.append(run(app))
        except BaseException as exc:  # surfaced by the test, not lost in the thread
            errors.append(exc)

    thread = threading.Thread(target=target)
    thread.start()
    return thread
