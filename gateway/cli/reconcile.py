"""`gateway reconcile`: run `gateway.reconcile` and show its report to a person or a machine.

Exit status: 0 all consistent, 1 something was found (repaired, reported or failed to
repair), 2 the run could not be made (no database, Stripe unreachable or not set up).
"""

from __future__ import annotations

import json
import re
import sys
from datetime import UTC, datetime, timedelta
from typing import Any, TextIO

import click
from flask.cli import with_appcontext
from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    SpinnerColumn,
    TaskID,
    TextColumn,
    TimeElapsedColumn,
)
from rich.table import Table
from sqlalchemy.exc import SQLAlchemyError

from gateway.api.auth import principal_of
from gateway.db import get_db, utcnow
from gateway.providers import get_provider
from gateway.providers.base import ProviderNotConfigured
from gateway.reconcile import (
    FindingAction,
    ProgressSink,
    ReconcileAborted,
    ReconcileReport,
    reconcile,
)
from gateway.settings import current_settings

_DURATION = re.compile(r"(\d+)\s*([mhdw])")
_UNITS = {"m": "minutes", "h": "hours", "d": "days", "w": "weeks"}


def parse_since(value: str, now: datetime) -> datetime:
    """`--since`: an ISO date or date-time (UTC unless it has an offset), or a duration
    back from `now` (`30m`, `12h`, `7d`, `2w`)."""
    text = value.strip().lower()
    duration = _DURATION.fullmatch(text)
    if duration is not None:
        amount, unit = int(duration.group(1)), duration.group(2)
        return now - timedelta(**{_UNITS[unit]: amount})
    try:
        parsed = datetime.fromisoformat(value.strip())
    except ValueError as exc:
        raise ValueError(
            f"{value!r} is neither an ISO date (2026-11-01, 2026-11-01T12:00Z) "
            "nor a duration (30m, 12h, 7d, 2w)"
        ) from exc
    parsed = parsed.replace(tzinfo=UTC) if parsed.tzinfo is None else parsed.astimezone(UTC)
    if parsed > now:
        raise ValueError(f"{value!r} is in the future")
    return parsed


def _since_option(_ctx: click.Context, param: click.Parameter, value: str | None) -> Any:
    if value is None:
        return None
    try:
        return parse_since(value, utcnow())
    except ValueError as exc:
        raise click.BadParameter(str(exc), param=param) from exc


@click.command("reconcile")
@click.option(
    "--dry-run",
    is_flag=True,
    help="Read everything, change nothing (no database write, no Stripe write); "
    "show what a real run would repair.",
)
@click.option(
    "--since",
    metavar="DATE|DURATION",
    callback=_since_option,
    help="Only purchases and Stripe invoices created since then: an ISO date or "
    "date-time (UTC unless it has an offset) or a duration back from now (30m, 12h, "
    "7d, 2w). Default: the last 30 days, or back to the oldest unsettled purchase.",
)
@click.option(
    "--format",
    "output_format",
    type=click.Choice(["table", "json"]),
    default="table",
    show_default=True,
    help="A table for people, or JSON for machines (format in the README).",
)
@click.option(
    "--grace-minutes",
    type=click.IntRange(1),
    default=None,
    help="Fail stuck purchases no caller can claim and Stripe never finalized after this "
    "long (default: PURCHASE_STUCK_GRACE_MINUTES).",
)
@with_appcontext
def reconcile_command(
    dry_run: bool, since: datetime | None, output_format: str, grace_minutes: int | None
) -> None:
    """Compare purchases with Stripe; repair what lost webhooks and crashes left behind.

    Settles purchases whose invoice was paid, fails those voided or uncollectible,
    gives up on purchases stuck before their invoice was stored that no caller can
    claim any more (voiding an invoice Stripe finalized), voids invoices of ended
    wallets; reports unknown payments, settled purchases whose
    invoice is no longer paid or was refunded, refunds and reviews waiting for a person,
    and wallets whose balance differs from their ledger.

    Exit status: 0 all consistent, 1 something found or repaired, 2 could not run.
    """
    stdout = sys.stdout
    settings = current_settings()
    grace = timedelta(minutes=grace_minutes or settings.purchase_stuck_grace_minutes)
    # A purchase made with an API key no longer configured has no caller to claim it.
    principals = frozenset(principal_of(key) for key in settings.api_keys)
    try:
        provider = get_provider()
    except ProviderNotConfigured as exc:
        _cannot_run(output_format, f"{exc}: reconciliation reads Stripe")
        return
    bar = _progress_bar(stdout) if stdout.isatty() else None
    try:
        if bar is not None:
            with bar:
                report = reconcile(
                    get_db(),
                    provider,
                    dry_run=dry_run,
                    since=since,
                    grace=grace,
                    progress=_BarSink(bar),
                    api_principals=principals,
                )
        else:
            report = reconcile(
                get_db(),
                provider,
                dry_run=dry_run,
                since=since,
                grace=grace,
                api_principals=principals,
            )
    except ReconcileAborted as aborted:
        report = aborted.report
    except SQLAlchemyError as exc:
        _cannot_run(output_format, f"the database could not be used: {_first_line(exc)}")
        return
    _show(report, output_format, stdout)
    sys.exit(report.exit_code)


