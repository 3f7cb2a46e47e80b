"""Lago's own Python client (lago-python-client) drives the service unchanged, over
real HTTP to a server on 127.0.0.1, and Lago's request fields mean what they say."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from decimal import Decimal
from typing import Any

import pytest
from flask import Flask
from flask.testing import FlaskClient
from lago_python_client.client import Client
from lago_python_client.exceptions import LagoApiError
from lago_python_client.models.wallet import Wallet
from lago_python_client.models.wallet_transaction import WalletTransaction
from sqlalchemy.orm import Session
from werkzeug.serving import make_server

from gateway import ledger
from tests.support.api import assert_error, create_wallet, get, post, subscribed_customer
from tests.support.config import API_KEY


@pytest.fixture
def lago(app: Flask) -> Iterator[Client]:
    """Lago's client pointed at the app served on a free loopback port."""
    server = make_server("127.0.0.1", 0, app, threaded=False)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield Client(api_key=API_KEY, api_url=f"http://127.0.0.1:{server.server_port}/")
    finally:
        server.shutdown()
        thread.join(timeout=10)


def test_lago_client_runs_the_wallet_lifecycle_unchanged(lago: Client, client: FlaskClient) -> None:
    customer = subscribed_customer(client)
    wallet = lago.wallets.create(
        Wallet(
            external_customer_id=customer,
            rate_amount="1.50",
            name="Prepaid",
            currency="USD",
            granted_credits="10",
        )
    )
    assert wallet is not None
    assert wallet.lago_id == wallet.lago_id and wallet.credits_balance == "10.00000"
    assert wallet.ongoing_balance_cents == wallet.balance_cents == 1500
    assert wallet.credits_ongoing_balance == "10.00000"

    found = lago.wallets.find(wallet.lago_id)
    assert (found.lago_id, found.external_customer_id) == (wallet.lago_id, customer)
    listed = lago.wallets.find_all({"external_customer_id": customer})
    assert [w.lago_id for w in listed["wallets"]] == [wallet.lago_id]
    assert listed["meta"]["total_count"] == 1
    renamed = lago.wallets.update(Wallet(name="Renamed"), wallet.lago_id)
    assert renamed.name == "Renamed"

    created = lago.wallet_transactions.create(
        WalletTransaction(
            wallet_id=wallet.lago_id,
            granted_credits="5",
            voided_credits="2",
            name="Winter bonus",
            metadata=[{"key": "campaign", "value": "winter"}],
            invoice_requires_successful_payment=True,
        )
    )
    granted, voided = created["wallet_transactions"]
    assert (granted.transaction_status, granted.credit_amount) == ("granted", "5.00000")
    assert (voided.transaction_type, voided.transaction_status) == ("outbound", "voided")
    assert (voided.status, voided.credit_amount, voided.source) == ("settled", "2.00000", "manual")
    assert voided.lago_wallet_id == wallet.lago_id
    assert granted.name == voided.name == "Winter bonus"
    assert voided.metadata == [{"key": "campaign", "value": "winter"}]

    entries = lago.wallet_transactions.find_all(wallet.lago_id)["wallet_transactions"]
    assert {entry.lago_id for entry in entries} >= {granted.lago_id, voided.lago_id}
    assert lago.wallets.find(wallet.lago_id).credits_balance == "13.00000"

    ended = lago.wallets.destroy(wallet.lago_id)
    assert (ended.status, ended.credits_balance) == ("terminated", "0.00000")


def test_voided_credits_go_through_the_ledger(client: FlaskClient, db_session: Session) -> None:
    customer = subscribed_customer(client)
    wallet = create_wallet(client, customer, granted_credits="7")["wallet"]
    body = {"wallet_transaction": {"wallet_id": wallet["id"], "voided_credits": "2.5"}}
    [entry] = post(client, "/wallet_transactions", body).json["wallet_transactions"]
    assert (entry["transaction_type"], entry["transaction_status"]) == ("outbound", "voided")
    assert get(client, f"/wallets/{wallet['id']}").json["wallet"]["credits_balance"] == "4.50000"
    too_much = {"wallet_transaction": {"wallet_id": wallet["id"], "voided_credits": "4.50001"}}
    refused = assert_error(post(client, "/wallet_transactions", too_much), 422, "validation_errors")
    assert "voided_credits" in refused["error_details"]
    # The stored balance is still the sum of the settled entries.
    assert ledger.ledger_balance(db_session, wallet["id"]) == Decimal("4.5")


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("ignore_paid_top_up_limits", True),
        ("purchase_order_number", "PO-1"),
        ("payment_method", {"payment_method_type": "card"}),
        ("invoice_custom_section", {"skip_invoice_custom_sections": True}),
        ("invoice_requires_successful_payment", False),
    ],
)
def test_a_lago_field_we_do_not_support_is_refused_naming_it(
    client: FlaskClient, field: str, value: Any
) -> None:
    customer = subscribed_customer(client)
    wallet = create_wallet(client, customer)["wallet"]
    body = {"wallet_transaction": {"wallet_id": wallet["id"], "granted_credits": "1", field: value}}
    refused = assert_error(post(client, "/wallet_transactions", body), 422, "validation_errors")
    assert list(refused["error_details"]["wallet_transaction"]) == [field]
    # Null is accepted, and changes nothing.
    body["wallet_transaction"][field] = None
    assert post(client, "/wallet_transactions", body).status_code == 201


def test_fields_outside_lagos_request_stay_refused(client: FlaskClient) -> None:
    customer = subscribed_customer(client)
    wallet = create_wallet(client, customer)["wallet"]
    body = {"wallet_transaction": {"wallet_id": wallet["id"], "granted_credits": "1",
                                   "priority": 1}}  # fmt: skip
    refused = assert_error(post(client, "/wallet_transactions", body), 422, "validation_errors")
    assert refused["error_details"]["wallet_transaction"] == {"priority": ["Unknown field."]}


def test_lago_errors_reach_lagos_client_as_its_exceptions(lago: Client) -> None:
    with pytest.raises(LagoApiError) as raised:
        lago.wallets.find("wal_missing")
    assert raised.value.status_code == 404
