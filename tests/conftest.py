"""Fixtures: every database test runs on SQLite and on PostgreSQL.

The schema is built once per backend by the real Alembic migrations; each test then
runs inside a transaction that is rolled back at its end (the app's sessions join it
through savepoints), so tests are isolated and fast. Tests that need real commits
from several threads use `committed_app` (PostgreSQL only), which truncates after.

PostgreSQL comes from GATEWAY_TEST_POSTGRES_URL (default: the local server). When it
cannot be reached the PostgreSQL half is skipped locally, and fails under CI=true.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import responses
from flask import Flask
from flask.testing import FlaskClient, FlaskCliRunner
from sqlalchemy import Engine, create_engine, text
from sqlalchemy.engine import Connection, make_url
from sqlalchemy.orm import Session

from gateway import create_app, migrate
from gateway.db import Base, build_engine
from gateway.providers.stripe.sandbox import StripeStub
from tests.support.config import IN_CI, TEST_SETTINGS, postgres_url
from tests.support.stripe import TAX_RATES


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
def settings_overrides(request: pytest.FixtureRequest) -> dict[str, Any]:
    """The configuration a test changes: `@pytest.mark.settings(NAME=value)` on the test,
    its class or its module (`pytestmark`; the closest wins), or, for values computed
    from other fixtures, this fixture overridden (or parametrized)."""
    changes: dict[str, Any] = {}
    for marker in reversed(list(request.node.iter_markers("settings"))):
        changes.update(marker.kwargs)
    return changes


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


@pytest.fixture
def stub() -> StripeStub:
    """Stripe's rules, in process (gateway/providers/stripe/sandbox.py)."""
    return StripeStub(tax_rates=TAX_RATES)


@pytest.fixture
def stripe_server() -> Iterator[StripeStub]:
    """The stub as a real HTTP server on 127.0.0.1 (its `url`), for tests over the wire."""
    with StripeStub(tax_rates=TAX_RATES) as server:
        yield server


@pytest.fixture
def stripe_mock() -> Iterator[responses.RequestsMock]:
    """Every request to Stripe stopped at the HTTP edge, and none answered: the test
    registers the answers (then, if it wants the rest answered, `stub.register`)."""
    with responses.RequestsMock(assert_all_requests_are_fired=False) as rsps:
        yield rsps


@pytest.fixture
def stripe_http(stripe_mock: responses.RequestsMock, stub: StripeStub) -> responses.RequestsMock:
    """Stripe's API at https://api.stripe.com, answered by the in-process stub."""
    stub.register(stripe_mock)
    return stripe_mock
