"""Database plumbing: engine, sessions, the declarative base and shared column types.

PostgreSQL in production, SQLite as the embedded default. SQLite transactions start
with BEGIN IMMEDIATE so writers are serialised the way row locks serialise them on
PostgreSQL (SQLite has no FOR UPDATE).
"""

from __future__ import annotations

import secrets
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from decimal import ROUND_HALF_UP, Decimal
from typing import Any, TypeVar

from flask import Flask, current_app, g
from sqlalchemy import BigInteger, DateTime, Engine, MetaData, Numeric, Text, create_engine, event
from sqlalchemy.engine import Connection
from sqlalchemy.engine.interfaces import Dialect
from sqlalchemy.exc import DisconnectionError
from sqlalchemy.orm import DeclarativeBase, Session, sessionmaker
from sqlalchemy.pool import ConnectionPoolEntry, PoolProxiedConnection
from sqlalchemy.types import TypeDecorator, TypeEngine

NAMING_CONVENTION = {
    "ix": "ix_%(column_0_label)s",
    "uq": "uq_%(table_name)s_%(column_0_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}


class Base(DeclarativeBase):
    metadata = MetaData(naming_convention=NAMING_CONVENTION)


class UTCDateTime(TypeDecorator[datetime]):
    """Timezone-aware UTC datetimes on every backend (SQLite stores them naive)."""

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Any) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError("naive datetimes are not stored; use UTC-aware values")
        value = value.astimezone(UTC)
        return value.replace(tzinfo=None) if dialect.name == "sqlite" else value

    def process_result_value(self, value: datetime | None, dialect: Any) -> datetime | None:
        if value is None:
            return None
        return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


class ExactNumeric(TypeDecorator[Decimal]):
    """NUMERIC(precision, scale) that returns exactly the `Decimal` it was given, on
    every backend.

    PostgreSQL's NUMERIC is exact. SQLite has no decimal type: a NUMERIC column keeps
    a 64-bit float (15 significant digits), so 123456789012.12345 came back as
    ...12344. On SQLite this type stores an INTEGER count of 10**-scale units instead,
    so SQL comparisons and SUM() stay exact too (up to 9.2e18 units: 92 trillion
    credits at 5 places). Values are rounded to `scale` places, halves away from zero,
    as PostgreSQL does.
    """

    impl = Numeric
    cache_ok = True

    def __init__(self, precision: int, scale: int) -> None:
        super().__init__(precision=precision, scale=scale, asdecimal=True)
        self.scale = scale
        self._quantum = Decimal(1).scaleb(-scale)

    def load_dialect_impl(self, dialect: Dialect) -> TypeEngine[Any]:
        if dialect.name == "sqlite":
            return dialect.type_descriptor(BigInteger())
        return dialect.type_descriptor(self.impl_instance)

    def _exact(self, value: Any) -> Decimal:
        if isinstance(value, float):
            raise TypeError("binary floats are not stored as exact decimals")
        return Decimal(value).quantize(self._quantum, rounding=ROUND_HALF_UP)

    def process_bind_param(self, value: Any, dialect: Dialect) -> Any:
        if value is None:
            return None
        exact = self._exact(value)
        return int(exact.scaleb(self.scale)) if dialect.name == "sqlite" else exact

    def process_result_value(self, value: Any, dialect: Dialect) -> Decimal | None:
        if value is None:
            return None
        if dialect.name == "sqlite":
            return Decimal(int(value)).scaleb(-self.scale)
        return self._exact(value)


class WideExactNumeric(ExactNumeric):
    """`ExactNumeric` for values that may not fit 64 bits once scaled (the exact
    product of credits and a rate, 10 places): kept as canonical decimal text on
    SQLite. Exact to store and read back; not for arithmetic or ordering in SQL there.
    """

    cache_ok = True  # not inherited: without it no statement naming such a column is cached

    def load_dialect_impl(self, dialect: Dialect) -> TypeEngine[Any]:
        if dialect.name == "sqlite":
            return dialect.type_descriptor(Text())
        return dialect.type_descriptor(self.impl_instance)

    def process_bind_param(self, value: Any, dialect: Dialect) -> Any:
        if value is None:
            return None
        exact = self._exact(value)
        return f"{exact:f}" if dialect.name == "sqlite" else exact

    def process_result_value(self, value: Any, dialect: Dialect) -> Decimal | None:
        if value is None:
            return None
        return self._exact(Decimal(value) if isinstance(value, str) else value)


def utcnow() -> datetime:
    return datetime.now(UTC)


def new_id(prefix: str) -> str:
    """An opaque, time-ordered identifier: `prefix_` + 48-bit ms time + 80 random bits."""
    millis = time.time_ns() // 1_000_000
    return f"{prefix}_{millis:012x}{secrets.token_hex(10)}"