def _first_line(exc: SQLAlchemyError) -> str:
    original = getattr(exc, "orig", None) or exc
    lines = str(original).strip().splitlines()
    return f"{type(original).__name__}: {lines[0] if lines else ''}"


def _cannot_run(output_format: str, message: str) -> None:
    if output_format == "json":
        click.echo(
            json.dumps(
                {"format_version": 1, "status": "error", "exit_code": 2, "error": message},
                indent=2,
            )
        )
    click.echo(f"reconcile could not run: {message}", err=True)
    sys.exit(2)


def _show(report: ReconcileReport, output_format: str, stdout: TextIO) -> None:
    if output_format == "json":
        click.echo(json.dumps(report.to_dict(), indent=2))
        if report.error is not None:
            click.echo(f"reconcile stopped: {report.error}", err=True)
        return
    # Off a terminal (cron mail, a log file) rich would assume 80 columns and fold ids.
    console = Console(file=stdout, highlight=False, width=None if stdout.isatty() else 160)
    title = "Reconciliation" + (" (dry run: nothing was changed)" if report.dry_run else "")
    if report.findings:
        table = Table(title=title, title_justify="left")
        table.add_column("kind", no_wrap=True)
        table.add_column("action", no_wrap=True)
        table.add_column("purchase / wallet / invoice", no_wrap=True)
        table.add_column("detail", overflow="fold", ratio=1)
        for finding in report.findings:
            ids = [finding.purchase_id, finding.wallet_id, finding.invoice_id]
            table.add_row(
                finding.kind.value,
                f"[{_ACTION_STYLE[finding.action]}]{finding.action.value}[/]",
                "\n".join(value for value in ids if value),
                finding.detail,
            )
        console.print(table)
    else:
        console.print(title)
    console.print(
        f"window: since {report.window_start:%Y-%m-%d %H:%M} UTC; checked "
        f"{report.invoices_scanned} Stripe invoice(s), {report.refunds_scanned} refund(s), "
        f"{report.disputes_scanned} dispute(s), {report.purchases_checked} "
        f"purchase(s), {report.wallets_checked} wallet(s)"
    )
    counts = ", ".join(
        f"{report.count(action)} {action.value.replace('_', ' ')}"
        for action in FindingAction
        if report.count(action)
    )
    if report.error is not None:
        console.print(f"[bold red]stopped: {report.error}[/]" + (f" ({counts})" if counts else ""))
        click.echo(f"reconcile stopped: {report.error}", err=True)
    elif report.findings:
        console.print(f"[bold yellow]found {len(report.findings)}:[/] {counts}")
    else:
        console.print("[bold green]all consistent[/]")


_ACTION_STYLE = {
    FindingAction.REPAIRED: "green",
    FindingAction.WOULD_REPAIR: "cyan",
    FindingAction.REPORTED: "yellow",
    FindingAction.FAILED: "red",
}


def _progress_bar(stdout: TextIO) -> Progress:
    """A bar on the terminal, erased once the run ends: the report alone stays."""
    return Progress(
        SpinnerColumn(),
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        console=Console(file=stdout),
        transient=True,
    )


class _BarSink(ProgressSink):
    def __init__(self, progress: Progress) -> None:
        self._progress = progress
        self._task: TaskID | None = None
        self._done = 0

    def stage(self, description: str, total: int | None = None) -> None:
        if self._task is not None:  # the stage before is complete
            self._progress.update(self._task, total=self._done, completed=self._done)
        self._task = self._progress.add_task(description, total=total)
        self._done = 0

    def advance(self, count: int = 1) -> None:
        if self._task is not None:
            self._done += count
            self._progress.advance(self._task, count)
