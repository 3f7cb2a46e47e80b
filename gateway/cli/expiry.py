"""`gateway expire-wallets`: the expiry sweep, for cron or by hand."""

from __future__ import annotations

import click
from flask.cli import with_appcontext

from gateway.db import get_db, utcnow
from gateway.settings import current_settings


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
    from gateway.providers import provider_if_configured

    result = expire_wallets(
        get_db(),
        now=utcnow(),
        batch_size=batch_size or current_settings().expiry_batch_size,
        provider=provider_if_configured(),
    )
    click.echo(f"expired {result.expired} wallet(s) in {result.batches} batch(es)")
