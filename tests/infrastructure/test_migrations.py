"""Alembic: the migration builds exactly the models' schema, both ways, on both databases."""

from __future__ import annotations

from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from flask.testing import FlaskCliRunner
from sqlalchemy import inspect
from sqlalchemy.engine import Connection

from gateway import migrate
from gateway.db import Base

TABLES = {
    "customers",
    "subscriptions",
    "wallets",
    "wallet_transactions",
    "purchases",
    "credit_applications",
    "idempotency_keys",
    "webhook_events",
    "recurring_transaction_rules",
}


def tables(connection: Connection) -> set[str]:
    return set(inspect(connection).get_table_names()) - {"alembic_version"}


def test_autogenerate_finds_no_difference_between_models_and_migration(
    connection: Connection,
) -> None:
    context = MigrationContext.configure(
        connection, opts={"compare_type": True, "compare_server_default": True}
    )
    assert compare_metadata(context, Base.metadata) == []


def test_every_model_table_is_migrated(connection: Connection) -> None:
    assert set(Base.metadata.tables) >= TABLES
    assert tables(connection) == set(Base.metadata.tables)


def test_downgrade_to_base_and_upgrade_again(connection: Connection) -> None:
    head = migrate.head_revision()
    assert head is not None
    assert migrate.current_revision(connection) == head
    migrate.downgrade(connection, "base")
    assert tables(connection) == set()
    assert migrate.current_revision(connection) is None
    migrate.upgrade(connection)
    assert migrate.current_revision(connection) == head
    assert tables(connection) == set(Base.metadata.tables)
    context = MigrationContext.configure(connection, opts={"compare_type": True})
    assert compare_metadata(context, Base.metadata) == []


def test_gateway_db_upgrade_command(runner: FlaskCliRunner, connection: Connection) -> None:
    migrate.downgrade(connection, "base")
    behind = runner.invoke(args=["db", "current"])
    assert behind.exit_code == 1
    assert f"database: None  head: {migrate.head_revision()}" in behind.output

    result = runner.invoke(args=["db", "upgrade"])
    assert result.exit_code == 0, result.output
    assert f"database at {migrate.head_revision()}" in result.output
    assert tables(connection) == set(Base.metadata.tables)
    current = runner.invoke(args=["db", "current"])
    assert current.exit_code == 0

    again = runner.invoke(args=["db", "upgrade"])  # already at head: nothing to do
    assert again.exit_code == 0, again.output


def test_gateway_db_downgrade_command(runner: FlaskCliRunner, connection: Connection) -> None:
    result = runner.invoke(args=["db", "downgrade", "base"])
    assert result.exit_code == 0, result.output
    assert tables(connection) == set()
