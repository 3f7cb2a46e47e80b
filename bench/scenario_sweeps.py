"""Scenario 4, the batch commands at scale, each at two sizes to show memory stays flat.

`gateway expire-wallets` over N expired wallets (bulk-inserted, each with a granted
balance and its settled ledger entry, plus N/10 wallets that have not expired). The
baseline, in the same run: the same effect (a voided entry per wallet, the wallet
terminated at its expiration) as two set-based SQL statements, rolled back.

`gateway reconcile` over N open purchases whose finalized invoices are at the Stripe
stub (in this process, on loopback); a share of them paid at Stripe whose webhook was
lost, so reconcile settles those. The baseline, in the same run: reading every
invoice through the list API, 100 a page, by stripe-python alone in its own process
(bench/stripe_calls.py --list), the part of the work no implementation can skip.

Each command runs as a child process (`gateway ...` console script); its peak RSS comes
from wait4's rusage of that child alone. The floor is the RSS of `gateway db current`
(interpreter, libraries and the app, no work).
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import timedelta
from decimal import Decimal
from typing import Any
from urllib.parse import urlencode

import psycopg

from bench import seed
from bench.common import BIN, ROOT, bench_database_url, fresh_database, markdown_table
from bench.process import CommandRun, run_measured
from bench.report import ScenarioResult, Target, environment
from gateway.db import utcnow
from gateway.providers.stripe.sandbox import StripeStub

EXPIRE_TARGET_S = 60.0
EXPIRE_TARGET_SIZE = 100_000
RECONCILE_TARGET_S = 120.0
RECONCILE_TARGET_SIZE = 10_000
GRANTED = Decimal("100")


def floor_rss(database_url: str) -> float:
    """Peak RSS of the `gateway` command doing nothing but start (imports, app)."""
    run = run_measured([str(BIN / "gateway"), "db", "current"], {"DATABASE_URL": database_url})
    return run.peak_rss_mib


def _vacuum(database_url: str) -> None:
    with psycopg.connect(
        database_url.replace("postgresql+psycopg://", "postgresql://", 1), autocommit=True
    ) as conn:
        conn.execute("VACUUM ANALYZE")


# --- expire-wallets ------------------------------------------------------------------

EXPIRE_SQL = (
    """
    INSERT INTO wallet_transactions (id, wallet_id, transaction_type, transaction_status,
        status, credit_amount, amount, settled_at, created_at, created_by)
    SELECT 'wtx_v_' || id, id, 'outbound', 'voided', 'settled', credits_balance,
        credits_balance * rate_amount, expiration_at, expiration_at, 'system'
    FROM wallets
    WHERE status = 'active' AND expiration_at <= now() AND credits_balance > 0
    """,
    """
    UPDATE wallets SET status = 'terminated', credits_balance = 0,
        terminated_at = expiration_at, updated_at = expiration_at
    WHERE status = 'active' AND expiration_at <= now()
    """,
)


@dataclass
class ExpireRun:
    size: int
    command: CommandRun
    baseline_s: float
    check_ok: bool
    detail: str


def _expire_once(size: int) -> ExpireRun:
    database_url = bench_database_url()
    fresh_database(database_url)
    conn = seed.connect(database_url)
    now = utcnow()
    seed.insert_wallets(conn, size, tag="exp", granted=GRANTED, created_at=now - timedelta(days=60),
                        expiration_at=now - timedelta(days=1))  # fmt: skip
    seed.insert_wallets(conn, size // 10, tag="live", granted=GRANTED,
                        expiration_at=now + timedelta(days=30))  # fmt: skip
    seed.analyze(conn)
    with conn.transaction(force_rollback=True):
        started = time.perf_counter()
        for statement in EXPIRE_SQL:
            conn.execute(statement)
        baseline_s = time.perf_counter() - started
    _vacuum(database_url)  # the rolled-back rows must not slow the real run
    command = run_measured([str(BIN / "gateway"), "expire-wallets"], {"DATABASE_URL": database_url})
    row = conn.execute(
        """
        SELECT count(*) FILTER (WHERE id LIKE 'wal_exp_%%' AND status = 'terminated'
                                AND credits_balance = 0 AND terminated_at = expiration_at),
               count(*) FILTER (WHERE id LIKE 'wal_live_%%' AND status = 'active'
                                AND credits_balance = %s),
               (SELECT count(*) FROM wallet_transactions
                WHERE transaction_status = 'voided' AND credit_amount = %s)
        FROM wallets
        """,
        (GRANTED, GRANTED),
    ).fetchone()
    ended, live, voided = row if row else (0, 0, 0)
    report = seed.ledger_report(conn)
    conn.close()
    ok = (
        command.returncode == 0
        and ended == size
        and live == size // 10
        and voided == size
        and report.ok
    )
    detail = (
        f"{ended}/{size} ended with one voided entry each ({voided}), "
        f"{live}/{size // 10} unexpired untouched, {report.balance_mismatches} balance "
        "mismatches"
    )
    return ExpireRun(size, command, baseline_s, ok, detail)


def run_expire(*, sizes: list[int]) -> ScenarioResult:
    runs = [_expire_once(size) for size in sorted(sizes)]
    floor = floor_rss(bench_database_url())
    rows = [
        [
            f"{run.size:,}",
            f"{run.command.elapsed_s:.1f}",
            f"{run.size / run.command.elapsed_s:,.0f}",
            f"{run.baseline_s:.1f}",
            f"{run.command.elapsed_s / run.baseline_s:.1f}x",
            f"{run.command.peak_rss_mib:.0f}",
            run.command.output.strip(),
            ("OK: " if run.check_ok else "FAILED: ") + run.detail,
        ]
        for run in runs
    ]
    table = markdown_table(
        ["expired wallets", "seconds", "wallets/s", "SQL baseline s", "vs baseline",
         "peak RSS MiB", "output", "check"],
        rows,
    )  # fmt: skip
    small, large = runs[0], runs[-1]
    growth = large.command.peak_rss_mib / small.command.peak_rss_mib
    target_run = next((run for run in runs if run.size >= EXPIRE_TARGET_SIZE), large)
    markdown = f"""\
