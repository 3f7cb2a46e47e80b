"""The `gateway` command: Flask's CLI group plus the operator commands."""

from __future__ import annotations

import sys

import click
from flask import Flask
from flask.cli import FlaskGroup, with_appcontext

from gateway.db import get_db, utcnow
from gateway.idempotency_cli import idempotency_group
from gateway.settings import current_settings


def _create_app() -> Flask:
    from gateway import create_app

    return create_app()


@click.group(cls=FlaskGroup, create_app=_create_app, add_version_option=False)
def main() -> None:
    """Credit gateway: prepaid credits, wallets and their ledger."""


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


@click.command("expire-wallets")
@click.option(
    "--batch-size",
    type=click.IntRange(1, 100_000),
    default=None,
    help="Wallets per transaction (default: EXPIRY_BATCH_SIZE).",
)
@with_appcontext
def expire_wallets_command(batch_size: int | None) -> None:
    """Terminate every wallet past its expiration, voiding its credits.

    Batches commit one by one and skip rows another host is sweeping, so the command
    can run from cron on several hosts at once; running it again changes nothing.
    """
    from gateway.expiry import expire_wallets

    result = expire_wallets(
        get_db(), now=utcnow(), batch_size=batch_size or current_settings().expiry_batch_size
    )
    click.echo(f"expired {result.expired} wallet(s) in {result.batches} batch(es)")


def register_commands(app: Flask) -> None:
    app.cli.add_command(db_group)
    app.cli.add_command(expire_wallets_command)
    app.cli.add_command(idempotency_group)
    from gateway.webhooks_cli import webhooks_group

    app.cli.add_command(webhooks_group)
    from gateway.reconcile_cli import reconcile_command

    app.cli.add_command(reconcile_command)
