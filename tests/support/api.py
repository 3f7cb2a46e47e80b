"""Small helpers that speak the API the way a caller does."""

from __future__ import annotations

import itertools
from typing import Any

from flask.testing import FlaskClient
from werkzeug.test import TestResponse

from tests.support.config import AUTH

_counter = itertools.count(1)


def unique(prefix: str) -> str:
    return f"{prefix}-{next(_counter)}"


def post(client: FlaskClient, path: str, body: Any, **headers: str) -> TestResponse:
    return client.post(f"/api/v1{path}", json=body, headers={**AUTH, **headers})


def put(client: FlaskClient, path: str, body: Any) -> TestResponse:
    return client.put(f"/api/v1{path}", json=body, headers=AUTH)


def get(client: FlaskClient, path: str, **query: Any) -> TestResponse:
    return client.get(f"/api/v1{path}", query_string=query, headers=AUTH)


def delete(client: FlaskClient, path: str) -> TestResponse:
    return client.delete(f"/api/v1{path}", headers=AUTH)


def create_customer(
    client: FlaskClient, external_id: str | None = None, currency: str = "USD"
) -> dict[str, Any]:
    external_id = external_id or unique("cust")
    response = post(
        client, "/customers", {"customer": {"external_id": external_id, "currency": currency}}
    )
    assert response.status_code in (200, 201), response.json
    return response.json["customer"]  # type: ignore[no-any-return,index]


def create_subscription(client: FlaskClient, external_customer_id: str) -> dict[str, Any]:
    response = post(
        client,
        "/subscriptions",
        {
            "subscription": {
                "external_id": unique("sub"),
                "external_customer_id": external_customer_id,
                "plan_code": "pro",
            }
        },
    )
    assert response.status_code == 201, response.json
    return response.json["subscription"]  # type: ignore[no-any-return,index]


def subscribed_customer(client: FlaskClient, currency: str = "USD") -> str:
    """A customer with an active subscription; returns its external id."""
    customer = create_customer(client, currency=currency)
    create_subscription(client, customer["external_id"])
    return customer["external_id"]  # type: ignore[no-any-return]


def wallet_body(customer: str, **fields: Any) -> dict[str, Any]:
    """The body of POST /wallets for `customer` at a rate of 1.00, with `fields` added."""
    return {"wallet": {"external_customer_id": customer, "rate_amount": "1.00", **fields}}


def post_wallet(
    client: FlaskClient, customer: str, key: str | None = None, **fields: Any
) -> TestResponse:
    """POST /wallets (with an Idempotency-Key when `key` is given), whatever it answers."""
    headers = {"Idempotency-Key": key} if key else {}
    return post(client, "/wallets", wallet_body(customer, **fields), **headers)


def create_wallet(client: FlaskClient, external_customer_id: str, **fields: Any) -> dict[str, Any]:
    response = post_wallet(client, external_customer_id, **fields)
    assert response.status_code == 201, response.json
    return response.json  # type: ignore[no-any-return]


def wallet_with_rule(client: FlaskClient, rule: dict[str, Any], granted: str) -> tuple[str, str]:
    """A subscribed customer's wallet holding `granted` credits and one recurring rule:
    (customer, wallet id)."""
    customer = subscribed_customer(client)
    wallet = create_wallet(
        client, customer, granted_credits=granted, recurring_transaction_rules=[rule]
    )["wallet"]
    return customer, wallet["id"]


def top_up(client: FlaskClient, wallet_id: str, key: str | None = None, **fields: Any) -> Any:
    """POST /wallet_transactions (`paid_credits`, `granted_credits`...), whatever it answers."""
    headers = {"Idempotency-Key": key} if key else {}
    body = {"wallet_transaction": {"wallet_id": wallet_id, **fields}}
    return post(client, "/wallet_transactions", body, **headers)


def application_body(
    customer: str,
    subtotal: int,
    *,
    invoice: str | None = None,
    invoice_type: str = "subscription",
    currency: str = "USD",
    **extra: Any,
) -> dict[str, Any]:
    """The body of POST /credit_applications (a fresh invoice id unless `invoice` is given)."""
    return {
        "credit_application": {
            "invoice_external_id": invoice or unique("inv"),
            "external_customer_id": customer,
            "invoice_type": invoice_type,
            "currency": currency,
            "subtotal_amount_cents": subtotal,
            **extra,
        }
    }


def apply(client: FlaskClient, customer: str, subtotal: int, **fields: Any) -> TestResponse:
    """POST /credit_applications, whatever it answers (`fields` as `application_body`)."""
    return post(client, "/credit_applications", application_body(customer, subtotal, **fields))


def applied(client: FlaskClient, customer: str, subtotal: int, **fields: Any) -> dict[str, Any]:
    """A credit application the service accepted: its `credit_application`."""
    response = apply(client, customer, subtotal, **fields)
    assert response.status_code == 201, response.json
    return response.json["credit_application"]  # type: ignore[no-any-return,index]


def spend(client: FlaskClient, customer: str, cents: int) -> None:
    """Credits applied to a usage invoice of `cents` (its id named after the amount)."""
    application = applied(
        client, customer, cents, invoice=f"inv-{customer}-{cents}", invoice_type="usage"
    )
    assert application["status"] == "applied"


def register_endpoint(
    client: FlaskClient, url: str = "https://billing.example/hooks", **fields: Any
) -> TestResponse:
    """POST /webhook_endpoints, whatever it answers."""
    return post(client, "/webhook_endpoints", {"webhook_endpoint": {"url": url, **fields}})


def registered_endpoint(client: FlaskClient, url: str, **fields: Any) -> dict[str, Any]:
    """A webhook endpoint the service accepted: its `webhook_endpoint`."""
    response = register_endpoint(client, url, **fields)
    assert response.status_code == 201, response.json
    return response.json["webhook_endpoint"]  # type: ignore[no-any-return,index]


def assert_error(response: TestResponse, status: int, code: str) -> dict[str, Any]:
    assert response.status_code == status, response.get_data(as_text=True)
    body = response.json
    assert body is not None
    assert body["status"] == status
    assert body["code"] == code
    assert isinstance(body["error"], str) and body["error"]
    assert isinstance(body["error_details"], dict)
    return body
