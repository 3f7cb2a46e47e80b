"""GET /api/v1/openapi.json: a valid OpenAPI 3 document covering every route and error."""

from __future__ import annotations

import re
from typing import Any

import pytest
from flask import Flask
from flask.testing import FlaskClient
from openapi_spec_validator import validate

from gateway.api.errors import STATUS_BY_CODE
from tests.conftest import AUTH

IGNORED_METHODS = {"HEAD", "OPTIONS"}


@pytest.fixture
def document(client: FlaskClient) -> dict[str, Any]:
    response = client.get("/api/v1/openapi.json", headers=AUTH)
    assert response.status_code == 200
    assert response.mimetype == "application/json"
    body = response.json
    assert isinstance(body, dict)
    return body


def openapi_path(rule: str) -> str:
    return re.sub(r"<(?:[a-z]+:)?([a-z_]+)>", r"{\1}", rule)


def documented_routes(app: Flask) -> list[tuple[str, str]]:
    """(path, method) of every Flask route under /api/v1 and the service endpoints."""
    routes = []
    for rule in app.url_map.iter_rules():
        if not (
            rule.rule.startswith("/api/v1") or rule.rule in ("/healthz", "/readyz", "/metrics")
        ):
            continue
        for method in sorted((rule.methods or set()) - IGNORED_METHODS):
            routes.append((openapi_path(rule.rule), method.lower()))
    return routes


def test_document_is_valid_openapi_3(document: dict[str, Any]) -> None:
    assert document["openapi"].startswith("3.")
    validate(document)


def test_document_needs_an_api_key(client: FlaskClient) -> None:
    assert client.get("/api/v1/openapi.json").status_code == 401


def test_every_route_is_documented(app: Flask, document: dict[str, Any]) -> None:
    routes = documented_routes(app)
    assert ("/api/v1/wallets/{wallet_id}", "delete") in routes  # the walk found the API
    assert ("/healthz", "get") in routes
    missing = [
        (path, method) for path, method in routes if method not in document["paths"].get(path, {})
    ]
    assert missing == []


def test_every_operation_documents_its_errors(app: Flask, document: dict[str, Any]) -> None:
    error_ref = {"$ref": "#/components/schemas/Error"}
    for path, method in documented_routes(app):
        operation = document["paths"][path][method]
        statuses = {int(status) for status in operation["responses"]}
        errors = {status for status in statuses if status >= 400}
        assert errors, (path, method)
        for status in errors:
            content = operation["responses"][str(status)]["content"]["application/json"]
            assert content["schema"] == error_ref, (path, method, status)
        if path.startswith("/api/v1"):
            assert 401 in statuses, (path, method)
            assert operation["security"] == [{"bearer": []}]
        if "requestBody" in operation:
            assert {400, 413, 415, 422} <= statuses, (path, method)
        if "{" in path and path != "/api/v1/openapi.json":
            assert 404 in statuses, (path, method)


def test_error_responses_name_their_codes(document: dict[str, Any]) -> None:
    create = document["paths"]["/api/v1/wallets"]["post"]["responses"]
    for code in (
        "no_active_subscription",
        "wallet_already_exists",
        "currency_mismatch",
        "validation_errors",
    ):
        description = create[str(STATUS_BY_CODE[code])]["description"]
        assert code in description
    assert "payment_provider_unavailable" in create["503"]["description"]
    terminate_update = document["paths"]["/api/v1/wallets/{wallet_id}"]["put"]["responses"]
    assert "wallet_is_terminated" in terminate_update["422"]["description"]
    ready = document["paths"]["/readyz"]["get"]["responses"]
    assert "not_ready" in ready["503"]["description"]


def test_schemas_come_from_the_marshmallow_schemas(document: dict[str, Any]) -> None:
    schemas = document["components"]["schemas"]
    assert set(schemas["Error"]["properties"]) == {
        "status",
        "error",
        "code",
        "message",
        "error_details",
    }
    wallet = next(
        schema
        for name, schema in schemas.items()
        if name.startswith("Wallet") and "credits_balance" in schema.get("properties", {})
    )
    assert wallet["properties"]["credits_balance"] == {"type": "string", "format": "decimal"}
    create_body = document["paths"]["/api/v1/wallets"]["post"]["requestBody"]
    assert create_body["required"] is True
    # Query parameters of the list endpoints are expanded from their schemas.
    names = {p["name"] for p in document["paths"]["/api/v1/wallets"]["get"]["parameters"]}
    assert {"page", "per_page", "status", "external_customer_id"} <= names
