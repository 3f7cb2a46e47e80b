"""`gateway idempotency ...`: housekeeping of stored Idempotency-Key answers."""

from __future__ import annotations

import click
from flask.cli import with_appcontext

from gateway.api.idempotency import purge_expired
from gateway.db import count_in_batches, get_db, utcnow


@click.group("idempotency")
def idempotency_group() -> None:
    """Stored Idempotency-Key answers."""


@idempotency_group.command("purge")
@click.option(
    "--batch-size",
    type=click.IntRange(1, 100_000),
    default=1000,
    show_default=True,
    help="Keys deleted per transaction.",
)
@with_appcontext
def purge_command(batch_size: int) -> None:
    """Delete keys older than IDEMPOTENCY_KEY_TTL_HOURS (run it from cron, e.g. hourly).

    Expired keys are already treated as unused; this only reclaims their rows. Short
    batches skip rows another request holds, so it is safe to run at any time, on
    several hosts at once.
    """
    now = utcnow()
    purged = count_in_batches(
        get_db(), lambda session: purge_expired(session, now, batch_size), batch_size
    )
    click.echo(f"purged {purged} expired idempotency key(s)")
