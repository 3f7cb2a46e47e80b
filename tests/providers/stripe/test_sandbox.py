"""The Stripe sandbox of `make run`: invoice pages whose buttons send signed webhooks,
and never started when a Stripe key is set."""

from __future__ import annotations

import importlib.util
import threading
from collections.abc import Iterator
from decimal import Decimal
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest
import requests
from flask.testing import FlaskClient
from sqlalchemy import select
from sqlalchemy.orm import Session

from gateway.models import Wallet
from gateway.providers.stripe.sandbox_pages import StripeSandbox
from gateway.settings import PROJECT_ROOT
from tests.support.api import create_wallet, subscribed_customer
from tests.support.stripe import SECRET_KEY
from tests.support.webhooks import PRIMARY_SECRET


class Receiver:
    """A stand-in for the service's webhook endpoint: keeps what it was sent."""

    def __init__(self) -> None:
        self.received: list[tuple[bytes, str]] = []
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers["Content-Length"]))
                receiver.received.append((body, self.headers["Stripe-Signature"]))
                self.send_response(200)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, format: str, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        threading.Thread(target=self.server.serve_forever, daemon=True).start()
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/webhooks/stripe"


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    receiver = Receiver()
    yield receiver
    receiver.server.shutdown()


@pytest.fixture
def sandbox(receiver: Receiver) -> Iterator[StripeSandbox]:
    with StripeSandbox(
        api_key=SECRET_KEY, webhook_url=receiver.url, webhook_secret=PRIMARY_SECRET,
        return_url="http://127.0.0.1:5000/console",
    ) as running:  # fmt: skip
        yield running


@pytest.fixture
def settings_overrides(sandbox: StripeSandbox) -> dict[str, Any]:
    return {"STRIPE_API_BASE": sandbox.url, "STRIPE_SANDBOX": "1"}


def bought(client: FlaskClient, sandbox: StripeSandbox) -> tuple[str, str]:
    """A wallet with 10 credits bought at 2.00 USD; (wallet id, its invoice page)."""
    body = create_wallet(client, subscribed_customer(client), rate_amount="2.00",
                         paid_credits="10")  # fmt: skip
    link = body["wallet_transactions"][0]["invoice"]["hosted_invoice_url"]
    assert link.startswith(f"{sandbox.url}/sandbox/invoices/in_")
    return body["wallet"]["id"], link


def deliver(client: FlaskClient, receiver: Receiver) -> list[int]:
    """Hand what the sandbox sent to the service, as its endpoint would have got it."""
    statuses = []
    for body, signature in receiver.received:
        response = client.post(
            "/webhooks/stripe", data=body,
            headers={"Stripe-Signature": signature, "Content-Type": "application/json"},
        )  # fmt: skip
        statuses.append(response.status_code)
    return statuses


def test_pay_sends_a_signed_invoice_paid_that_credits_the_wallet(
    client: FlaskClient, db_session: Session, sandbox: StripeSandbox, receiver: Receiver
) -> None:
    wallet_id, link = bought(client, sandbox)
    page = requests.get(link, timeout=10)
    assert page.status_code == 200
    assert "Pay</button>" in page.text and "Fail payment</button>" in page.text
    assert "20.00 USD" in page.text and "Stripe sandbox" in page.text

    paid = requests.post(f"{link}/pay", timeout=10)

    assert "Paid." in paid.text and "Pay</button>" not in paid.text
    assert sandbox.deliveries == [("invoice.paid", 200)]
    assert deliver(client, receiver) == [200]
    db_session.expire_all()
    wallet = db_session.execute(select(Wallet).where(Wallet.id == wallet_id)).scalar_one()
    assert wallet.credits_balance == Decimal("10")
    assert "no longer open" in requests.post(f"{link}/pay", timeout=10).text


def test_fail_payment_fails_the_purchase(
    client: FlaskClient, sandbox: StripeSandbox, receiver: Receiver
) -> None:
    wallet_id, link = bought(client, sandbox)

    failed = requests.post(f"{link}/fail", timeout=10)

    assert "Payment failed." in failed.text
    assert [kind for kind, _status in sandbox.deliveries] == [
        "invoice.payment_failed", "invoice.marked_uncollectible"
    ]  # fmt: skip
    assert deliver(client, receiver) == [200, 200]
    listed = client.get(
        f"/api/v1/wallets/{wallet_id}/wallet_transactions",
        headers={"Authorization": "Bearer test-key-1"},
    ).json["wallet_transactions"]
    assert [(e["status"], e["invoice"]["status"]) for e in listed] == [("failed", "uncollectible")]


def test_a_delivery_the_service_refuses_is_told(
    sandbox: StripeSandbox, client: FlaskClient
) -> None:
    sandbox.webhook_url = "http://127.0.0.1:9/nothing-listens-here"
    _wallet_id, link = bought(client, sandbox)
    assert "could not be delivered" in requests.post(f"{link}/pay", timeout=10).text


def test_unknown_invoices_and_other_methods(sandbox: StripeSandbox) -> None:
    assert requests.get(f"{sandbox.url}/sandbox/invoices/in_nope", timeout=10).status_code == 404
    assert requests.delete(f"{sandbox.url}/sandbox/invoices/in_nope", timeout=10).status_code == 404


def _dev_script(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> ModuleType:
    spec = importlib.util.spec_from_file_location("dev_script", PROJECT_ROOT / "scripts" / "dev.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    monkeypatch.setattr(module, "INSTANCE", tmp_path)
    return module


def test_make_run_never_starts_the_sandbox_when_a_stripe_key_is_set(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    dev = _dev_script(monkeypatch, tmp_path)
    settings, command = dev.stripe_setup({"STRIPE_SECRET_KEY": "sk_test_real"}, "127.0.0.1", "5000")
    assert (settings, command) == ({}, None)


def test_make_run_starts_the_sandbox_without_a_stripe_key(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    dev = _dev_script(monkeypatch, tmp_path)
    settings, command = dev.stripe_setup({"GATEWAY_SANDBOX_PORT": "12999"}, "127.0.0.1", "5000")
    assert settings["STRIPE_SANDBOX"] == "1"
    assert settings["STRIPE_SECRET_KEY"].startswith("sk_test_sandbox_")
    assert settings["STRIPE_API_BASE"] == "http://127.0.0.1:12999"
    assert command is not None and "gateway.providers.stripe.sandbox_pages" in command
    assert "http://127.0.0.1:5000/webhooks/stripe" in command
    again, _ = dev.stripe_setup({}, "127.0.0.1", "5000")  # the same secrets next time
    assert again["STRIPE_WEBHOOK_SECRETS"] == settings["STRIPE_WEBHOOK_SECRETS"]
