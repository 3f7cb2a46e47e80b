"""Customers (upsert on external_id, get) and subscriptions (create, terminate)."""

from __future__ import annotations

from flask.testing import FlaskClient
from sqlalchemy import func, select
from sqlalchemy.orm import Session

from gateway.models import Customer, Subscription
from tests.support.api import (
    assert_error,
    create_customer,
    create_subscription,
    create_wallet,
    delete,
    get,
    post,
    unique,
)


def test_upsert_creates_then_updates(client: FlaskClient, db_session: Session) -> None:
    external_id = unique("cust")
    first = post(
        client,
        "/customers",
        {"customer": {"external_id": external_id, "currency": "eur", "name": "Ada"}},
    )
    assert first.status_code == 201
    created = first.json["customer"]  # type: ignore[index]
    assert created["external_id"] == external_id
    assert created["currency"] == "EUR"
    assert created["name"] == "Ada"
    assert created["email"] is None
    assert created["id"].startswith("cus_")
    assert created["created_at"].endswith("Z")

    second = post(
        client,
        "/customers",
        {
            "customer": {
                "external_id": external_id,
                "currency": "EUR",
                "name": "Ada Lovelace",
                "email": "ada@example.com",
            }
        },
    )
    assert second.status_code == 200
    updated = second.json["customer"]  # type: ignore[index]
    assert updated["id"] == created["id"]
    assert updated["name"] == "Ada Lovelace"
    assert updated["email"] == "ada@example.com"
    count = db_session.execute(
        select(func.count()).select_from(Customer).where(Customer.external_id == external_id)
    ).scalar_one()
    assert count == 1


def test_upsert_without_name_keeps_the_stored_one(client: FlaskClient) -> None:
    external_id = unique("cust")
    post(
        client,
        "/customers",
        {"customer": {"external_id": external_id, "currency": "USD", "name": "Kept"}},
    )
    again = post(
        client, "/customers", {"customer": {"external_id": external_id, "currency": "USD"}}
    )
    assert again.status_code == 200
    assert again.json["customer"]["name"] == "Kept"  # type: ignore[index]


def test_currency_can_change_until_the_customer_has_a_wallet(client: FlaskClient) -> None:
    external_id = create_customer(client, currency="USD")["external_id"]
    changed = post(
        client, "/customers", {"customer": {"external_id": external_id, "currency": "JPY"}}
    )
    assert changed.json["customer"]["currency"] == "JPY"  # type: ignore[index]
    create_subscription(client, external_id)
    create_wallet(client, external_id)
    refused = post(
        client, "/customers", {"customer": {"external_id": external_id, "currency": "EUR"}}
    )
    body = assert_error(refused, 422, "validation_errors")
    assert "currency" in body["error_details"]
    assert get(client, f"/customers/{external_id}").json["customer"]["currency"] == "JPY"  # type: ignore[index]


def test_get_customer(client: FlaskClient) -> None:
    customer = create_customer(client, currency="KWD")
    response = get(client, f"/customers/{customer['external_id']}")
    assert response.status_code == 200
    assert response.json == {"customer": customer}


def test_unknown_customer_is_404(client: FlaskClient) -> None:
    body = assert_error(get(client, "/customers/nobody"), 404, "not_found")
    assert "nobody" in body["message"]


def test_customer_input_is_validated(client: FlaskClient) -> None:
    body = assert_error(
        post(
            client,
            "/customers",
            {"customer": {"external_id": "", "currency": "ABC", "email": "nope"}},
        ),
        422,
        "validation_errors",
    )
    assert set(body["error_details"]["customer"]) == {"external_id", "currency", "email"}


def test_subscription_create_and_terminate(client: FlaskClient, db_session: Session) -> None:
    customer = create_customer(client)
    external_id = unique("sub")
    response = post(
        client,
        "/subscriptions",
        {
            "subscription": {
                "external_id": external_id,
                "external_customer_id": customer["external_id"],
                "plan_code": "pro",
            }
        },
    )
    assert response.status_code == 201
    subscription = response.json["subscription"]  # type: ignore[index]
    assert subscription["status"] == "active"
    assert subscription["external_customer_id"] == customer["external_id"]
    assert subscription["plan_code"] == "pro"
    assert subscription["terminated_at"] is None

    ended = delete(client, f"/subscriptions/{external_id}")
    assert ended.status_code == 200
    terminated = ended.json["subscription"]  # type: ignore[index]
    assert terminated["status"] == "terminated"
    assert terminated["terminated_at"] is not None

    # Terminating again changes nothing and answers the same.
    again = delete(client, f"/subscriptions/{external_id}")
    assert again.status_code == 200
    assert again.get_data() == ended.get_data()
    stored = db_session.execute(
        select(Subscription).where(Subscription.external_id == external_id)
    ).scalar_one()
    assert stored.status == "terminated"


def test_duplicate_subscription_external_id_is_a_validation_error(client: FlaskClient) -> None:
    customer = create_customer(client)
    subscription = create_subscription(client, customer["external_id"])
    response = post(
        client,
        "/subscriptions",
        {
            "subscription": {
                "external_id": subscription["external_id"],
                "external_customer_id": customer["external_id"],
                "plan_code": "pro",
            }
        },
    )
    body = assert_error(response, 422, "validation_errors")
    assert body["error_details"] == {"external_id": ["already exists"]}


def test_subscription_for_unknown_customer_is_404(client: FlaskClient) -> None:
    response = post(
        client,
        "/subscriptions",
        {
            "subscription": {
                "external_id": unique("sub"),
                "external_customer_id": "ghost",
                "plan_code": "pro",
            }
        },
    )
    assert_error(response, 404, "not_found")


def test_terminating_an_unknown_subscription_is_404(client: FlaskClient) -> None:
    assert_error(delete(client, "/subscriptions/ghost"), 404, "not_found")


def test_ending_the_subscription_does_not_end_the_wallet(client: FlaskClient) -> None:
    customer = create_customer(client)
    subscription = create_subscription(client, customer["external_id"])
    wallet = create_wallet(client, customer["external_id"], granted_credits="5")["wallet"]
    delete(client, f"/subscriptions/{subscription['external_id']}")
    still = get(client, f"/wallets/{wallet['id']}").json["wallet"]  # type: ignore[index]
    assert still["status"] == "active"
    assert still["credits_balance"] == "5.00000"
