"""Pooled PostgreSQL connections: pinged only after they sat idle, never on every request."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from sqlalchemy import Engine
from sqlalchemy.exc import OperationalError

from gateway import db
from gateway.db import build_engine
from tests.support.config import postgres_url

pytestmark = pytest.mark.postgres


@pytest.fixture
def one_connection_pool(postgres_engine: Engine) -> Iterator[Engine]:
    engine = build_engine(postgres_url(), pool_size=1, max_overflow=0)
    yield engine
    engine.dispose()


def _backend_pid(engine: Engine) -> int:
    with engine.connect() as conn:
        pid = conn.exec_driver_sql("SELECT pg_backend_pid()").scalar_one()
    return int(pid)


def _kill(postgres_engine: Engine, pid: int) -> None:
    with postgres_engine.connect() as admin:
        assert admin.exec_driver_sql(f"SELECT pg_terminate_backend({pid})").scalar_one()
        admin.commit()


def test_a_connection_idle_past_the_threshold_is_pinged_and_replaced_when_dead(
    postgres_engine: Engine, one_connection_pool: Engine, monkeypatch: pytest.MonkeyPatch
) -> None:
    first = _backend_pid(one_connection_pool)
    _kill(postgres_engine, first)
    monkeypatch.setattr(db, "PING_AFTER_IDLE_SECONDS", 0.0)  # it has been idle long enough

    second = _backend_pid(one_connection_pool)  # the ping failed; a new connection served

    assert second != first


def test_a_connection_in_steady_use_is_not_pinged(
    postgres_engine: Engine, one_connection_pool: Engine, monkeypatch: pytest.MonkeyPatch
) -> None:
    first = _backend_pid(one_connection_pool)
    _kill(postgres_engine, first)
    monkeypatch.setattr(db, "PING_AFTER_IDLE_SECONDS", 3600.0)

    # No round trip before use: the dead connection is only found by the statement,
    # which fails (its transaction with it); the pool then replaces the connection.
    with pytest.raises(OperationalError):
        _backend_pid(one_connection_pool)
    assert _backend_pid(one_connection_pool) != first
