"""Every ledger entry says who made it: `api:LABEL`, `operator:NAME` or `system`."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from flask import Flask
from flask.testing import FlaskClient, FlaskCliRunner
from sqlalchemy import select, update
from sqlalchemy.orm import Session

from gateway import create_app
from gateway.models import Wallet, WalletTransaction
from gateway.settings import ConfigurationError, parse_api_keys
from tests.support.api import unique, wallet_body
from tests.support.config import TEST_SETTINGS

BILLING = {"Authorization": "Bearer key-of-billing"}
BARE = {"Authorization": "Bearer bare-key"}


pytestmark = pytest.mark.settings(
    GATEWAY_API_KEYS="bare-key, billing=key-of-billing", STRIPE_SECRET_KEY=""
)


def _customer(client: FlaskClient) -> str:
    external_id = unique("author")
    for path, body in (
        ("/customers", {"customer": {"external_id": external_id, "currency": "USD"}}),
        (
            "/subscriptions",
            {"subscription": {"external_id": unique("sub"), "external_customer_id": external_id,
                              "plan_code": "pro"}},
        ),
    ):  # fmt: skip
        assert client.post(f"/api/v1{path}", json=body, headers=BARE).status_code == 201
    return external_id


def _wallet(client: FlaskClient, headers: dict[str, str], granted: str = "10") -> dict[str, Any]:
    body = wallet_body(_customer(client), granted_credits=granted)
    response = client.post("/api/v1/wallets", json=body, headers=headers)
    assert response.status_code == 201, response.json
    return response.json  # type: ignore[no-any-return]


def test_an_entry_made_with_a_labelled_key_names_the_label(client: FlaskClient) -> None:
    created = _wallet(client, BILLING)
    (granted,) = created["wallet_transactions"]

    assert granted["created_by"] == "api:billing"
    listed = client.get(
        f"/api/v1/wallets/{created['wallet']['id']}/wallet_transactions", headers=BARE
    ).json
    assert [entry["created_by"] for entry in listed["wallet_transactions"]] == ["api:billing"]


def test_a_bare_key_is_labelled_default(client: FlaskClient) -> None:
    created = _wallet(client, BARE)
    wallet_id = created["wallet"]["id"]
    top_up = client.post(
        "/api/v1/wallet_transactions",
        json={"wallet_transaction": {"wallet_id": wallet_id, "granted_credits": "2"}},
        headers=BILLING,
    )

    assert created["wallet_transactions"][0]["created_by"] == "api:default"
    assert top_up.json["wallet_transactions"][0]["created_by"] == "api:billing"


def test_termination_and_credit_application_name_their_caller(
    client: FlaskClient, db_session: Session
) -> None:
    created = _wallet(client, BARE)
    external_id = created["wallet"]["external_customer_id"]
    application = client.post(
        "/api/v1/credit_applications",
        json={"credit_application": {"invoice_external_id": unique("inv"),
                                     "external_customer_id": external_id,
                                     "invoice_type": "usage", "currency": "USD",
                                     "subtotal_amount_cents": 300}},
        headers=BILLING,
    )  # fmt: skip
    assert application.status_code == 201, application.json
    assert (
        client.delete(f"/api/v1/wallets/{created['wallet']['id']}", headers=BILLING).status_code
        == 200
    )

    rows = db_session.execute(
        select(WalletTransaction.transaction_status, WalletTransaction.created_by).where(
            WalletTransaction.wallet_id == created["wallet"]["id"]
        )
    ).all()
    authors = {row.transaction_status: row.created_by for row in rows}
    assert authors == {"granted": "api:default", "invoiced": "api:billing", "voided": "api:billing"}


def test_the_expiry_sweep_is_the_system(
    client: FlaskClient, runner: FlaskCliRunner, db_session: Session
) -> None:
    wallet_id = _wallet(client, BARE)["wallet"]["id"]
    db_session.execute(
        update(Wallet)
        .where(Wallet.id == wallet_id)
        .values(expiration_at=datetime.now(UTC) - timedelta(hours=1))
    )
    db_session.commit()

    assert runner.invoke(args=["expire-wallets"]).exit_code == 0

    voided = db_session.execute(
        select(WalletTransaction.created_by).where(
            WalletTransaction.wallet_id == wallet_id,
            WalletTransaction.transaction_status == "voided",
        )
    ).scalar_one()
    assert voided == "system"


def test_a_wallet_found_expired_by_a_caller_ended_by_itself(
    client: FlaskClient, db_session: Session
) -> None:
    """Terminating a wallet already past its expiration records the expiry, not the caller."""
    wallet_id = _wallet(client, BARE)["wallet"]["id"]
    db_session.execute(
        update(Wallet)
        .where(Wallet.id == wallet_id)
        .values(expiration_at=datetime.now(UTC) - timedelta(hours=1))
    )
    db_session.commit()

    assert client.delete(f"/api/v1/wallets/{wallet_id}", headers=BILLING).status_code == 200

    voided = db_session.execute(
        select(WalletTransaction.created_by).where(
            WalletTransaction.wallet_id == wallet_id,
            WalletTransaction.transaction_status == "voided",
        )
    ).scalar_one()
    assert voided == "system"


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("k1", (("default", "k1"),)),
        ("ops=k1, billing=k2,k3", (("ops", "k1"), ("billing", "k2"), ("default", "k3"))),
        ("ops=k=with=equals", (("ops", "k=with=equals"),)),
        ("rotating=old,rotating=new", (("rotating", "old"), ("rotating", "new"))),
    ],
)
def test_api_keys_are_read_with_their_labels(value: str, expected: tuple[Any, ...]) -> None:
    assert parse_api_keys(value) == expected


@pytest.mark.parametrize("value", ["=k1", "bad label=k1", "ops=", "a/b=k"])
def test_a_malformed_api_key_entry_stops_the_start(value: str) -> None:
    with pytest.raises(ConfigurationError, match="GATEWAY_API_KEYS"):
        parse_api_keys(value)
    with pytest.raises(ConfigurationError, match="GATEWAY_API_KEYS"):
        create_app({**TEST_SETTINGS, "GATEWAY_API_KEYS": value})


def test_labels_are_not_keys(app: Flask, client: FlaskClient) -> None:
    """A label alone, or `label=key` sent whole, opens nothing."""
    for presented in ("billing", "billing=key-of-billing"):
        response = client.get("/api/v1/wallets", headers={"Authorization": f"Bearer {presented}"})
        assert response.status_code == 401
