"""Granted top-ups through POST /wallet_transactions, and reading the ledger back."""

from __future__ import annotations

from decimal import Decimal
from typing import Any

import pytest
from flask.testing import FlaskClient
from sqlalchemy.orm import Session

from gateway.ledger import ledger_balance
from gateway.models import Wallet
from tests.support.api import (
    assert_error,
    create_wallet,
    delete,
    get,
    subscribed_customer,
    top_up,
)

pytestmark = pytest.mark.settings(STRIPE_SECRET_KEY="")


def test_granted_top_up_is_settled_and_raises_the_balance(
    client: FlaskClient, db_session: Session
) -> None:
    wallet = create_wallet(client, subscribed_customer(client), rate_amount="0.25")["wallet"]
    response = top_up(client, wallet["id"], granted_credits="12.34567")
    assert response.status_code == 201
    [entry] = response.json["wallet_transactions"]
    assert entry["transaction_type"] == "inbound"
    assert entry["transaction_status"] == "granted"
    assert entry["status"] == "settled"
    assert entry["credit_amount"] == "12.34567"
    assert entry["amount"] == "3.0864175"  # exact: 12.34567 x 0.25
    assert entry["settled_at"] == entry["created_at"]
    assert entry["failed_at"] is None
    stored = db_session.get(Wallet, wallet["id"])
    assert stored is not None
    assert stored.credits_balance == Decimal("12.34567")
    assert ledger_balance(db_session, wallet["id"]) == Decimal("12.34567")
    shown = get(client, f"/wallets/{wallet['id']}").json["wallet"]
    assert shown["credits_balance"] == "12.34567"
    assert shown["balance_cents"] == 308  # rounded down: never more than is held


def test_top_ups_add_up(client: FlaskClient, db_session: Session) -> None:
    wallet = create_wallet(client, subscribed_customer(client), granted_credits="1")["wallet"]
    for amount in ("0.1", "0.2", "0.00001", "999999999"):
        assert top_up(client, wallet["id"], granted_credits=amount).status_code == 201
    expected = Decimal("1000000000.30001")
    assert ledger_balance(db_session, wallet["id"]) == expected
    assert get(client, f"/wallets/{wallet['id']}").json["wallet"]["credits_balance"] == (
        "1000000000.30001"
    )


@pytest.mark.parametrize(
    "credits",
    [{}, {"granted_credits": None}, {"granted_credits": None, "paid_credits": None}],
)
def test_a_top_up_needs_credits(client: FlaskClient, credits: dict[str, Any]) -> None:
    wallet = create_wallet(client, subscribed_customer(client))["wallet"]
    body = assert_error(top_up(client, wallet["id"], **credits), 422, "validation_errors")
    assert body["error_details"]


def test_top_up_of_an_unknown_wallet_is_404(client: FlaskClient) -> None:
    assert_error(top_up(client, "wal_nope", granted_credits="1"), 404, "not_found")


def test_top_up_of_a_terminated_wallet_is_refused(client: FlaskClient) -> None:
    wallet = create_wallet(client, subscribed_customer(client))["wallet"]
    delete(client, f"/wallets/{wallet['id']}")
    body = assert_error(
        top_up(client, wallet["id"], granted_credits="1"), 422, "wallet_is_terminated"
    )
    assert wallet["id"] in body["message"]


def test_paid_credits_answer_payment_provider_unavailable(client: FlaskClient) -> None:
    wallet = create_wallet(client, subscribed_customer(client))["wallet"]
    body = assert_error(
        top_up(client, wallet["id"], paid_credits="5"), 503, "payment_provider_unavailable"
    )
    assert "STRIPE_SECRET_KEY" in body["message"]
    listed = get(client, f"/wallets/{wallet['id']}/wallet_transactions").json
    assert listed["wallet_transactions"] == []


def test_get_one_transaction(client: FlaskClient) -> None:
    body = create_wallet(client, subscribed_customer(client), granted_credits="3")
    [entry] = body["wallet_transactions"]
    response = get(client, f"/wallet_transactions/{entry['id']}")
    assert response.status_code == 200
    assert response.json == {"wallet_transaction": entry}


def test_unknown_transaction_is_404(client: FlaskClient) -> None:
    assert_error(get(client, "/wallet_transactions/wtx_nope"), 404, "not_found")


def test_list_transactions_with_filters_and_meta(client: FlaskClient) -> None:
    wallet = create_wallet(client, subscribed_customer(client), granted_credits="1")["wallet"]
    path = f"/wallets/{wallet['id']}/wallet_transactions"
    for amount in ("2", "3"):
        top_up(client, wallet["id"], granted_credits=amount)
    delete(client, f"/wallets/{wallet['id']}")  # voids the 6 credits left

    everything = get(client, path).json
    assert [e["credit_amount"] for e in everything["wallet_transactions"]] == [
        "6.00000",
        "3.00000",
        "2.00000",
        "1.00000",
    ]
    assert everything["meta"] == {
        "current_page": 1,
        "next_page": None,
        "prev_page": None,
        "total_pages": 1,
        "total_count": 4,
    }

    granted = get(client, path, transaction_status="granted", per_page=2).json
    assert [e["credit_amount"] for e in granted["wallet_transactions"]] == ["3.00000", "2.00000"]
    assert granted["meta"] == {
        "current_page": 1,
        "next_page": 2,
        "prev_page": None,
        "total_pages": 2,
        "total_count": 3,
    }
    page_2 = get(client, path, transaction_status="granted", per_page=2, page=2).json
    assert [e["credit_amount"] for e in page_2["wallet_transactions"]] == ["1.00000"]
    assert page_2["meta"]["prev_page"] == 1

    voided = get(client, path, transaction_status="voided").json
    assert [e["transaction_type"] for e in voided["wallet_transactions"]] == ["outbound"]

    settled = get(client, path, status="settled").json
    assert settled["meta"]["total_count"] == 4
    pending = get(client, path, status="pending").json
    assert pending == {
        "wallet_transactions": [],
        "meta": {
            "current_page": 1,
            "next_page": None,
            "prev_page": None,
            "total_pages": 1,
            "total_count": 0,
        },
    }
    both = get(client, path, status="settled", transaction_status="voided").json
    assert both["meta"]["total_count"] == 1


def test_list_only_shows_that_wallets_entries(client: FlaskClient) -> None:
    mine = create_wallet(client, subscribed_customer(client), granted_credits="1")["wallet"]
    create_wallet(client, subscribed_customer(client), granted_credits="2")
    listed = get(client, f"/wallets/{mine['id']}/wallet_transactions").json
    assert [e["wallet_id"] for e in listed["wallet_transactions"]] == [mine["id"]]


def test_list_of_an_unknown_wallet_is_404(client: FlaskClient) -> None:
    assert_error(get(client, "/wallets/wal_nope/wallet_transactions"), 404, "not_found")


@pytest.mark.parametrize(
    "query",
    [{"status": "done"}, {"transaction_status": "bought"}, {"per_page": "0"}, {"page": "-1"}],
)
def test_list_filters_are_validated(client: FlaskClient, query: dict[str, str]) -> None:
    wallet = create_wallet(client, subscribed_customer(client))["wallet"]
    response = get(client, f"/wallets/{wallet['id']}/wallet_transactions", **query)
    body = assert_error(response, 422, "validation_errors")
    assert set(body["error_details"]) == set(query)
