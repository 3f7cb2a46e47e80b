"""The service under gunicorn with its own configuration (config/gunicorn.conf.py):
purchases waiting on a slow Stripe do not stall the other routes.

With the old sync workers (one request per worker) five purchases waiting on Stripe
took every worker, and credit applications and Stripe's webhook deliveries queued
behind them until Stripe answered. Threaded workers serve them meanwhile. This runs
one worker on purpose: the most a single process's threads must cover.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import requests
from flask import Flask

from gateway.providers.stripe.sandbox import StripeStub
from gateway.settings import PROJECT_ROOT
from tests.support.api import application_body, unique
from tests.support.config import AUTH, TEST_SETTINGS, free_port, postgres_url
from tests.support.webhooks import sign

WAITING_PURCHASES = 5
TIMED_REQUESTS = 10
# A request that is not queued behind the purchases answers in milliseconds; one
# that is queued waits for as long as Stripe is held (HOLD_SECONDS).
FAST_ENOUGH = 1.0
HOLD_SECONDS = 8.0


@pytest.fixture
def service(committed_app: Flask, stripe_server: StripeStub) -> Iterator[str]:
    """gunicorn -c config/gunicorn.conf.py wsgi:app, one worker, the config's defaults
    otherwise (worker class, threads), on the test database."""
    port = free_port()
    # A clean environment: nothing another test left in os.environ reaches the service.
    environment = {
        key: os.environ[key] for key in ("PATH", "HOME", "LANG", "TZ") if key in os.environ
    }
    environment.update(
        {
            **{name: str(value) for name, value in TEST_SETTINGS.items()},
            "DATABASE_URL": postgres_url(),
            "STRIPE_API_BASE": stripe_server.url,
            "GATEWAY_BIND": f"127.0.0.1:{port}",
            "GATEWAY_WORKERS": "1",
            "GATEWAY_ACCESS_LOG": "",
            "PROMETHEUS_MULTIPROC_DIR": tempfile.mkdtemp(prefix="gateway-metrics-"),
        }
    )
    gunicorn = Path(sys.executable).parent / "gunicorn"
    with tempfile.TemporaryFile() as log:
        process = subprocess.Popen(  # noqa: S603 - our own gunicorn and config
            [str(gunicorn), "-c", str(PROJECT_ROOT / "config" / "gunicorn.conf.py"), "wsgi:app"],
            cwd=PROJECT_ROOT,
            env=environment,
            stdout=subprocess.DEVNULL,
            stderr=log,
            start_new_session=True,
        )
        url = f"http://127.0.0.1:{port}"
        try:
            _wait_until_up(url + "/healthz")
            yield url
        finally:
            os.killpg(process.pid, signal.SIGTERM)
            try:
                process.wait(timeout=15)
            except subprocess.TimeoutExpired:
                os.killpg(process.pid, signal.SIGKILL)
                process.wait()
            # Shown by pytest only when the test failed (captured teardown output).
            log.seek(0)
            print(f"gunicorn's log:\n{log.read().decode(errors='replace')[-8000:]}")


def _wait_until_up(url: str) -> None:
    give_up = time.monotonic() + 30
    while time.monotonic() < give_up:
        try:
            if requests.get(url, timeout=1).status_code == 200:
                return
        except requests.RequestException:
            time.sleep(0.1)
    raise RuntimeError(f"{url} did not come up")


def _post(url: str, body: dict[str, Any], timeout: float = 30) -> requests.Response:
    return requests.post(url, json=body, headers=AUTH, timeout=timeout)


@pytest.mark.postgres
def test_purchases_waiting_on_stripe_do_not_stall_credit_applications_nor_webhooks(
    service: str, stripe_server: StripeStub
) -> None:
    api = f"{service}/api/v1"
    customer = unique("cust")
    assert _post(f"{api}/customers", {"customer": {"external_id": customer, "currency": "USD"}}).ok
    subscription = {"external_id": unique("sub"), "external_customer_id": customer}
    assert _post(f"{api}/subscriptions", {"subscription": {**subscription, "plan_code": "p"}}).ok
    wallet = _post(
        f"{api}/wallets",
        {
            "wallet": {
                "external_customer_id": customer,
                "rate_amount": "1",
                "granted_credits": "1000",
            }
        },
    )
    assert wallet.status_code == 201, wallet.text
    wallet_id = wallet.json()["wallet"]["id"]
    top_up = {"wallet_transaction": {"wallet_id": wallet_id, "paid_credits": "5"}}
    # One purchase made and paid at Stripe: its webhook is delivered while others wait.
    paid = _post(f"{api}/wallet_transactions", top_up)
    assert paid.status_code == 201, paid.text
    invoice_id = paid.json()["wallet_transactions"][0]["invoice"]["provider_invoice_id"]
    stripe_server.mark_paid(invoice_id)
    event = json.dumps(stripe_server.event(invoice_id, "invoice.paid")).encode()

    gate = stripe_server.hold("POST", "/v1/invoices")
    answers: list[int] = []

    def buy() -> None:
        answers.append(_post(f"{api}/wallet_transactions", top_up).status_code)

    buyers = [threading.Thread(target=buy) for _ in range(WAITING_PURCHASES)]
    timings: list[float] = []
    webhook_took = 0.0
    try:
        for buyer in buyers:
            buyer.start()
        give_up = time.monotonic() + 20
        while len(stripe_server.requests_to("POST", "/v1/invoices")) < 1 + WAITING_PURCHASES:
            assert time.monotonic() < give_up, "the purchases never reached Stripe"
            time.sleep(0.05)

        # Every purchase now waits on Stripe. The other routes answer meanwhile.
        for _ in range(TIMED_REQUESTS):
            body = application_body(customer, 100)
            started = time.monotonic()
            applied = _post(f"{api}/credit_applications", body, timeout=HOLD_SECONDS)
            timings.append(time.monotonic() - started)
            assert applied.status_code == 201, applied.text
        started = time.monotonic()
        delivered = requests.post(
            f"{service}/webhooks/stripe",
            data=event,
            headers={"Stripe-Signature": sign(event), "Content-Type": "application/json"},
            timeout=HOLD_SECONDS,
        )
        webhook_took = time.monotonic() - started
        assert delivered.status_code == 200, delivered.text
        assert delivered.json()["event"]["status"] == "processed"
        assert all(buyer.is_alive() for buyer in buyers), "Stripe was held all along"
    finally:
        gate.release()
        for buyer in buyers:
            buyer.join(timeout=30)

    print(
        f"\n{WAITING_PURCHASES} purchases waiting on Stripe, 1 worker: credit application "
        f"max {max(timings) * 1000:.0f} ms, median {sorted(timings)[len(timings) // 2] * 1000:.0f}"
        f" ms; webhook {webhook_took * 1000:.0f} ms"
    )
    assert max(timings) < FAST_ENOUGH, timings
    assert webhook_took < FAST_ENOUGH
    assert sorted(answers) == [201] * WAITING_PURCHASES
