"""`gateway webhooks …`: operate on stored Stripe events."""

from __future__ import annotations

import sys
from datetime import timedelta

import click
from flask.cli import with_appcontext

from gateway.db import get_db, utcnow
from gateway.errors import NotFound
from gateway.settings import current_settings
from gateway.webhooks import (
    PURGE_BATCH_SIZE,
    EventProcessingFailed,
    EventResult,
    purge_events,
    replay_event,
    replay_failed,
)


@click.group("webhooks")
def webhooks_group() -> None:
    """Stored Stripe webhook events."""


@webhooks_group.command("replay")
@click.argument("event_id", required=False)
@click.option(
    "--failed",
    is_flag=True,
    help="Replay every event whose processing failed, oldest first.",
)
@with_appcontext
def replay_command(event_id: str | None, failed: bool) -> None:
    """Process stored events again: EVENT_ID (whatever its status), or --failed.

    Processing is idempotent, so replaying an event that already took effect changes
    nothing. Exit status: 0 when every replayed event succeeded, 1 when one failed
    (its error is recorded on the event), 2 on a usage error or an unknown event.
    """
    if (event_id is None) == (not failed):
        raise click.UsageError("give either EVENT_ID or --failed")
    db, now = get_db(), utcnow()
    outcomes: list[EventResult | EventProcessingFailed] = []
    if event_id is not None:
        try:
            outcomes.append(replay_event(db, event_id, now))
        except NotFound as exc:
            click.echo(exc.message, err=True)
            sys.exit(2)
        except EventProcessingFailed as failure:
            outcomes.append(failure)
        _echo(outcomes[0])
    else:
        for outcome in replay_failed(db, now):
            outcomes.append(outcome)
            _echo(outcome)
    still_failing = sum(isinstance(outcome, EventProcessingFailed) for outcome in outcomes)
    if failed:
        click.echo(f"replayed {len(outcomes)} event(s), {still_failing} failed")
    sys.exit(1 if still_failing else 0)


@webhooks_group.command("purge")
@click.option(
    "--batch-size",
    type=click.IntRange(1, 100_000),
    default=PURGE_BATCH_SIZE,
    show_default=True,
    help="Events deleted per transaction.",
)
@with_appcontext
def purge_command(batch_size: int) -> None:
    """Delete stored events processed or ignored more than WEBHOOK_EVENT_RETENTION_DAYS
    ago (run it hourly, from cron or the worker).

    Failed and unfinished events are kept whatever their age, for `replay`. Short
    batches that skip rows another transaction holds: safe at any time, on several
    hosts at once.
    """
    days = current_settings().webhook_event_retention_days
    purged = purge_events(
        get_db(), now=utcnow(), retention=timedelta(days=days), batch_size=batch_size
    )
    click.echo(f"purged {purged} webhook event(s) older than {days} day(s)")


def _echo(outcome: EventResult | EventProcessingFailed) -> None:
    if isinstance(outcome, EventProcessingFailed):
        click.echo(f"{outcome.event_id}  failed  {outcome.error}")
        return
    line = f"{outcome.event_id}  {outcome.type}  {outcome.status.value}"
    if outcome.duplicate:
        line += "  (already done)"
    if outcome.detail:
        line += f"  {outcome.detail}"
    click.echo(line)
