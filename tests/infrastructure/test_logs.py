"""LOG_FORMAT=json: one JSON line per request and per Stripe event, request ids, and no
secret or card number in any line."""

from __future__ import annotations

import io
import json
import logging
import os
import subprocess
import sys
from pathlib import Path

import pytest
from flask.testing import FlaskClient

from gateway import logs
from tests.support.api import create_wallet, post, subscribed_customer
from tests.support.config import AUTH
from tests.support.webhooks import post_signed, stripe_event

SECRETS = ("test-key-1", "test-key-2", "whsec_test_primary", "whsec_test_secondary",
           "sk_test_gateway")  # fmt: skip
CARD = "4242 4242 4242 4242"


pytestmark = pytest.mark.settings(
    LOG_FORMAT="json", GATEWAY_API_KEYS="billing=test-key-1,test-key-2"
)


def test_a_generated_request_id_is_never_redacted_as_a_card_number() -> None:
    """A request id is shown whole in every line; one that held a run of digits passing
    Luhn would be cut by the card redaction (a UUID's hex does, about once in fifty)."""
    redactor = logs.Redactor(())
    ids = [logs.new_request_id() for _ in range(5000)]
    assert len(set(ids)) == len(ids)
    assert all(len(request_id) == 32 for request_id in ids)
    assert [i for i in ids if redactor(i) != i] == []


def test_one_json_line_per_request_with_its_id_and_key_label(client: FlaskClient) -> None:
    buffer = io.StringIO()
    logs.configure("json", secrets=SECRETS, stream=buffer)
    given = client.get("/api/v1/wallets", headers={**AUTH, "X-Request-Id": "req-abc.123"})
    generated = client.get("/api/v1/wallets/nope", headers=AUTH)
    forged = client.get("/healthz", headers={"X-Request-Id": 'a b", "event": "x'})
    assert given.headers["X-Request-Id"] == "req-abc.123"
    assert len(generated.headers["X-Request-Id"]) == 32
    assert forged.headers["X-Request-Id"] not in ('a b", "event": "x', "")
    lines = [json.loads(line) for line in buffer.getvalue().splitlines()]
    requests = [line for line in lines if line.get("event") == "request"]
    assert [(r["method"], r["path"], r["status"]) for r in requests] == [
        ("GET", "/api/v1/wallets", 200),
        ("GET", "/api/v1/wallets/nope", 404),
        ("GET", "/healthz", 200),
    ]
    assert requests[0]["request_id"] == "req-abc.123"
    assert requests[1]["request_id"] == generated.headers["X-Request-Id"]
    assert requests[2]["request_id"] == forged.headers["X-Request-Id"]
    assert requests[0]["api_key"] == "billing"
    assert requests[2]["api_key"] is None  # no key on /healthz
    assert all(isinstance(r["duration_ms"], int | float) for r in requests)
    assert {"time", "level", "logger", "message"} <= set(requests[0])


def test_a_webhook_event_is_one_line_with_its_outcome(client: FlaskClient) -> None:
    buffer = io.StringIO()
    logs.configure("json", secrets=SECRETS, stream=buffer)
    event = stripe_event(
        "customer.created", {"id": "cus_x", "object": "customer"}, event_id="evt_log_1"
    )
    for _ in range(2):
        assert post_signed(client, event).status_code == 200
    unsigned = client.post("/webhooks/stripe", data=b"{}", headers={"Stripe-Signature": "t=1"})
    assert unsigned.status_code == 400
    lines = [json.loads(line) for line in buffer.getvalue().splitlines()]
    events = [line for line in lines if line.get("event") == "webhook_event"]
    assert [(e["event_id"], e["event_type"], e["outcome"]) for e in events] == [
        ("evt_log_1", "customer.created", "ignored"),
        ("evt_log_1", "customer.created", "duplicate"),
        (None, None, "rejected"),
    ]
    assert events[2]["reason"] in ("invalid_signature", "missing_signature")
    assert all(e["request_id"] for e in events)


def test_no_secret_or_card_number_reaches_a_line(client: FlaskClient) -> None:
    buffer = io.StringIO()
    logs.configure("json", secrets=SECRETS, stream=buffer)
    customer = subscribed_customer(client)
    post(client, "/customers", {"customer": {"external_id": CARD, "currency": "USD",
                                              "name": "4242424242424242"}})  # fmt: skip
    create_wallet(client, customer, granted_credits="5")
    client.get("/api/v1/wallets", headers={"Authorization": "Bearer sk_test_gateway"})
    client.get(f"/api/v1/customers/{CARD}", headers=AUTH)
    # Whatever some code logs, the line written carries no secret.
    logging.getLogger("gateway.anything").warning(
        "called with %s and %s, card %s, header Bearer %s",
        "sk_test_gateway",
        "whsec_test_primary",
        CARD,
        "test-key-2",
    )
    text = buffer.getvalue()
    assert text.count("\n") >= 6
    for line in text.splitlines():
        json.loads(line)
        for secret in (*SECRETS, "4242424242424242", CARD):
            assert secret not in line, line
    assert "[redacted]" in text


def test_luhn_decides_what_is_a_card_number() -> None:
    redact = logs.Redactor()
    assert redact("card 4000 0566 5566 5556 ok") == "card [redacted] ok"
    assert redact("order 1234567890123 ok") == "order 1234567890123 ok"  # not Luhn-valid
    assert redact("GET /c/4242 4242 4242 4242 200") == "GET /c/[redacted]"
    assert redact("at 2026-12-04T16:22:01Z") == "at 2026-12-04T16:22:01Z"


def test_text_format_keeps_the_fields_as_pairs(client: FlaskClient) -> None:
    buffer = io.StringIO()
    logs.configure("text", secrets=SECRETS, stream=buffer)
    client.get("/healthz", headers={"X-Request-Id": "r-1"})
    [line] = [line for line in buffer.getvalue().splitlines() if "event=request" in line]
    assert "GET /healthz 200" in line
    assert "request_id=r-1" in line
    assert "status=200" in line


def test_commands_print_no_alembic_plugin_lines(tmp_path: Path) -> None:
    """A fresh process, as an operator runs it: alembic announces its plugins on import."""
    gateway = Path(sys.executable).with_name("gateway")
    env = {**os.environ, "DATABASE_URL": f"sqlite:///{tmp_path / 'db.sqlite3'}"}
    env.pop("LOG_FORMAT", None)
    result = subprocess.run(  # noqa: S603 (our own console script)
        [str(gateway), "db", "current"],
        check=False,  # exit 1: a new database is not at the head
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert "database:" in result.stdout, result.stdout + result.stderr
    assert "setup plugin" not in result.stdout + result.stderr