`gateway expire-wallets` (batches of EXPIRY_BATCH_SIZE, default 500, one transaction
each). Each size on a fresh database; every wallet had {GRANTED} granted credits.
The SQL baseline does the same inserts and updates in two set-based statements
(no per-wallet hooks, no batching), in a transaction rolled back before the command
runs. The `gateway` command's floor (start-up, no work) is {floor:.0f} MiB.

{table}

- {target_run.size:,} wallets in **{target_run.command.elapsed_s:.1f} s**
  ({target_run.command.elapsed_s / target_run.baseline_s:.1f}x the set-based SQL).
- Peak RSS {small.command.peak_rss_mib:.0f} MiB at {small.size:,} and
  {large.command.peak_rss_mib:.0f} MiB at {large.size:,}: **{growth:.2f}x** for
  {large.size / small.size:.0f}x the wallets.
"""
    targets = [
        Target(
            f"expire-wallets over {target_run.size:,} wallets",
            f"< {EXPIRE_TARGET_S:.0f} s",
            f"{target_run.command.elapsed_s:.1f} s "
            f"({target_run.command.elapsed_s / target_run.baseline_s:.1f}x set-based SQL)",
            target_run.command.elapsed_s < EXPIRE_TARGET_S
            and target_run.size >= EXPIRE_TARGET_SIZE,
        ),
        *_memory_and_ledger_targets("expire-wallets", small, large, runs),
    ]
    return ScenarioResult(
        name="expire",
        title="4a. gateway expire-wallets",
        markdown=markdown,
        targets=targets,
        figures={
            "floor_rss_mib": floor,
            "runs": [
                {
                    "size": run.size,
                    "seconds": run.command.elapsed_s,
                    "baseline_seconds": run.baseline_s,
                    "peak_rss_mib": run.command.peak_rss_mib,
                    "ok": run.check_ok,
                }
                for run in runs
            ],
        },
        environment=environment(),
    )


# --- reconcile -----------------------------------------------------------------------


def _stub_post(stub: StripeStub, path: str, params: dict[str, str]) -> dict[str, Any]:
    status, _headers, body = stub.handle(
        "POST", path, "", {"Authorization": "Bearer sk_test_bench"}, urlencode(params).encode()
    )
    answer: dict[str, Any] = json.loads(body)
    if status != 200:
        raise RuntimeError(f"the stub refused {path}: {answer}")
    return answer


def stub_invoices(stub: StripeStub, purchase_ids: list[str]) -> list[seed.SeedInvoice]:
    """A finalized invoice per purchase, made through the stub's own request handling
    (in process: draft, line, finalize, as the service makes them)."""
    customer = _stub_post(stub, "/v1/customers", {"name": "bench"})["id"]
    cents = seed.purchase_amount_cents()
    made = []
    for purchase_id in purchase_ids:
        metadata = {"metadata[gateway_purchase_id]": purchase_id}
        draft = _stub_post(
            stub,
            "/v1/invoices",
            {"customer": customer, "currency": "usd", "auto_advance": "false",
             "discounts": "", "pending_invoice_items_behavior": "exclude", **metadata},
        )  # fmt: skip
        _stub_post(
            stub,
            "/v1/invoiceitems",
            {"customer": customer, "invoice": draft["id"], "amount": str(cents),
             "currency": "usd", "discountable": "false", **metadata},
        )  # fmt: skip
        final = _stub_post(stub, f"/v1/invoices/{draft['id']}/finalize", {"auto_advance": "true"})
        made.append(
            seed.SeedInvoice(final["id"], final["subtotal"], final["total"] - final["subtotal"],
                             final["total"])
        )  # fmt: skip
    stub.requests.clear()
    return made


@dataclass
class ReconcileRun:
    size: int
    paid: int
    command: CommandRun
    baseline_s: float
    summary: dict[str, Any]
    check_ok: bool
    detail: str


def _reconcile_once(size: int, paid_fraction: float) -> ReconcileRun:
    database_url = bench_database_url()
    fresh_database(database_url)
    conn = seed.connect(database_url)
    created = utcnow() - timedelta(hours=2)
    wallets = seed.insert_wallets(conn, size, tag="rec", created_at=created)
    purchase_ids = [f"pur_rec_{n:07d}" for n in range(size)]
    with StripeStub() as stub:
        invoices = stub_invoices(stub, purchase_ids)
        seed.insert_open_purchases(conn, wallets, invoices, tag="rec", purchase_ids=purchase_ids,
                                   created_at=created)  # fmt: skip
        seed.analyze(conn)
        paid = int(size * paid_fraction)
        for invoice in invoices[:paid]:
            stub.mark_paid(invoice.id)  # paid at Stripe; its webhook never arrived
        listed = subprocess.run(
            [sys.executable, "-m", "bench.stripe_calls", "--base", stub.url, "--list"],
            cwd=ROOT,
            check=True,
            capture_output=True,
            text=True,
        )
        baseline = json.loads(listed.stdout)
        command = run_measured(
            [str(BIN / "gateway"), "reconcile", "--format", "json"],
            {"DATABASE_URL": database_url, "STRIPE_SECRET_KEY": "sk_test_bench",
             "STRIPE_API_BASE": stub.url},
        )  # fmt: skip
        stripe_calls = len(stub.requests)
    try:
        document = json.loads(command.output)
    except json.JSONDecodeError:
        document = {"status": "unreadable", "summary": {}, "error": command.errors[-500:]}
    report = seed.ledger_report(conn, "pur_rec_%")
    credited = conn.execute(
        "SELECT count(*) FILTER (WHERE credits_balance = %s), count(*) FILTER "
        "(WHERE credits_balance = 0), count(*) FROM wallets",
        (seed.PURCHASE_CREDITS,),
    ).fetchone()
    conn.close()
    ten, zero, total = credited if credited else (0, 0, 0)
    summary = document.get("summary", {})
    ok = (
        command.returncode == 1  # findings: the lost payments it repaired
        and report.purchases_by_status.get("settled", 0) == paid
        and report.purchases_by_status.get("open", 0) == size - paid
        and report.ok
        and ten == paid
        and zero == total - paid
        and summary.get("repaired") == paid
    )
    detail = (
        f"{report.purchases_by_status.get('settled', 0)}/{paid} paid settled, "
        f"{report.purchases_by_status.get('open', 0)}/{size - paid} still open, "
        f"{ten} wallets credited 10 once, {report.balance_mismatches} balance mismatches; "
        f"{stripe_calls} Stripe calls"
    )
    return ReconcileRun(size, paid, command, float(baseline["elapsed_s"]), summary, ok, detail)


def run_reconcile(*, sizes: list[int], paid: float) -> ScenarioResult:
    runs = [_reconcile_once(size, paid) for size in sorted(sizes)]
    floor = floor_rss(bench_database_url())
    rows = [
        [
            f"{run.size:,}",
            f"{run.paid:,}",
            f"{run.command.elapsed_s:.1f}",
            f"{run.size / run.command.elapsed_s:,.0f}",
            f"{run.baseline_s:.1f}",
            f"{run.command.elapsed_s / run.baseline_s:.1f}x",
            f"{run.command.peak_rss_mib:.0f}",
            f"exit {run.command.returncode}, repaired {run.summary.get('repaired')}",
            ("OK: " if run.check_ok else "FAILED: ") + run.detail,
        ]
        for run in runs
    ]
    table = markdown_table(
        ["open purchases", "paid, webhook lost", "seconds", "purchases/s",
         "listing baseline s", "vs baseline", "peak RSS MiB", "result", "check"],
        rows,
    )  # fmt: skip
    small, large = runs[0], runs[-1]
    growth = large.command.peak_rss_mib / small.command.peak_rss_mib
    target_run = next((run for run in runs if run.size >= RECONCILE_TARGET_SIZE), large)
    per_finding_kib = (
        (large.command.peak_rss_mib - small.command.peak_rss_mib) * 1024 / (large.paid - small.paid)
        if large.paid > small.paid
        else 0.0
    )
    markdown = f"""\
