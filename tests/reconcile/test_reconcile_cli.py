"""`gateway reconcile` as an operator and cron see it: output, formats and exit status."""

from __future__ import annotations

import json
import os
import pty
import subprocess
import sys
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
from click.testing import Result
from flask import Flask
from flask.testing import FlaskClient, FlaskCliRunner
from sqlalchemy import Connection, text
from sqlalchemy.orm import Session

from gateway import create_app
from gateway.cli.reconcile import parse_since
from gateway.db import utcnow
from gateway.models import PurchaseStatus
from gateway.providers.stripe.sandbox import StripeStub
from tests.support.config import TEST_SETTINGS
from tests.support.purchases import buy_wallet, settled_purchase
from tests.support.reconcile import table_rows
from tests.support.webhooks import make_purchase, state_of


def reconcile(runner: FlaskCliRunner, *args: str) -> Result:
    return runner.invoke(args=["reconcile", *args])


def as_json(result: Result) -> dict[str, Any]:
    document: dict[str, Any] = json.loads(result.stdout)
    return document


# --- people: the table ---------------------------------------------------------------------


@pytest.mark.usefixtures("stripe_http")
def test_all_consistent_exits_0_with_a_summary(
    runner: FlaskCliRunner, client: FlaskClient, db_session: Session
) -> None:
    buy_wallet(client, db_session, paid="5")

    result = reconcile(runner)

    assert result.exit_code == 0, result.output
    assert "all consistent" in result.stdout
    assert (
        "checked 1 Stripe invoice(s), 0 refund(s), 0 dispute(s), 1 purchase(s), 1 wallet(s)"
        in result.stdout
    )


@pytest.mark.usefixtures("stripe_http")
def test_a_repair_is_shown_in_the_table_and_exits_1(
    runner: FlaskCliRunner, client: FlaskClient, db_session: Session, stub: StripeStub
) -> None:
    bought = buy_wallet(client, db_session, paid="5")
    stub.mark_paid(bought.invoice_id or "")

    result = reconcile(runner)

    assert result.exit_code == 1, result.output
    assert "invoice_paid_not_settled" in result.stdout
    assert "repaired" in result.stdout
    assert bought.purchase_id in result.stdout
    assert str(bought.invoice_id) in result.stdout
    assert "found 1: 1 repaired" in result.stdout
    assert state_of(db_session, bought.purchase_id).purchase_status == PurchaseStatus.SETTLED


@pytest.mark.usefixtures("stripe_http")
def test_no_progress_bar_when_stdout_is_not_a_terminal(
    runner: FlaskCliRunner, client: FlaskClient, db_session: Session
) -> None:
    buy_wallet(client, db_session, paid="5")

    result = reconcile(runner)

    assert result.exit_code == 0, result.output  # the run finished: its report was written
    assert "checked 1 Stripe invoice(s)" in result.output
    assert "all consistent" in result.output
    assert "Reading Stripe invoices" not in result.output
    assert "\x1b[" not in result.output  # no cursor movement, no colours


# --- machines: JSON -------------------------------------------------------------------------


