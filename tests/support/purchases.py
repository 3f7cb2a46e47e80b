"""Purchases made the way callers make them: through the API, against the Stripe stub."""

from __future__ import annotations

from dataclasses import dataclass
from decimal import Decimal
from typing import Any

from flask.testing import FlaskClient
from sqlalchemy import select
from sqlalchemy.orm import Session

from gateway.models import Purchase, PurchaseStatus, Wallet
from gateway.providers.stripe.sandbox import StripeStub
from tests.support.api import create_wallet, delete, subscribed_customer, top_up
from tests.support.webhooks import post_signed, state_of


@dataclass(frozen=True)
class Bought:
    purchase_id: str
    wallet_id: str
    transaction_id: str
    invoice_id: str | None
    credits: Decimal


def _purchase_of(session: Session, transaction_id: str) -> Purchase:
    purchase: Purchase = session.execute(
        select(Purchase)
        .where(Purchase.transaction_id == transaction_id)
        .execution_options(populate_existing=True)
    ).scalar_one()
    return purchase


def _bought(session: Session, transaction_id: str) -> Bought:
    purchase = _purchase_of(session, transaction_id)
    return Bought(
        purchase.id,
        purchase.wallet_id,
        transaction_id,
        purchase.provider_invoice_id,
        purchase.credit_amount,
    )


def buy_wallet(client: FlaskClient, session: Session, paid: str = "10", **fields: Any) -> Bought:
    """A new wallet with paid credits: a purchase `open`, its invoice open at Stripe."""
    body = create_wallet(client, subscribed_customer(client), paid_credits=paid, **fields)
    [transaction] = [
        t for t in body["wallet_transactions"] if t["transaction_status"] == "purchased"
    ]
    return _bought(session, transaction["id"])


def buy_more(
    client: FlaskClient, session: Session, wallet_id: str, paid: str = "1", key: str | None = None
) -> Bought:
    """A paid top-up of an existing wallet (the call that failed, if Stripe did), sent
    with Idempotency-Key `key` if given."""
    response = top_up(client, wallet_id, key, paid_credits=paid)
    assert response.status_code in (201, 503), response.json
    if response.status_code == 503:
        transaction_id = response.json["error_details"]["wallet_transaction_id"]
    else:
        [transaction] = response.json["wallet_transactions"]
        transaction_id = transaction["id"]
    return _bought(session, transaction_id)


def settled_purchase(
    client: FlaskClient, db_session: Session, stub: StripeStub, paid: str, **fields: Any
) -> Bought:
    """A purchase paid at Stripe and settled by its webhook (`fields`: the wallet's)."""
    bought = buy_wallet(client, db_session, paid=paid, **fields)
    stub.mark_paid(bought.invoice_id or "")
    post_signed(client, stub.event(bought.invoice_id or "", "invoice.paid"))
    assert state_of(db_session, bought.purchase_id).purchase_status == PurchaseStatus.SETTLED
    return bought


def refund_required_purchase(
    client: FlaskClient, db_session: Session, stub: StripeStub, paid: str = "10"
) -> Bought:
    """A purchase paid for a wallet that had ended (the customer paid before its
    invoice was voided): never credited, its payment to refund."""
    bought = buy_wallet(client, db_session, paid=paid)
    assert delete(client, f"/wallets/{bought.wallet_id}").status_code == 200
    stub.invoices[bought.invoice_id or ""]["status"] = "open"  # the customer paid first
    stub.mark_paid(bought.invoice_id or "")
    post_signed(client, stub.event(bought.invoice_id or "", "invoice.paid"))
    status = state_of(db_session, bought.purchase_id).purchase_status
    assert status == PurchaseStatus.REFUND_REQUIRED
    return bought


def customer_of(session: Session, bought: Bought) -> str:
    """The external id of the customer whose wallet `bought` paid into."""
    wallet = session.get_one(Wallet, bought.wallet_id)
    return wallet.customer.external_id
