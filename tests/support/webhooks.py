"""Signed Stripe deliveries and purchase rows for the webhook tests.

Signatures are computed here the way Stripe computes them (HMAC-SHA256 of
"{timestamp}.{raw body}" with the endpoint secret, header `t=…,v1=…`), not with
the library the service verifies them with.
"""

from __future__ import annotations

import hashlib
import hmac
import itertools
import json
import time
from dataclasses import dataclass
from datetime import datetime
from decimal import Decimal
from typing import Any

from flask import Flask
from flask.testing import FlaskClient
from sqlalchemy import func, select
from sqlalchemy.orm import Session
from werkzeug.test import TestResponse

from gateway import ledger, money
from gateway.actors import SYSTEM
from gateway.db import utcnow
from gateway.models import (
    Purchase,
    PurchaseStatus,
    Wallet,
    WalletTransaction,
    WebhookEvent,
)
from gateway.providers.base import META_PURCHASE_ID, META_TRANSACTION_ID, META_WALLET_ID
from gateway.providers.stripe.sandbox import StripeStub
from tests.support.ledger import wallet_row
from tests.support.threads import run_together

PRIMARY_SECRET = "whsec_test_primary"
SECONDARY_SECRET = "whsec_test_secondary"
WEBHOOK_PATH = "/webhooks/stripe"

_ids = itertools.count(1)


def _next(prefix: str) -> str:
    return f"{prefix}_{int(time.time() * 1000):x}{next(_ids):06d}"


def sign(payload: bytes, secret: str = PRIMARY_SECRET, timestamp: int | None = None) -> str:
    """A `Stripe-Signature` header for `payload`, as Stripe builds it."""
    signed_at = int(time.time()) if timestamp is None else timestamp
    digest = hmac.new(
        secret.encode(), f"{signed_at}.".encode() + payload, hashlib.sha256
    ).hexdigest()
    return f"t={signed_at},v1={digest}"


def encode(event: dict[str, Any]) -> bytes:
    return json.dumps(event, separators=(",", ":")).encode()


def post_signed(
    client: FlaskClient,
    event: dict[str, Any] | bytes,
    *,
    secret: str = PRIMARY_SECRET,
    timestamp: int | None = None,
) -> TestResponse:
    """Deliver `event` to the webhook endpoint the way Stripe does."""
    body = event if isinstance(event, bytes) else encode(event)
    return client.post(
        WEBHOOK_PATH,
        data=body,
        headers={"Stripe-Signature": sign(body, secret, timestamp)},
        content_type="application/json; charset=utf-8",
    )


def deliver_at_once(app: Flask, bodies: list[bytes]) -> list[tuple[int, Any]]:
    """POST each body, signed, from its own thread, all released together: (status, JSON)
    answers in the bodies' order."""

    def deliver(index: int) -> tuple[int, Any]:
        response = post_signed(app.test_client(), bodies[index])
        return response.status_code, response.json

    return run_together(len(bodies), deliver)


def deliver_object(
    client: FlaskClient, stub: StripeStub, obj: dict[str, Any], event_type: str
) -> str:
    """Deliver the stub's `obj` in an event of `event_type`; the event's stored status."""
    event = stub.object_event(obj, event_type)
    response = post_signed(client, event)
    assert response.status_code == 200, response.get_data(as_text=True)
    return str(response.json["event"]["status"])  # type: ignore[index]


@dataclass(frozen=True)
class PurchaseRow:
    id: str
    wallet_id: str
    transaction_id: str
    invoice_id: str
    currency: str
    credits: Decimal
    amount_cents: int
    tax_cents: int

    @property
    def total_cents(self) -> int:
        return self.amount_cents + self.tax_cents


def make_purchase(
    session: Session,
    *,
    credits: Decimal = Decimal("10"),
    rate: Decimal = Decimal("5.00"),
    currency: str = "USD",
    tax_cents: int = 0,
    invoice_stored: bool = True,
    status: PurchaseStatus | None = None,
    expiration_at: datetime | None = None,
    granted: Decimal | None = None,
) -> PurchaseRow:
    """A wallet with one purchase awaiting payment, as the purchase flow leaves it.

    `invoice_stored=False` is the moment before the create call returned: the row and
    its pending entry are committed, the invoice id is not stored yet.
    """
    now = utcnow()
    wallet = wallet_row(
        session, granted or Decimal(0), rate, currency, now=now, expiration_at=expiration_at
    )
    entry = ledger.open_purchase_entry(session, wallet, credits, now, created_by=SYSTEM)
    amount = money.purchase_amount_minor(credits, rate, currency)
    invoice_id = _next("in")
    purchase = Purchase(
        wallet_id=wallet.id,
        customer_id=wallet.customer_id,
        transaction_id=entry.id,
        status=status or (PurchaseStatus.OPEN if invoice_stored else PurchaseStatus.CREATING),
        currency=currency,
        credit_amount=credits,
        amount_cents=amount,
        provider="stripe",
        provider_invoice_id=invoice_id if invoice_stored else None,
        invoice_status="open" if invoice_stored else None,
        subtotal_cents=amount if invoice_stored else None,
        tax_cents=tax_cents if invoice_stored else None,
        total_cents=amount + tax_cents if invoice_stored else None,
        provider_void_pending=False,
        created_at=now,
    )
    session.add(purchase)
    session.commit()
    return PurchaseRow(
        id=purchase.id,
        wallet_id=wallet.id,
        transaction_id=entry.id,
        invoice_id=invoice_id,
        currency=currency,
        credits=credits,
        amount_cents=amount,
        tax_cents=tax_cents,
    )


