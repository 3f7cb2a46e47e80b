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


def create_wallet(client: FlaskClient, external_customer_id: str, **fields: Any) -> dict[str, Any]:
    body = {
        "wallet": {"external_customer_id": external_customer_id, "rate_amount": "1.00", **fields}
    }
    response = post(client, "/wallets", body)
    assert response.status_code == 201, response.json
    return response.json  # type: ignore[no-any-return]


def assert_error(response: TestResponse, status: int, code: str) -> dict[str, Any]:
    assert response.status_code == status, response.get_data(as_text=True)
    body = response.json
    assert body is not None
    assert body["status"] == status
    assert body["code"] == code
    assert isinstance(body["error"], str) and body["error"]
    assert isinstance(body["error_details"], dict)
    return body
