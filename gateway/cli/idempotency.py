"""`gateway idempotency ...`: housekeeping of stored Idempotency-Key answers."""

from __future__ import annotations

import click
from flask.cli import with_appcontext

from gateway.api.idempotency import purge_expired
from gateway.db import get_db, unit_of_work, utcnow


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
    purged = 0
    while True:
        session = get_db().session()
        try:
            with unit_of_work(session):
                count = purge_expired(session, now, batch_size)
        finally:
            session.close()
        purged += count
        if count < batch_size:
            break
    click.echo(f"purged {purged} expired idempotency key(s)")