def invoice_object(
    purchase: PurchaseRow,
    status: str = "paid",
    *,
    amount_paid: int | None = None,
    currency: str | None = None,
    discounts: list[Any] | None = None,
    metadata: dict[str, str] | None = None,
    invoice_id: str | None = None,
    attempt_count: int = 1,
    credited_after_payment: int = 0,
) -> dict[str, Any]:
    """A Stripe invoice object (API version of stripe-python 16) for `purchase`."""
    total = purchase.total_cents
    paid = amount_paid if amount_paid is not None else (total if status == "paid" else 0)
    return {
        "id": invoice_id or purchase.invoice_id,
        "object": "invoice",
        "status": status,
        "currency": (currency or purchase.currency).lower(),
        "subtotal": purchase.amount_cents,
        "total": total,
        "total_excluding_tax": purchase.amount_cents,
        "total_taxes": [{"amount": purchase.tax_cents, "tax_behavior": "exclusive"}]
        if purchase.tax_cents
        else [],
        "amount_due": total,
        "amount_paid": paid,
        "amount_remaining": total - paid,
        "post_payment_credit_notes_amount": credited_after_payment,
        "attempt_count": attempt_count,
        "discounts": discounts or [],
        "total_discount_amounts": [],
        "hosted_invoice_url": f"https://invoice.stripe.com/i/{purchase.invoice_id}",
        "livemode": False,
        "created": 1_790_000_000,
        "next_payment_attempt": None,
        "metadata": metadata
        if metadata is not None
        else {
            META_PURCHASE_ID: purchase.id,
            META_WALLET_ID: purchase.wallet_id,
            META_TRANSACTION_ID: purchase.transaction_id,
        },
    }


def stripe_event(
    event_type: str,
    data_object: dict[str, Any],
    *,
    event_id: str | None = None,
    livemode: bool = False,
    created: int = 1_790_000_100,
) -> dict[str, Any]:
    return {
        "id": event_id or _next("evt"),
        "object": "event",
        "api_version": "2026-10-28.endive",
        "created": created,
        "type": event_type,
        "livemode": livemode,
        "pending_webhooks": 1,
        "request": {"id": None, "idempotency_key": None},
        "data": {"object": data_object},
    }


INVOICE_STATUS_OF = {
    "invoice.paid": "paid",
    "invoice.payment_succeeded": "paid",
    "invoice.payment_failed": "open",
    "invoice.voided": "void",
    "invoice.marked_uncollectible": "uncollectible",
    "invoice.finalized": "open",
}


def invoice_event(purchase: PurchaseRow, event_type: str, **invoice: Any) -> dict[str, Any]:
    """An invoice event for `purchase` with the invoice in the state that event implies."""
    return stripe_event(
        event_type, invoice_object(purchase, INVOICE_STATUS_OF[event_type], **invoice)
    )


@dataclass(frozen=True)
class PurchaseState:
    purchase_status: str
    invoice_id: str | None
    invoice_status: str | None
    entry_status: str
    balance: Decimal
    attention_reason: str | None
    last_payment_error: str | None
    void_pending: bool


def state_of(session: Session, purchase_id: str) -> PurchaseState:
    """What the database says now (bypassing anything cached in `session`)."""
    session.expire_all()
    purchase = session.get_one(Purchase, purchase_id)
    entry = session.get_one(WalletTransaction, purchase.transaction_id)
    wallet = session.get_one(Wallet, purchase.wallet_id)
    assert wallet.credits_balance == ledger.ledger_balance(session, wallet.id)
    return PurchaseState(
        purchase_status=purchase.status,
        invoice_id=purchase.provider_invoice_id,
        invoice_status=purchase.invoice_status,
        entry_status=entry.status,
        balance=wallet.credits_balance,
        attention_reason=purchase.attention_reason,
        last_payment_error=purchase.last_payment_error,
        void_pending=purchase.provider_void_pending,
    )


def stored_events(session: Session) -> int:
    session.expire_all()
    return session.execute(select(func.count()).select_from(WebhookEvent)).scalar_one()


def stored_event(session: Session, event_id: str) -> WebhookEvent | None:
    session.expire_all()
    return session.get(WebhookEvent, event_id)
