"""Reconciliation: compare our purchases with Stripe and repair what a lost webhook or a
crash left behind, report what a person must look at. Returns a report; prints nothing.

One run, in this order, one module per step:

1. `invoices`: Stripe's invoices created in the window, read in pages and matched with
   the purchases they name: stuck creations adopted, voided or abandoned (never resumed:
   only the caller's retry does that), paid invoices settled, void or uncollectible ones
   failed, missed credit notes applied.
2. `refunds`: Stripe's refunds created in the window, each mapped to the invoice its
   payment paid: refunds the webhooks missed (or whose status moved on) are applied.
3. `disputes`: Stripe's disputes created in the window, and those recorded open here:
   openings and closings the webhooks missed are applied.
4. `unmatched`: purchases still `creating` or `open` that no listed invoice named.
5. `voids`: invoices of ended wallets still to void at Stripe.
6. `attention`: purchases waiting for a person (refund required, review required,
   credits spent before their money went back) and wallets whose balance differs from
   their ledger.

Steps 1-5 *plan* repairs (`repairs`); they never write. A real run executes each repair
as it is planned, through the code the webhooks use and under the same locks (wallet,
then purchase), in a short transaction of its own, so a webhook arriving at the same
moment cannot apply anything twice. A dry run (`dry_run=True`) keeps the plan and reports
each repair as `would_repair`: no database write, no Stripe write. Step 6 only reports.

Stripe is read a page at a time, so 10,000 pending purchases cost about a hundred list
calls, not 10,000 retrieves; single calls are made only to repair (void an invoice,
read a refunded invoice's credit notes) and for the rare purchase no
listed invoice matched. No transaction is open while Stripe is called.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Collection, Iterable
from datetime import datetime, timedelta

from gateway.db import Database, utcnow
from gateway.errors import PaymentProviderUnavailable
from gateway.providers.base import PaymentProvider, ProviderError
from gateway.reconcile.attention import check_ledger, report_attention, report_shortfalls
from gateway.reconcile.context import CLOCK_SLACK, DEFAULT_LOOKBACK, IN_FLIGHT, Run
from gateway.reconcile.disputes import scan_disputes
from gateway.reconcile.invoices import scan_invoices
from gateway.reconcile.refunds import scan_refunds
from gateway.reconcile.repairs import Repair, abandon_stuck_purchase
from gateway.reconcile.report import (
    Finding,
    FindingAction,
    FindingKind,
    ProgressSink,
    ReconcileAborted,
    ReconcileReport,
    Silent,
)
from gateway.reconcile.unmatched import scan_unmatched
from gateway.reconcile.voids import scan_void_pending

__all__ = [
    "CLOCK_SLACK",
    "DEFAULT_LOOKBACK",
    "IN_FLIGHT",
    "Finding",
    "FindingAction",
    "FindingKind",
    "ProgressSink",
    "ReconcileAborted",
    "ReconcileReport",
    "Repair",
    "abandon_stuck_purchase",
    "reconcile",
]

log = logging.getLogger(__name__)

# Steps that plan repairs, in order; then steps that only report.
PLANNING_STEPS: tuple[Callable[[Run], Iterable[Repair]], ...] = (
    scan_invoices,
    scan_refunds,
    scan_disputes,
    scan_unmatched,
    scan_void_pending,
)
REPORTING_STEPS: tuple[Callable[[Run], None], ...] = (
    report_attention,
    report_shortfalls,
    check_ledger,
)


def reconcile(
    db: Database,
    provider: PaymentProvider,
    *,
    dry_run: bool = False,
    since: datetime | None = None,
    grace: timedelta = timedelta(minutes=60),
    clock: Callable[[], datetime] = utcnow,
    progress: ProgressSink | None = None,
    api_principals: Collection[str] | None = None,
) -> ReconcileReport:
    """One reconciliation run (see the module doc). Raises `ReconcileAborted` when it
    cannot go on; what was repaired before that stays repaired.

    `api_principals`: the principals of the API keys configured now; a purchase made
    under a key no longer among them has no caller left to claim it (None: unchecked).
    """
    started_at = clock()
    report = ReconcileReport(
        started_at=started_at,
        window_start=started_at,
        since_requested=since is not None,
        dry_run=dry_run,
        grace=grace,
    )
    run = Run(
        db=db,
        provider=provider,
        since=since,
        grace=grace,
        clock=clock,
        progress=progress or Silent(),
        report=report,
        started_at=started_at,
        api_principals=None if api_principals is None else frozenset(api_principals),
    )
    plan: list[Repair] = []
    try:
        run.check_database()
        report.window_start = run.window_start()
        for planning in PLANNING_STEPS:
            for repair in planning(run):
                if dry_run:
                    plan.append(repair)
                    for finding in repair.planned():
                        run.add(finding)
                else:
                    repair.execute(run)
        for reporting in REPORTING_STEPS:
            reporting(run)
    except ProviderError as exc:
        _abort(run, f"Stripe: {exc}")
    except PaymentProviderUnavailable as exc:
        _abort(run, f"Stripe: {exc.message}")
    if dry_run:
        log.info("dry run: %d repair(s) planned, none made", len(plan))
    report.finished_at = clock()
    return report


def _abort(run: Run, message: str) -> None:
    log.error("reconciliation stopped: %s", message)
    run.report.error = message
    run.report.finished_at = run.clock()
    raise ReconcileAborted(run.report)
