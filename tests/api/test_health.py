"""/healthz (process up), /readyz (database reachable, schema at head), /metrics."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from flask.testing import FlaskClient
from sqlalchemy.engine import Connection

from gateway import create_app, migrate
from gateway.db import build_engine
from tests.support.api import assert_error
from tests.support.config import AUTH, TEST_SETTINGS


def test_healthz(client: FlaskClient) -> None:
    response = client.get("/healthz")
    assert response.status_code == 200
    assert response.json == {"status": "ok"}


def test_readyz_at_head(client: FlaskClient) -> None:
    response = client.get("/readyz")
    assert response.status_code == 200
    assert response.json == {"status": "ok", "database": "ok", "schema": migrate.head_revision()}


def test_readyz_is_503_when_the_schema_is_behind(
    client: FlaskClient, connection: Connection
) -> None:
    migrate.downgrade(connection, "base")  # inside the test's transaction: rolled back after
    body = assert_error(client.get("/readyz"), 503, "not_ready")
    assert "gateway db upgrade" in body["message"]
    assert body["error_details"] == {
        "schema": [f"at no revision, expected {migrate.head_revision()}"]
    }
    # Liveness does not depend on the database.
    assert client.get("/healthz").status_code == 200


def test_readyz_is_503_on_an_empty_database(tmp_path: Path) -> None:
    engine = build_engine(f"sqlite:///{tmp_path / 'empty.sqlite3'}")
    try:
        client = create_app(dict(TEST_SETTINGS), bind=engine).test_client()
        assert_error(client.get("/readyz"), 503, "not_ready")
    finally:
        engine.dispose()


def test_readyz_is_503_when_the_database_is_unreachable() -> None:
    engine = build_engine(
        "postgresql+psycopg://nobody:secret-password@127.0.0.1:1/nowhere",
        connect_args={"connect_timeout": 2},
    )
    try:
        client = create_app(dict(TEST_SETTINGS), bind=engine).test_client()
        response = client.get("/readyz")
        body = assert_error(response, 503, "not_ready")
        assert body["error_details"] == {"database": ["unreachable"]}
        text = response.get_data(as_text=True)
        for leak in ("secret-password", "nobody", "127.0.0.1", "psycopg", "Traceback"):
            assert leak not in text
        assert client.get("/healthz").status_code == 200
    finally:
        engine.dispose()


def test_metrics_in_prometheus_text_format(client: FlaskClient) -> None:
    client.get("/healthz")
    client.get("/api/v1/wallets")  # 401: counted too
    response = client.get("/metrics")
    assert response.status_code == 200
    assert response.mimetype == "text/plain"
    text = response.get_data(as_text=True)
    assert "# TYPE gateway_http_requests_total counter" in text
    assert 'gateway_http_requests_total{endpoint="/healthz",method="GET",status="200"}' in text
    assert 'endpoint="/api/v1/wallets",method="GET",status="401"' in text
    assert "gateway_http_request_duration_seconds_bucket" in text


def test_unmatched_routes_share_one_metrics_label(client: FlaskClient) -> None:
    for path in ("/a", "/b/c", "/d/e/f"):
        client.get(path)
    text = client.get("/metrics").get_data(as_text=True)
    assert 'endpoint="unmatched"' in text
    assert 'endpoint="/b/c"' not in text


def _series(text: str, name: str) -> set[str]:
    return {line.split(" ")[0] for line in text.splitlines() if line.startswith(name + "{")}


def test_made_up_methods_share_one_metrics_label(client: FlaskClient) -> None:
    """Issue 12 #3: 40 made-up methods on /healthz added 680 series; now one label."""
    before = client.get("/metrics").get_data(as_text=True)
    for number in range(40):
        client.open("/healthz", method=f"MADEUP{number}")
    text = client.get("/metrics").get_data(as_text=True)

    assert "MADEUP" not in text
    assert 'endpoint="unmatched",method="other",status="405"' in text
    added = _series(text, "gateway_http_requests_total") - _series(
        before, "gateway_http_requests_total"
    )
    # At most the "other" series and the /metrics read itself.
    assert len(added) <= 2, added
    added_buckets = _series(text, "gateway_http_request_duration_seconds_bucket") - _series(
        before, "gateway_http_request_duration_seconds_bucket"
    )
    assert len(added_buckets) <= 2 * 12


class TestMetricsBehindAToken:
    @pytest.fixture
    def settings_overrides(self) -> dict[str, Any]:
        return {**TEST_SETTINGS, "METRICS_BEARER_TOKEN": "metrics-token-1"}

    @pytest.mark.parametrize(
        "authorization", [None, "Bearer wrong", "Bearer metrics-token-", "Basic bWV0cmljcw=="]
    )
    def test_refused_without_the_token(
        self, client: FlaskClient, authorization: str | None
    ) -> None:
        headers = {"Authorization": authorization} if authorization else {}
        response = client.get("/metrics", headers=headers)
        assert_error(response, 401, "unauthorized")
        assert response.headers["WWW-Authenticate"].startswith("Bearer")
        assert "gateway_http_requests_total" not in response.get_data(as_text=True)

    def test_served_with_the_token(self, client: FlaskClient) -> None:
        response = client.get("/metrics", headers={"Authorization": "Bearer metrics-token-1"})
        assert response.status_code == 200
        assert "gateway_http_requests_total" in response.get_data(as_text=True)

    def test_an_api_key_is_not_the_metrics_token(self, client: FlaskClient) -> None:
        assert client.get("/metrics", headers=AUTH).status_code == 401
        assert client.get("/healthz").status_code == 200  # the rest stays open