@pytest.mark.usefixtures("stripe_http")
def test_json_format_describes_every_finding(
    runner: FlaskCliRunner,
    client: FlaskClient,
    db_session: Session,
    connection: Connection,
    stub: StripeStub,
) -> None:
    bought = buy_wallet(client, db_session, paid="5", granted_credits="1")
    stub.mark_paid(bought.invoice_id or "")
    other = make_purchase(db_session, granted=Decimal("2"))
    connection.execute(
        text("UPDATE wallets SET credits_balance = credits_balance + 1 WHERE id = :id"),
        {"id": other.wallet_id},
    )

    result = reconcile(runner, "--format", "json")

    assert result.exit_code == 1, result.output
    document = as_json(result)
    assert document["format_version"] == 1
    assert document["status"] == "findings"
    assert document["exit_code"] == 1
    assert document["dry_run"] is False
    assert document["error"] is None
    assert document["started_at"].endswith("Z") and document["finished_at"].endswith("Z")
    assert document["window"]["requested"] is False
    assert document["grace_minutes"] == 60
    assert document["scanned"] == {
        "stripe_invoices": 1,
        "stripe_refunds": 0,
        "stripe_disputes": 0,
        "purchases": 1,
        "wallets": 2,
    }
    assert document["summary"] == {
        "repaired": 1,
        "would_repair": 0,
        "reported": 1,
        "failed": 0,
        "by_kind": {"invoice_paid_not_settled": 1, "ledger_mismatch": 1},
    }
    repaired, mismatch = document["findings"]
    assert repaired == {
        "kind": "invoice_paid_not_settled",
        "action": "repaired",
        "outcome": "settled",
        "purchase_id": bought.purchase_id,
        "wallet_id": bought.wallet_id,
        "invoice_id": bought.invoice_id,
        "invoice_status": "paid",
        "stored_balance": None,
        "ledger_balance": None,
        "detail": repaired["detail"],
    }
    assert mismatch["kind"] == "ledger_mismatch"
    assert mismatch["wallet_id"] == other.wallet_id
    assert mismatch["ledger_balance"] == "2.00000"
    assert mismatch["stored_balance"] != "2.00000"


@pytest.mark.usefixtures("stripe_http")
def test_a_refund_on_the_payment_is_a_finding_in_json_and_in_the_table(
    runner: FlaskCliRunner,
    client: FlaskClient,
    db_session: Session,
    stub: StripeStub,
) -> None:
    bought = settled_purchase(client, db_session, stub, paid="5")
    refund = stub.refund_payment(bought.invoice_id or "", amount=150)

    result = reconcile(runner, "--dry-run", "--format", "json")

    assert result.exit_code == 1, result.output
    document = as_json(result)
    assert document["format_version"] == 1
    assert document["scanned"]["stripe_refunds"] == 1
    assert document["summary"]["by_kind"] == {"settled_payment_refunded": 1}
    [finding] = document["findings"]
    assert finding == {
        "kind": "settled_payment_refunded",
        "action": "would_repair",
        "outcome": "take back",
        "purchase_id": bought.purchase_id,
        "wallet_id": bought.wallet_id,
        "invoice_id": bought.invoice_id,
        "invoice_status": None,
        "stored_balance": None,
        "ledger_balance": None,
        "detail": finding["detail"],
    }
    assert "1.50 USD" in finding["detail"] and refund["id"] in finding["detail"]

    table = reconcile(runner)

    assert table.exit_code == 1, table.output
    assert "settled_payment_refunded" in table.stdout
    assert "found 1: 1 repaired" in table.stdout


@pytest.mark.usefixtures("stripe_http")
def test_json_when_consistent(runner: FlaskCliRunner) -> None:
    result = reconcile(runner, "--format", "json")

    assert result.exit_code == 0
    document = as_json(result)
    assert (document["status"], document["exit_code"], document["findings"]) == (
        "consistent",
        0,
        [],
    )


# --- --dry-run and --since ---------------------------------------------------------------


@pytest.mark.usefixtures("stripe_http")
def test_dry_run_from_the_command_line_changes_nothing(
    runner: FlaskCliRunner,
    client: FlaskClient,
    db_session: Session,
    connection: Connection,
    stub: StripeStub,
) -> None:
    bought = buy_wallet(client, db_session, paid="5")
    stub.mark_paid(bought.invoice_id or "")
    before, stripe_before = table_rows(connection), len(stub.requests)

    result = reconcile(runner, "--dry-run")

    assert result.exit_code == 1, result.output
    assert "dry run: nothing was changed" in result.stdout
    assert "would_repair" in result.stdout
    assert table_rows(connection) == before
    assert [r for r in stub.requests[stripe_before:] if r.method == "POST"] == []


