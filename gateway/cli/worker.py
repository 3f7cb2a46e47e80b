"""`gateway worker`: the long-running process beside the web server."""

from __future__ import annotations

import signal
from types import FrameType

import click
from flask.cli import with_appcontext

from gateway.db import get_db
from gateway.settings import current_settings


@click.command("worker")
@click.option("--once", is_flag=True, help="Do what is due now, then exit (cron, tests).")
@click.option(
    "--concurrency",
    type=click.IntRange(1, 256),
    default=None,
    help="Endpoints delivered to at once (default: OUTGOING_WEBHOOK_CONCURRENCY).",
)
@with_appcontext
def worker_command(once: bool, concurrency: int | None) -> None:
    """Deliver outgoing events and run the periodic duties (interval top-ups and the
    expiry sweep every minute, the invoices of automatic top-ups every 5 seconds,
    Idempotency-Key and event purges every hour).

    SIGTERM or Ctrl-C: the attempts in hand finish and are recorded, then it exits.
    Run as many as you like, on one host or several: they share the work.
    """
    from gateway.worker import Worker

    worker = Worker(get_db(), current_settings(), concurrency=concurrency)
    if once:
        summary = worker.run_once()
        click.echo(
            f"dispatched {summary.dispatched} event(s); delivered {summary.delivered}, "
            f"{summary.failed_attempts} failed attempt(s), {summary.gave_up} given up"
        )
        for name, line in summary.duties.items():
            click.echo(f"{name}: {line or 'nothing to do'}")
        return

    def stop(signum: int, _frame: FrameType | None) -> None:
        click.echo(f"{signal.Signals(signum).name}: finishing the attempts in hand", err=True)
        worker.request_stop()

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    worker.run_forever()
