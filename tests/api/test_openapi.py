"""GET /api/v1/openapi.json: a valid OpenAPI 3 document covering every route and error."""

from __future__ import annotations

import re
from typing import Any
from urllib.parse import quote

import pytest
from flask import Flask
from flask.testing import FlaskClient
from openapi_spec_validator import validate

from gateway.api.errors import STATUS_BY_CODE
from tests.support.config import AUTH

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
            shape, narrowed = content["schema"]["allOf"]
            assert shape == error_ref, (path, method, status)
            assert narrowed["properties"]["status"]["enum"] == [status]
            codes = narrowed["properties"]["code"]["enum"]
            assert {STATUS_BY_CODE[code] for code in codes} == {status}, (path, method)
            assert content["example"]["code"] in codes
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
    balance = wallet["properties"]["credits_balance"]
    assert balance["type"] == "string"
    assert balance["format"] == "decimal"
    assert re.fullmatch(balance["pattern"], "10.00000")
    assert not re.fullmatch(balance["pattern"], "-1.00000")
    assert set(wallet["required"]) == set(wallet["properties"])  # every answer field, always
    assert wallet["properties"]["status"]["enum"] == ["active", "terminated"]
    create = document["components"]["schemas"]["WalletCreate"]["properties"]
    text, number, null = create["paid_credits"]["anyOf"]
    assert re.fullmatch(text["pattern"], "0.00001")
    assert not re.fullmatch(text["pattern"], "0")
    assert not re.fullmatch(text["pattern"], "")
    assert not re.fullmatch(text["pattern"], "1000000000.00001")
    assert number == {"type": "number", "multipleOf": 0.00001, "exclusiveMinimum": 0,
                      "maximum": 1_000_000_000}  # fmt: skip
    assert null == {"type": "null"}
    create_body = document["paths"]["/api/v1/wallets"]["post"]["requestBody"]
    assert create_body["required"] is True
    # Query parameters of the list endpoints are expanded from their schemas.
    names = {p["name"] for p in document["paths"]["/api/v1/wallets"]["get"]["parameters"]}
    assert {"page", "per_page", "status", "external_customer_id"} <= names


# --- links: every link of the document leads, with real ids, to a success -----------


def _pointer(document: Any, pointer: str) -> Any:
    node = document
    for part in pointer.lstrip("/").split("/"):
        node = node[int(part)] if isinstance(node, list) else node[part]
    return node


def _resolve(expression: Any, answer: Any) -> Any:
    """A link's runtime expressions (`$response.body#/wallet/id`), nested ones included."""
    if isinstance(expression, str) and expression.startswith("$response.body#"):
        return _pointer(answer, expression.removeprefix("$response.body#"))
    if isinstance(expression, dict):
        return {key: _resolve(value, answer) for key, value in expression.items()}
    return expression


def test_every_link_leads_to_a_success_with_real_ids(
    client: FlaskClient, document: dict[str, Any]
) -> None:
    by_id = {
        operation["operationId"]: (path, method, operation)
        for path, operations in document["paths"].items()
        for method, operation in operations.items()
    }

    called: set[str] = set()

    def call(operation_id: str, path_args: dict[str, str], query: dict[str, str], body: Any) -> Any:
        path, method, operation = by_id[operation_id]
        url = path.format(**{name: quote(value, safe="") for name, value in path_args.items()})
        kwargs: dict[str, Any] = {"headers": AUTH, "query_string": query}
        if "requestBody" in operation:
            kwargs["json"] = body
        response = client.open(url, method=method.upper(), **kwargs)
        assert response.status_code < 300, (operation_id, path_args, body, response.json)
        called.add(operation_id)
        return operation, str(response.status_code), response.json

    start = by_id["upsert_customer"][2]["requestBody"]["content"]["application/json"]["example"]
    tasks: list[tuple[Any, dict[str, Any]]] = []  # (answer, link), DELETEs kept for last
    followed: set[tuple[str, str]] = set()

    def offer(operation: dict[str, Any], status: str, answer: Any) -> None:
        for name, link in operation["responses"][status].get("links", {}).items():
            if (operation["operationId"], name) not in followed:
                followed.add((operation["operationId"], name))
                tasks.append((answer, link))
        tasks.sort(key=lambda task: by_id[task[1]["operationId"]][1] == "delete")

    offer(*call("upsert_customer", {}, {}, start))
    while tasks:
        answer, link = tasks.pop(0)
        parameters = {
            key: _resolve(value, answer) for key, value in link.get("parameters", {}).items()
        }
        path_args = {k.removeprefix("path."): v for k, v in parameters.items() if k[:5] == "path."}
        query = {k.removeprefix("query."): v for k, v in parameters.items() if k[:6] == "query."}
        target = by_id[link["operationId"]][2]
        body = _resolve(link.get("requestBody"), answer)
        if body is None and "requestBody" in target:
            body = target["requestBody"]["content"]["application/json"]["example"]
        offer(
            *call(
                link["operationId"],
                path_args,
                query,
                body,
            )
        )
    linked = {
        link["operationId"]
        for operations in document["paths"].values()
        for operation in operations.values()
        for answer in operation["responses"].values()
        for link in answer.get("links", {}).values()
    }
    assert {"get_customer", "create_subscription", "create_wallet", "get_wallet",
            "update_wallet", "terminate_wallet", "top_up", "get_wallet_transaction",
            "list_wallet_transactions", "list_wallets", "apply_credits",
            "terminate_subscription"} <= linked  # fmt: skip
    assert linked <= called


