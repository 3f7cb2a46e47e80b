"""Webhook endpoints (`/api/v1/webhook_endpoints`) and the event feed (`/api/v1/events`)."""

from __future__ import annotations

import base64
from typing import Any

import pytest
from flask.testing import FlaskClient
from sqlalchemy import select
from sqlalchemy.orm import Session

from gateway.events import EVENT_TYPES
from gateway.models import WebhookEndpoint
from tests.support.api import (
    assert_error,
    create_wallet,
    delete,
    get,
    register_endpoint,
    subscribed_customer,
)


def test_create_shows_the_secret_once(client: FlaskClient, db_session: Session) -> None:
    response = register_endpoint(client, event_types=["wallet.created"], description="billing core")
    assert response.status_code == 201, response.json
    created = response.json["webhook_endpoint"]  # type: ignore[index]
    assert created["status"] == "enabled"
    assert created["event_types"] == ["wallet.created"]
    assert created["url"] == "https://billing.example/hooks"
    assert created["id"].startswith("we_")
    secret = created["secret"]
    assert secret.startswith("whsec_")
    assert len(base64.b64decode(secret.removeprefix("whsec_"))) >= 24

    shown = get(client, f"/webhook_endpoints/{created['id']}").json["webhook_endpoint"]  # type: ignore[index]
    assert "secret" not in shown
    assert shown == {key: value for key, value in created.items() if key != "secret"}
    listed = get(client, "/webhook_endpoints").json  # type: ignore[union-attr]
    assert all("secret" not in row for row in listed["webhook_endpoints"])  # type: ignore[index]
    assert created["id"] in [row["id"] for row in listed["webhook_endpoints"]]  # type: ignore[index]
    stored = db_session.execute(
        select(WebhookEndpoint.secret).where(WebhookEndpoint.id == created["id"])
    ).scalar_one()
    assert stored == secret


def test_no_event_types_means_every_type(client: FlaskClient) -> None:
    created = register_endpoint(client).json["webhook_endpoint"]  # type: ignore[index]
    assert created["event_types"] is None


def test_delete_disables(client: FlaskClient) -> None:
    endpoint_id = register_endpoint(client).json["webhook_endpoint"]["id"]  # type: ignore[index]
    first = delete(client, f"/webhook_endpoints/{endpoint_id}")
    assert first.status_code == 200
    assert first.json["webhook_endpoint"]["status"] == "disabled"  # type: ignore[index]
    assert first.json["webhook_endpoint"]["disabled_at"] is not None  # type: ignore[index]
    again = delete(client, f"/webhook_endpoints/{endpoint_id}")
    assert again.json == first.json
    assert_error(delete(client, "/webhook_endpoints/we_missing"), 404, "not_found")
    assert_error(get(client, "/webhook_endpoints/we_missing"), 404, "not_found")


@pytest.mark.parametrize(
    "url",
    [
        "ftp://billing.example/hooks",
        "javascript:alert(1)",
        "billing.example/hooks",
        "https://",
        "https://user:pw@billing.example/hooks",
        "https://billing.example:99999/hooks",
        "https://billing.example/ho oks",
        "",
        "https://" + "a" * 2100 + ".example",
    ],
)
def test_a_url_that_is_not_https_is_refused(client: FlaskClient, url: str) -> None:
    details = assert_error(register_endpoint(client, url), 422, "validation_errors")[
        "error_details"
    ]
    assert "url" in details["webhook_endpoint"]


@pytest.mark.parametrize("bad", [["wallet.exploded"], [], "wallet.created", [1], [None]])
def test_unknown_event_types_are_refused(client: FlaskClient, bad: Any) -> None:
    details = assert_error(register_endpoint(client, event_types=bad), 422, "validation_errors")[
        "error_details"
    ]
    assert "event_types" in details["webhook_endpoint"]


def test_unknown_fields_and_a_secret_in_the_request_are_refused(client: FlaskClient) -> None:
    response = register_endpoint(client, secret="whsec_mine")
    details = assert_error(response, 422, "validation_errors")["error_details"]
    assert "secret" in details["webhook_endpoint"]


@pytest.mark.settings(OUTGOING_WEBHOOKS_ALLOW_HTTP=False)
class TestPlainHttpNeedsTheSetting:
    def test_http_is_refused(self, client: FlaskClient) -> None:
        response = register_endpoint(client, "http://billing.example/hooks")
        details = assert_error(response, 422, "validation_errors")["error_details"]
        assert "OUTGOING_WEBHOOKS_ALLOW_HTTP" in details["webhook_endpoint"]["url"][0]
        assert register_endpoint(client, "https://billing.example/hooks").status_code == 201


def test_http_is_accepted_when_allowed(client: FlaskClient) -> None:
    assert register_endpoint(client, "http://127.0.0.1:9/hooks").status_code == 201


# --- the feed -------------------------------------------------------------------------


def test_the_feed_lists_events_in_creation_order_after_a_given_one(client: FlaskClient) -> None:
    first = create_wallet(client, subscribed_customer(client), granted_credits="1")
    second = create_wallet(client, subscribed_customer(client))
    everything = get(client, "/events").json
    ids = [row["id"] for row in everything["events"]]  # type: ignore[index]
    assert everything["has_more"] is False  # type: ignore[index]
    mine = [
        row
        for row in everything["events"]  # type: ignore[index]
        if row["data"]["wallet"]["id"] in (first["wallet"]["id"], second["wallet"]["id"])
    ]
    assert [row["type"] for row in mine] == [
        "wallet.created",
        "wallet_transaction.created",
        "wallet.created",
    ]
    after_first = get(client, "/events", after=mine[0]["id"]).json["events"]  # type: ignore[index]
    assert [row["id"] for row in after_first] == ids[ids.index(mine[0]["id"]) + 1 :]
    page = get(client, "/events", after=mine[0]["id"], limit=1).json
    assert [row["id"] for row in page["events"]] == [mine[1]["id"]]  # type: ignore[index]
    assert page["has_more"] is True  # type: ignore[index]
    only_created = get(client, "/events", type="wallet.created").json["events"]  # type: ignore[index]
    assert {row["type"] for row in only_created} == {"wallet.created"}
    one = get(client, f"/events/{mine[1]['id']}").json
    assert one["event"] == mine[1]  # type: ignore[index]
    assert one["deliveries"] == []  # type: ignore[index]


@pytest.mark.parametrize(
    "query",
    [
        {"limit": 0},
        {"limit": 101},
        {"limit": "x"},
        {"type": "wallet.exploded"},
        {"after": "evt_nope"},
    ],
)
def test_bad_feed_queries_are_refused(client: FlaskClient, query: dict[str, Any]) -> None:
    assert_error(get(client, "/events", **query), 422, "validation_errors")


def test_an_unknown_event_is_not_found(client: FlaskClient) -> None:
    assert_error(get(client, "/events/evt_nope"), 404, "not_found")


def test_every_event_type_is_in_the_openapi_document(client: FlaskClient) -> None:
    document = get(client, "/openapi.json").json
    paths = document["paths"]  # type: ignore[index]
    for path in ("/api/v1/webhook_endpoints", "/api/v1/webhook_endpoints/{endpoint_id}",
                 "/api/v1/events", "/api/v1/events/{event_id}"):  # fmt: skip
        assert path in paths, sorted(paths)
    text = str(document)
    for event_type in EVENT_TYPES:
        assert event_type in text