def build_engine(url: str, *, pool_size: int = 10, **kwargs: Any) -> Engine:
    """An engine for `url`, with SQLite made safe for several threads and writers.

    `pool_size` (the `GATEWAY_DB_POOL_SIZE` setting, for the app) is the server
    connections kept per process; SQLite keeps its own pool."""
    if url.startswith("sqlite"):
        engine = create_engine(
            url, connect_args={"check_same_thread": False, "timeout": 30}, **kwargs
        )

        @event.listens_for(engine, "connect")
        def _sqlite_connect(dbapi_connection: Any, _record: Any) -> None:
            # Let SQLAlchemy, not the sqlite3 module, decide when transactions begin.
            dbapi_connection.isolation_level = None
            cursor = dbapi_connection.cursor()
            cursor.execute("PRAGMA foreign_keys=ON")
            cursor.execute("PRAGMA busy_timeout=30000")
            if ":memory:" not in url and url not in ("sqlite://", "sqlite:///"):
                cursor.execute("PRAGMA journal_mode=WAL")
            cursor.close()

        @event.listens_for(engine, "begin")
        def _sqlite_begin(conn: Connection) -> None:
            conn.exec_driver_sql("BEGIN IMMEDIATE")

        return engine
    kwargs["pool_size"] = pool_size
    kwargs.setdefault("max_overflow", 10)
    _cache_long_statements()
    engine = create_engine(url, **kwargs)
    _ping_connections_after_idle(engine)
    return engine


# psycopg turns a statement's %(name)s placeholders into $n once per statement text,
# but remembers the result only for texts up to 4 KiB: longer ones are parsed again on
# every execution (about 5 % of a webhook delivery's CPU for the settlement statement,
# `transitions._settle_statement`). Its statements are built once, so caching them is
# safe.
MAX_CACHED_STATEMENT_LENGTH = 16384


def _cache_long_statements() -> None:
    from psycopg import _queries

    _queries.MAX_CACHED_STATEMENT_LENGTH = max(
        _queries.MAX_CACHED_STATEMENT_LENGTH, MAX_CACHED_STATEMENT_LENGTH
    )


# A pooled connection unused for this long is pinged before it is handed out (the
# server may have restarted or a proxy dropped it meanwhile); one in steady use is
# not, which spares every request a round trip. A connection that breaks in use is
# invalidated by SQLAlchemy and that request's transaction fails as a whole.
PING_AFTER_IDLE_SECONDS = 5.0


def _ping_connections_after_idle(engine: Engine) -> None:
    @event.listens_for(engine, "checkin")
    def _checked_in(_dbapi_connection: Any, record: ConnectionPoolEntry) -> None:
        record.info["idle_since"] = time.monotonic()

    @event.listens_for(engine, "checkout")
    def _checked_out(
        dbapi_connection: Any, record: ConnectionPoolEntry, _proxy: PoolProxiedConnection
    ) -> None:
        idle_since = record.info.get("idle_since")
        if idle_since is None or time.monotonic() - idle_since < PING_AFTER_IDLE_SECONDS:
            return
        try:
            engine.dialect.do_ping(dbapi_connection)
        except Exception as exc:
            # The pool discards this connection and checks out (or opens) another.
            raise DisconnectionError(f"a pooled connection failed its ping: {exc}") from exc


class Database:
    """The engine and session factory of one application."""

    def __init__(self, engine: Engine | Connection) -> None:
        self.engine = engine
        self.sessionmaker = sessionmaker(
            bind=engine,
            expire_on_commit=False,
            autoflush=True,
            join_transaction_mode="create_savepoint",
        )

    def session(self) -> Session:
        return self.sessionmaker()

    @contextmanager
    def begin(self) -> Iterator[Connection]:
        """A connection in a transaction (a savepoint when bound to a connection)."""
        if isinstance(self.engine, Connection):
            with self.engine.begin_nested():
                yield self.engine
        else:
            with self.engine.begin() as connection:
                yield connection

    def init_app(self, app: Flask) -> None:
        app.extensions["db"] = self
        app.teardown_appcontext(_close_session)


def get_db() -> Database:
    db: Database = current_app.extensions["db"]
    return db


def get_session() -> Session:
    """The session of the current request or CLI command (one per app context)."""
    if "db_session" not in g:
        g.db_session = get_db().session()
    session: Session = g.db_session
    return session


def _close_session(_exc: BaseException | None) -> None:
    session: Session | None = g.pop("db_session", None)
    if session is not None:
        session.close()


@contextmanager
def unit_of_work(source: Database | Session) -> Iterator[Session]:
    """One database transaction: committed on success, rolled back on any error.

    Given the `Database` (work outside a request: sweeps, the worker, commands), a new
    session that is closed at the end whatever happens. Given a `Session` (a request's,
    from `get_session`), that session, which its owner goes on using and closes.
    """
    session = source.session() if isinstance(source, Database) else source
    try:
        yield session
        session.commit()
    except BaseException:
        session.rollback()
        raise
    finally:
        if session is not source:
            session.close()


T = TypeVar("T")


def in_batches(
    db: Database, batch: Callable[[Session], T], size: int, *, handled: Callable[[T], int]
) -> Iterator[T]:
    """The sweeps' loop: `batch` runs in a unit of work of its own, again and again,
    until one handles (`handled(result)`) fewer than `size` rows. Yields each batch's
    result once its transaction has committed, so the caller can act on it (log it, call
    the provider) before the next batch starts, or stop early."""
    while True:
        with unit_of_work(db) as session:
            result = batch(session)
        yield result
        if handled(result) < size:
            return


def count_in_batches(db: Database, batch: Callable[[Session], int], size: int) -> int:
    """`in_batches` for a batch that returns how many rows it handled: the total."""
    return sum(in_batches(db, batch, size, handled=int))
