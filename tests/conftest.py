"""Fixtures: every database test runs on SQLite and on PostgreSQL.

The schema is built once per backend by the real Alembic migrations; each test then
runs inside a transaction that is rolled back at its end (the app's sessions join it
through savepoints), so tests are isolated and fast. Tests that need real commits
from several threads use `committed_app` (PostgreSQL only), which truncates after.

PostgreSQL comes from GATEWAY_TEST_POSTGRES_URL (default: the local server). When it
cannot be reached the PostgreSQL half is skipped locally, and fails under CI=true.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from flask import Flask
from flask.testing import FlaskClient, FlaskCliRunner
from sqlalchemy import Engine, create_engine, text
from sqlalchemy.engine import Connection, make_url
from sqlalchemy.orm import Session

from gateway import create_app, migrate
from gateway.db import Base, build_engine

DEFAULT_POSTGRES_URL = "postgresql+psycopg://postgres@127.0.0.1:5432/gateway_test"
IN_CI = os.environ.get("CI", "").lower() in ("1", "true", "yes")

TEST_SETTINGS: dict[str, Any] = {
    "GATEWAY_API_KEYS": "test-key-1,test-key-2",
    "STRIPE_SECRET_KEY": "sk_test_gateway",
    "STRIPE_WEBHOOK_SECRETS": "whsec_test_primary,whsec_test_secondary",
    "STRIPE_API_BASE": "",
    "STRIPE_TAX_MODE": "none",
    "STRIPE_TAX_RATE_IDS": "",
    "STRIPE_COLLECTION_METHOD": "charge_automatically",
    "STRIPE_MAX_NETWORK_RETRIES": 0,
    "SECRET_KEY": "test-secret-key-for-console-sessions",
    # Test receivers listen on loopback over plain http.
    "OUTGOING_WEBHOOKS_ALLOW_HTTP": True,
}
API_KEY = "test-key-1"
AUTH = {"Authorization": f"Bearer {API_KEY}"}


def _worker_suffix() -> str:
    worker = os.environ.get("PYTEST_XDIST_WORKER")
    return f"_{worker}" if worker else ""


def postgres_url() -> str:
    url = make_url(os.environ.get("GATEWAY_TEST_POSTGRES_URL", DEFAULT_POSTGRES_URL))
    return url.set(database=f"{url.database}{_worker_suffix()}").render_as_string(
        hide_password=False
    )


def _ensure_postgres_database(url: str) -> None:
    target = make_url(url)
    admin = create_engine(target.set(database="postgres"), isolation_level="AUTOCOMMIT")
    try:
        with admin.connect() as conn:
            exists = conn.execute(
                text("SELECT 1 FROM pg_database WHERE datname = :name"),
                {"name": target.database},
            ).first()
            if not exists:
                conn.exec_driver_sql(f'CREATE DATABASE "{target.database}"')
    finally:
        admin.dispose()


def _fresh_schema(engine: Engine) -> None:
    """Drop whatever a previous run left, then migrate to head with Alembic."""
    with engine.begin() as conn:
        if conn.dialect.name == "postgresql":
            conn.exec_driver_sql("DROP SCHEMA public CASCADE; CREATE SCHEMA public")
        else:
            Base.metadata.drop_all(conn)
            conn.exec_driver_sql("DROP TABLE IF EXISTS alembic_version")
    with engine.begin() as conn:
        migrate.upgrade(conn)


@pytest.fixture(scope="session")
def sqlite_engine(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Engine]:
    path: Path = tmp_path_factory.mktemp("db") / "gateway.sqlite3"
    engine = build_engine(f"sqlite:///{path}")
    _fresh_schema(engine)
    yield engine
    engine.dispose()


@pytest.fixture(scope="session")
def postgres_engine() -> Iterator[Engine]:
    url = postgres_url()
    try:
        _ensure_postgres_database(url)
        engine = build_engine(url, pool_size=20, max_overflow=20)
        _fresh_schema(engine)
    except Exception as exc:
        if IN_CI:
            pytest.fail(f"PostgreSQL is required in CI and unreachable at {url}: {exc}")
        pytest.skip(f"PostgreSQL unreachable at {url}: {exc}")
    yield engine
    engine.dispose()


@pytest.fixture(params=["sqlite", "postgres"])
def engine(request: pytest.FixtureRequest) -> Engine:
    """The backend under test: every test using it runs once per database."""
    return request.getfixturevalue(f"{request.param}_engine")  # type: ignore[no-any-return]


@pytest.fixture
def connection(engine: Engine) -> Iterator[Connection]:
    conn = engine.connect()
    outer = conn.begin()
    try:
        yield conn
    finally:
        outer.rollback()
        conn.close()


@pytest.fixture
def settings_overrides() -> dict[str, Any]:
    """Override in a test module (or with `pytest.mark.parametrize`) to change config."""
    return {}


@pytest.fixture
def app(connection: Connection, settings_overrides: dict[str, Any]) -> Flask:
    return create_app({**TEST_SETTINGS, **settings_overrides}, bind=connection)


@pytest.fixture
def client(app: Flask) -> FlaskClient:
    return app.test_client()


@pytest.fixture
def runner(app: Flask) -> FlaskCliRunner:
    return app.test_cli_runner()


@pytest.fixture
def db_session(connection: Connection) -> Iterator[Session]:
    """A session on the test's connection, for arranging and inspecting rows."""
    session = Session(bind=connection, join_transaction_mode="create_savepoint")
    try:
        yield session
    finally:
        session.close()


def truncate_all(engine: Engine) -> None:
    tables = [table.name for table in reversed(Base.metadata.sorted_tables)]
    with engine.begin() as conn:
        if conn.dialect.name == "postgresql":
            conn.exec_driver_sql(f"TRUNCATE {', '.join(tables)} RESTART IDENTITY CASCADE")
        else:
            for name in tables:
                conn.exec_driver_sql(f"DELETE FROM {name}")


@pytest.fixture
def committed_app(postgres_engine: Engine, settings_overrides: dict[str, Any]) -> Iterator[Flask]:
    """An app on PostgreSQL whose transactions really commit (for tests with threads)."""
    truncate_all(postgres_engine)
    app = create_app({**TEST_SETTINGS, **settings_overrides}, bind=postgres_engine)
    yield app
    truncate_all(postgres_engine)
