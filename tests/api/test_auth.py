"""Bearer API keys on every /api/v1 endpoint: several accepted, anything else 401."""

from __future__ import annotations

import re
from typing import Any

import pytest
from flask import Flask
from flask.testing import FlaskClient
from werkzeug.test import TestResponse

from gateway.api.framework import OPERATIONS
from tests.support.api import assert_error, unique


def api_operations() -> list[tuple[str, str]]:
    """(method, concrete path) of every authenticated operation, path args filled in."""
    return [
        (op.method, re.sub(r"<(?:[a-z]+:)?([a-z_]+)>", "x", op.rule))
        for op in OPERATIONS
        if op.rule.startswith("/api/v1")
    ]


def call(client: FlaskClient, method: str, path: str, headers: dict[str, str]) -> TestResponse:
    kwargs: dict[str, Any] = {"headers": headers}
    if method in ("POST", "PUT"):
        kwargs["json"] = {}
    return client.open(path, method=method, **kwargs)


def assert_unauthorized(response: TestResponse) -> None:
    body = assert_error(response, 401, "unauthorized")
    assert body["message"]
    assert response.headers["WWW-Authenticate"].startswith("Bearer")


@pytest.mark.parametrize(
    "headers",
    [
        {},
        {"Authorization": ""},
        {"Authorization": "Bearer"},
        {"Authorization": "Bearer "},
        {"Authorization": "Basic dGVzdC1rZXktMTo="},
        {"Authorization": "Token test-key-1"},
        {"Authorization": "test-key-1"},
        {"Authorization": "Bearer test-key-3"},
        {"Authorization": "Bearer test-key-1x"},
        {"Authorization": "Bearer test-key-"},
        {"Authorization": "Bearer TEST-KEY-1"},
        {"Authorization": "Bearer test-key-1,test-key-2"},
        {"Authorization": "Bearer \u00e9t\u00e9"},
        {"X-Api-Key": "test-key-1"},
    ],
    ids=repr,
)
def test_requests_without_a_valid_key_are_401(client: FlaskClient, headers: dict[str, str]) -> None:
    for method, path in api_operations():
        assert_unauthorized(call(client, method, path, headers))


def test_refusal_does_not_run_the_endpoint(client: FlaskClient) -> None:
    external_id = unique("cust")
    response = client.post(
        "/api/v1/customers",
        json={"customer": {"external_id": external_id, "currency": "USD"}},
        headers={"Authorization": "Bearer wrong"},
    )
    assert_unauthorized(response)
    found = client.get(
        f"/api/v1/customers/{external_id}", headers={"Authorization": "Bearer test-key-1"}
    )
    assert_error(found, 404, "not_found")


@pytest.mark.parametrize("key", ["test-key-1", "test-key-2"])
def test_every_configured_key_is_accepted(client: FlaskClient, key: str) -> None:
    for scheme in ("Bearer", "bearer"):
        response = client.get("/api/v1/wallets", headers={"Authorization": f"{scheme} {key}"})
        assert response.status_code == 200, response.json


def test_health_endpoints_need_no_key(client: FlaskClient) -> None:
    assert client.get("/healthz").status_code == 200
    assert client.get("/metrics").status_code == 200


@pytest.mark.settings(GATEWAY_API_KEYS="")
class TestWithoutConfiguredKeys:
    def test_every_call_is_401(self, app: Flask, client: FlaskClient) -> None:
        assert app.extensions["settings"].api_keys == ()
        for method, path in api_operations():
            for headers in (
                {},
                {"Authorization": "Bearer test-key-1"},
                {"Authorization": "Bearer "},
            ):
                assert_unauthorized(call(client, method, path, headers))


@pytest.mark.settings(GATEWAY_API_KEYS=" new-key , old-key ,, ")
class TestKeyRotation:
    def test_keys_are_trimmed_and_both_work(self, client: FlaskClient) -> None:
        for key in ("new-key", "old-key"):
            response = client.get("/api/v1/wallets", headers={"Authorization": f"Bearer {key}"})
            assert response.status_code == 200
        for key in ("", " new-key", "test-key-1"):
            response = client.get("/api/v1/wallets", headers={"Authorization": f"Bearer {key}x"})
            assert_unauthorized(response)


@pytest.mark.parametrize("presented", ["k", "test-key-", "x" * 500, "test-key-2"])
def test_keys_are_compared_as_digests_of_one_length(
    client: FlaskClient, monkeypatch: pytest.MonkeyPatch, presented: str
) -> None:
    """Issue 12 #6: `compare_digest` on the raw keys returns at once when the lengths
    differ, so timing told a caller the configured key's length. Only fixed-length
    digests are compared, each configured key every time."""
    import hmac

    compared: list[tuple[int, int]] = []
    real = hmac.compare_digest

    def recording(a: bytes, b: bytes) -> bool:
        compared.append((len(a), len(b)))
        return real(a, b)

    monkeypatch.setattr(hmac, "compare_digest", recording)

    client.get("/api/v1/wallets", headers={"Authorization": f"Bearer {presented}"})

    assert compared, "the presented key was compared"
    assert set(compared) == {(32, 32)}
