"""The `gateway` command: Flask's CLI group plus the operator commands.

Each command group lives in its own module of this package; `register_commands`
is the one list of them.
"""

from __future__ import annotations

import click
from flask import Flask
from flask.cli import FlaskGroup


def _create_app() -> Flask:
    from gateway import create_app

    return create_app()


@click.group(cls=FlaskGroup, create_app=_create_app, add_version_option=False)
def main() -> None:
    """Credit gateway: prepaid credits, wallets and their ledger."""


def register_commands(app: Flask) -> None:
    from gateway.cli.db import db_group
    from gateway.cli.events import events_group
    from gateway.cli.expiry import expire_wallets_command
    from gateway.cli.idempotency import idempotency_group
    from gateway.cli.operators import operators_group
    from gateway.cli.reconcile import reconcile_command
    from gateway.cli.webhooks import webhooks_group
    from gateway.cli.worker import worker_command

    for command in (
        db_group,
        expire_wallets_command,
        idempotency_group,
        webhooks_group,
        reconcile_command,
        operators_group,
        worker_command,
        events_group,
    ):
        app.cli.add_command(command)
