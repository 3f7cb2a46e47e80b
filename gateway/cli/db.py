"""`gateway db …`: the database schema (Alembic migrations)."""

from __future__ import annotations

import sys

import click
from flask.cli import with_appcontext

from gateway.db import get_db


@click.group("db")
def db_group() -> None:
    """Database schema (Alembic migrations)."""


@db_group.command("upgrade")
@click.option("--revision", default="head", show_default=True)
@with_appcontext
def db_upgrade(revision: str) -> None:
    """Apply migrations up to REVISION."""
    from gateway import migrate

    with get_db().begin() as connection:
        migrate.upgrade(connection, revision)
    click.echo(f"database at {migrate.head_revision() if revision == 'head' else revision}")


@db_group.command("downgrade")
@click.argument("revision")
@with_appcontext
def db_downgrade(revision: str) -> None:
    """Revert migrations down to REVISION (`base` for an empty database)."""
    from gateway import migrate

    with get_db().begin() as connection:
        migrate.downgrade(connection, revision)


@db_group.command("current")
@with_appcontext
def db_current() -> None:
    """Print the schema revision of the database and the code's head."""
    from gateway import migrate

    with get_db().begin() as connection:
        current = migrate.current_revision(connection)
    click.echo(f"database: {current}  head: {migrate.head_revision()}")
    if current != migrate.head_revision():
        sys.exit(1)