@pytest.mark.usefixtures("stripe_http")
def test_since_is_sent_to_stripe_as_the_listing_window(
    runner: FlaskCliRunner, stub: StripeStub
) -> None:
    result = reconcile(runner, "--since", "2026-11-01", "--format", "json")

    assert result.exit_code == 0, result.output
    assert as_json(result)["window"] == {"since": "2026-11-01T00:00:00Z", "requested": True}
    [listing] = stub.requests_to("GET", "/v1/invoices")
    start = datetime(2026, 11, 1, tzinfo=UTC) - timedelta(hours=1)
    assert listing.params["created"] == {"gte": str(int(start.timestamp()))}


def test_since_accepts_dates_and_durations() -> None:
    now = utcnow()
    assert parse_since("7d", now) == now - timedelta(days=7)
    assert parse_since("12h", now) == now - timedelta(hours=12)
    assert parse_since("30m", now) == now - timedelta(minutes=30)
    assert parse_since("2w", now) == now - timedelta(weeks=2)
    assert parse_since("2026-01-02T03:04:05+01:00", now).isoformat() == (
        "2026-01-02T02:04:05+00:00"
    )
    for bad in ("yesterday", "7x", "-7d", "2999-01-01"):
        with pytest.raises(ValueError, match=repr(bad)):
            parse_since(bad, now)


@pytest.mark.usefixtures("stripe_http")
def test_a_bad_since_is_a_usage_error(runner: FlaskCliRunner) -> None:
    result = reconcile(runner, "--since", "last tuesday")

    assert result.exit_code == 2
    assert "neither an ISO date" in result.output


@pytest.mark.usefixtures("stripe_http")
def test_grace_minutes_option_overrides_the_setting(
    runner: FlaskCliRunner, db_session: Session
) -> None:
    result = reconcile(runner, "--grace-minutes", "15", "--format", "json")

    assert result.exit_code == 0, result.output
    assert as_json(result)["grace_minutes"] == 15


# --- exit 2: could not run --------------------------------------------------------------------


@pytest.mark.usefixtures("stripe_http")
def test_stripe_unreachable_exits_2(
    runner: FlaskCliRunner, client: FlaskClient, db_session: Session, stub: StripeStub
) -> None:
    buy_wallet(client, db_session, paid="5")
    stub.fail_next("GET", "/v1/invoices", status=None, times=10)

    result = reconcile(runner, "--format", "json")

    assert result.exit_code == 2, result.output
    document = as_json(result)
    assert document["status"] == "error" and document["exit_code"] == 2
    assert "could not be reached" in document["error"]
    assert "reconcile stopped" in result.stderr


@pytest.mark.usefixtures("stripe_http")
def test_stripe_refusing_our_key_exits_2(runner: FlaskCliRunner, stub: StripeStub) -> None:
    stub.api_key = "sk_test_another_key"

    result = reconcile(runner)

    assert result.exit_code == 2
    assert "check STRIPE_SECRET_KEY" in result.stderr


@pytest.mark.parametrize("settings_overrides", [{"STRIPE_SECRET_KEY": ""}])
def test_stripe_not_configured_exits_2(runner: FlaskCliRunner) -> None:
    result = reconcile(runner, "--format", "json")

    assert result.exit_code == 2
    assert as_json(result) == {
        "format_version": 1,
        "status": "error",
        "exit_code": 2,
        "error": "the payment provider is not configured: set STRIPE_SECRET_KEY: "
        "reconciliation reads Stripe",
    }


@pytest.fixture
def unreachable_database_app() -> Flask:
    # Nothing listens on port 1: the connection is refused at once.
    return create_app(
        {**TEST_SETTINGS, "DATABASE_URL": "postgresql+psycopg://gateway@127.0.0.1:1/gateway"}
    )


def test_database_unreachable_exits_2(unreachable_database_app: Flask) -> None:
    result = unreachable_database_app.test_cli_runner().invoke(args=["reconcile"])

    assert result.exit_code == 2
    assert "the database could not be used: OperationalError" in result.stderr