def test_every_operation_has_an_example(document: dict[str, Any]) -> None:
    """A request example for every operation that takes input, valid by its own schema."""
    from jsonschema import Draft202012Validator

    for path, operations in document["paths"].items():
        for method, operation in operations.items():
            for parameter in operation.get("parameters", []):
                if parameter["in"] in ("path", "header") or parameter.get("required"):
                    assert parameter.get("example") is not None, (path, method, parameter)
            if "requestBody" in operation:
                content = operation["requestBody"]["content"]["application/json"]
                schema = {**content["schema"], "components": document["components"]}
                schema = {"$ref": "#/$defs/body", "$defs": {"body": content["schema"]},
                          "components": document["components"]}  # fmt: skip
                Draft202012Validator(schema).validate(content["example"])


def test_idempotency_and_subscription_refusals_are_documented(document: dict[str, Any]) -> None:
    """The 422s a schema-valid request can get are in the document with their codes."""
    for path in ("/api/v1/wallets", "/api/v1/wallet_transactions", "/api/v1/customers",
                 "/api/v1/subscriptions", "/api/v1/credit_applications"):  # fmt: skip
        unprocessable = document["paths"][path]["post"]["responses"]["422"]
        codes = unprocessable["content"]["application/json"]["schema"]["allOf"][1]
        assert "idempotency_key_reused" in codes["properties"]["code"]["enum"], path
    subscription = document["paths"]["/api/v1/subscriptions"]["post"]["responses"]["422"]
    assert "validation_errors" in subscription["description"]


def _enum(schema: dict[str, Any]) -> set[Any]:
    """The values a property allows, whether it lists them or is `anyOf` with null."""
    values = set(schema.get("enum", []))
    for option in schema.get("anyOf", []):
        values |= set(option.get("enum", []))
    return values


def test_money_going_back_is_in_the_document(document: dict[str, Any]) -> None:
    """The new transaction_status values, the invoice block's `returned_cents` and
    `dispute_status`, and its `refunded` status (contract section 7)."""
    schemas = document["components"]["schemas"]
    entry = next(
        schema
        for schema in schemas.values()
        if {"transaction_status", "invoice"} <= set(schema.get("properties", {}))
    )
    assert {"refunded", "disputed", "reinstated"} <= _enum(
        entry["properties"]["transaction_status"]
    )
    invoice = next(
        schema for schema in schemas.values() if "returned_cents" in schema.get("properties", {})
    )
    properties = invoice["properties"]
    assert properties["returned_cents"]["type"] == "integer"
    assert "refunded" in _enum(properties["status"])
    assert {"open", "won", "lost"} <= _enum(properties["dispute_status"])
    [listing] = [
        operation["get"]
        for path, operation in document["paths"].items()
        if path.endswith("/wallet_transactions") and "get" in operation
    ]
    [kind_filter] = [p for p in listing["parameters"] if p["name"] == "transaction_status"]
    assert "reinstated" in _enum(kind_filter["schema"])
