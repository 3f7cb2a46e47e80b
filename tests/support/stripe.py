"""Helpers for tests that talk to Stripe through `responses` and the stub (the fixtures
`stub`, `stripe_http`, `stripe_mock` and `stripe_server` are in tests/conftest.py)."""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from dataclasses import dataclass
from decimal import Decimal
from typing import Any
from urllib.parse import parse_qsl, urlsplit

import responses
import stripe
from sqlalchemy import select
from sqlalchemy.orm import Session

from gateway.models import Purchase, WalletTransaction
from gateway.providers.stripe.sandbox import StripeStub
from tests.support.webhooks import PurchaseRow, invoice_object

STRIPE_VERSION: str = stripe.api_version
SECRET_KEY = "sk_test_gateway"  # tests/support/config.py TEST_SETTINGS
TAX_RATES = {"txr_vat20": Decimal("20"), "txr_state5": Decimal("5")}


@dataclass(frozen=True)
class SentRequest:
    """One request the service sent to Stripe, as it went over the wire."""

    method: str
    path: str
    form: list[tuple[str, str]]  # body pairs (POST) or query pairs (GET), in order
    headers: dict[str, str]

    @property
    def params(self) -> dict[str, str]:
        params = dict(self.form)
        assert len(params) == len(self.form), f"a parameter was sent twice: {self.form}"
        return params


def sent(rsps: responses.RequestsMock) -> list[SentRequest]:
    """Every request made to Stripe so far, oldest first."""
    result = []
    for call in rsps.calls:
        request = call.request
        split = urlsplit(request.url)
        body = request.body or ""
        if isinstance(body, bytes):
            body = body.decode()
        raw = body if request.method == "POST" else split.query
        result.append(
            SentRequest(
                method=request.method,
                path=split.path,
                form=parse_qsl(raw, keep_blank_values=True),
                headers=dict(request.headers),
            )
        )
    return result


def routes(rsps: responses.RequestsMock) -> list[tuple[str, str]]:
    return [(request.method, request.path) for request in sent(rsps)]


def only_purchase(session: Session) -> Purchase:
    purchase: Purchase = session.execute(
        select(Purchase).execution_options(populate_existing=True)
    ).scalar_one()
    return purchase


def entry(session: Session, transaction_id: str) -> WalletTransaction:
    found = session.get(WalletTransaction, transaction_id, populate_existing=True)
    assert found is not None
    return found


def invoice_block(transaction: dict[str, Any]) -> dict[str, Any]:
    block = transaction["invoice"]
    assert isinstance(block, dict), transaction
    return block


FINALIZE = r"https://api\.stripe\.com/v1/invoices/[^/]+/finalize"


def during_finalize(
    rsps: responses.RequestsMock, stub: StripeStub, action: Callable[[dict[str, Any]], None]
) -> None:
    """Stripe finalizes the invoice, then `action(invoice)` runs, then Stripe answers:
    whatever `action` does happens while the purchase waits on Stripe (phase 2)."""

    def finalize(request: Any) -> tuple[int, dict[str, str], bytes]:
        split = urlsplit(request.url)
        body = request.body or b""
        status, headers, answer = stub.handle(
            request.method,
            split.path,
            split.query,
            dict(request.headers),
            body.encode() if isinstance(body, str) else body,
        )
        action(json.loads(answer))
        return status, headers, answer

    # Registered before the stub's catch-all, so it answers the finalize call.
    rsps.add_callback("POST", re.compile(FINALIZE), callback=finalize)
    stub.register(rsps)


STRIPE_API = "https://api.stripe.com/v1"


def answer_invoice(mock: responses.RequestsMock, purchase: PurchaseRow, status: str) -> None:
    """Stripe's side of a purchase's invoice in `status`, registered on `stripe_mock`:
    reading it, and voiding it if it is open (refused, as Stripe does, if it is not)."""
    invoice_url = f"{STRIPE_API}/invoices/{purchase.invoice_id}"
    mock.get(invoice_url, json=invoice_object(purchase, status))
    if status == "open":
        mock.post(f"{invoice_url}/void", json=invoice_object(purchase, "void"))
    else:
        refusal = {
            "type": "invalid_request_error",
            "message": f"You can only void open invoices; this one is {status}.",
        }
        mock.post(f"{invoice_url}/void", status=400, json={"error": refusal})


def void_calls(mock: responses.RequestsMock) -> list[Any]:
    """The calls that asked Stripe to void an invoice."""
    return [call for call in mock.calls if call.request.url.endswith("/void")]
