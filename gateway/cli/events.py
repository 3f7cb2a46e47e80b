"""`gateway events …`: operate on outgoing events."""

from __future__ import annotations

import sys

import click
from flask.cli import with_appcontext

from gateway.db import get_db, unit_of_work, utcnow


@click.group("events")
def events_group() -> None:
    """Outgoing events (webhooks to the billing core)."""


@events_group.command("redeliver")
@click.argument("event_id", required=False)
@click.option("--failed", is_flag=True, help="Queue again every delivery that ended failed.")
@with_appcontext
def redeliver_command(event_id: str | None, failed: bool) -> None:
    """Send EVENT_ID again to the endpoints it went to, or --failed deliveries.

    The deliveries become pending, due now, with a fresh retry schedule; the worker
    sends them (same event, same `webhook-id`). Exit status 2 for an unknown event.
    """
    from gateway import delivery

    if (event_id is None) == (not failed):
        raise click.UsageError("give either EVENT_ID or --failed")
    with unit_of_work(get_db()) as session:
        if event_id is not None:
            if not delivery.event_exists(session, event_id):
                click.echo(f"event {event_id} does not exist", err=True)
                sys.exit(2)
            queued = delivery.redeliver(session, event_id, utcnow())
        else:
            queued = delivery.redeliver_failed(session, utcnow())
    click.echo(f"queued {queued} delivery(ies) again")