`gateway reconcile --format json` against the Stripe stub (0 ms). Each size on a fresh
database: open purchases, each on its own wallet, their invoices finalized at the stub;
{paid:.0%} of them then paid at Stripe with the webhook lost, which reconcile settles.
The listing baseline pages through the same invoices with stripe-python alone. The
`gateway` command's floor (start-up, no work) is {floor:.0f} MiB.

{table}

- {target_run.size:,} purchases in **{target_run.command.elapsed_s:.1f} s**
  ({target_run.command.elapsed_s / target_run.baseline_s:.1f}x reading the invoices alone).
- Peak RSS {small.command.peak_rss_mib:.0f} MiB at {small.size:,} and
  {large.command.peak_rss_mib:.0f} MiB at {large.size:,}: **{growth:.2f}x** for
  {large.size / small.size:.0f}x the purchases. Rows are read in batches and Stripe in
  pages; what grows is the report itself (one finding per repaired purchase, about
  {per_finding_kib:.1f} KiB each, printed at the end).
"""
    targets = [
        Target(
            f"reconcile over {target_run.size:,} open purchases",
            f"< {RECONCILE_TARGET_S:.0f} s",
            f"{target_run.command.elapsed_s:.1f} s "
            f"({target_run.command.elapsed_s / target_run.baseline_s:.1f}x the listing alone)",
            target_run.command.elapsed_s < RECONCILE_TARGET_S
            and target_run.size >= RECONCILE_TARGET_SIZE,
        ),
        *_memory_and_ledger_targets("reconcile", small, large, runs),
    ]
    return ScenarioResult(
        name="reconcile",
        title="4b. gateway reconcile",
        markdown=markdown,
        targets=targets,
        figures={
            "floor_rss_mib": floor,
            "runs": [
                {
                    "size": run.size,
                    "paid": run.paid,
                    "seconds": run.command.elapsed_s,
                    "baseline_seconds": run.baseline_s,
                    "peak_rss_mib": run.command.peak_rss_mib,
                    "summary": run.summary,
                    "ok": run.check_ok,
                }
                for run in runs
            ],
        },
        environment=environment(),
    )


def _memory_and_ledger_targets(
    command: str, small: Any, large: Any, runs: Sequence[Any]
) -> list[Target]:
    """Memory stays flat from the small run to the large one; every run left the ledger whole."""
    growth = large.command.peak_rss_mib / small.command.peak_rss_mib
    consistent = all(run.check_ok for run in runs)
    return [
        Target(
            f"{command} peak RSS, large vs small",
            "flat",
            f"{growth:.2f}x ({small.command.peak_rss_mib:.0f} -> "
            f"{large.command.peak_rss_mib:.0f} MiB for {large.size / small.size:.0f}x the rows)",
            growth < 1.25,
        ),
        Target(
            f"{command} ledger",
            "consistent",
            "consistent" if consistent else "INCONSISTENT",
            consistent,
        ),
    ]