def test_database_without_schema_exits_2(tmp_path: Path) -> None:
    app = create_app({**TEST_SETTINGS, "DATABASE_URL": f"sqlite:///{tmp_path / 'empty.db'}"})

    result = app.test_cli_runner().invoke(args=["reconcile", "--format", "json"])

    assert result.exit_code == 2
    document = json.loads(result.stdout)
    assert document["status"] == "error"
    assert "no such table" in document["error"]


# --- on a terminal: the progress bar ------------------------------------------------------


def _run_on_a_terminal(args: list[str], env: dict[str, str]) -> tuple[int, str]:
    """Run the `gateway` console script with stdout on a pseudo-terminal."""
    primary, secondary = pty.openpty()
    process = subprocess.Popen(  # noqa: S603 - our own console script
        [str(Path(sys.executable).parent / "gateway"), *args],
        env=env,
        stdin=subprocess.DEVNULL,
        stdout=secondary,
        stderr=subprocess.DEVNULL,
    )
    os.close(secondary)
    output = b""
    while True:
        try:
            chunk = os.read(primary, 65536)
        except OSError:  # the terminal closed with the process
            break
        if not chunk:
            break
        output += chunk
    os.close(primary)
    return process.wait(timeout=60), output.decode(errors="replace")


def test_progress_bar_is_drawn_on_a_terminal(tmp_path: Path, stripe_server: StripeStub) -> None:
    env = {
        **os.environ,
        "DATABASE_URL": f"sqlite:///{tmp_path / 'gateway.sqlite3'}",
        "STRIPE_SECRET_KEY": "sk_test_terminal",
        "STRIPE_API_BASE": stripe_server.url,
        "STRIPE_MAX_NETWORK_RETRIES": "0",
        "TERM": "xterm-256color",
        "COLUMNS": "120",
    }
    upgrade = subprocess.run(  # noqa: S603
        [str(Path(sys.executable).parent / "gateway"), "db", "upgrade"],
        env=env,
        capture_output=True,
        check=False,
    )
    assert upgrade.returncode == 0, upgrade.stderr

    status, output = _run_on_a_terminal(["reconcile"], env)

    assert status == 0, output
    assert "Reading Stripe invoices" in output
    assert "Checking wallet balances against the ledger" in output
    assert "all consistent" in output
    assert [r.path for r in stripe_server.requests] == [
        "/v1/invoices",
        "/v1/refunds",
        "/v1/disputes",
    ]


@pytest.mark.usefixtures("stripe_http")
def test_the_command_knows_which_api_keys_can_still_claim_a_purchase(
    app: Flask, runner: FlaskCliRunner, client: FlaskClient, db_session: Session, stub: StripeStub
) -> None:
    """A purchase made with an API key since removed from GATEWAY_API_KEYS has no
    caller left: the command voids its finalized invoice."""
    import dataclasses

    from gateway.providers.base import META_PURCHASE_ID
    from gateway.settings import current_settings
    from tests.support.purchases import buy_more
    from tests.support.reconcile import backdate

    first = buy_wallet(client, db_session, paid="1")
    stub.fail_next("POST", "/v1/invoices/", after=True)
    stuck = buy_more(client, db_session, first.wallet_id, paid="2", key="buy-1")
    [invoice] = stub.invoices_with(**{META_PURCHASE_ID: stuck.purchase_id})
    backdate(db_session, stuck.purchase_id, minutes=10)
    with app.app_context():
        settings = current_settings()
    app.extensions["settings"] = dataclasses.replace(
        settings, api_keys=("test-key-2",), api_key_labels=settings.api_key_labels[1:]
    )

    result = reconcile(runner, "--format", "json")

    assert result.exit_code == 1, result.output
    [finding] = as_json(result)["findings"]
    assert (finding["kind"], finding["outcome"]) == ("stuck_purchase", "voided")
    assert stub.invoices[invoice["id"]]["status"] == "void"
