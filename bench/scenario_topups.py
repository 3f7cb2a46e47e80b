"""Scenario 5, automatic top-ups: what a threshold rule costs a credit application, and
the worker's interval duty at scale.

Credit applications (the real service under gunicorn, load from a separate process)
to three groups of 100 wallets, bulk-inserted with 1,000,000 credits each: without a
rule; with a threshold rule that is not reached (the usual case: one more indexed
read per application); with a threshold rule that is reached while its top-up is
unpaid (the worst case: the rule, then the wallet's pending credits, read on every
application; the first application of each wallet started the one top-up). The
groups take turns, `rounds` times, and each group's figure is its median round.

The interval duty (`topups.buy_all_due_interval_top_ups`, as the worker runs it) over
N interval rules all due at once, in a child process whose wall time and peak RSS are
measured (bench/process.py), at two sizes to show memory stays flat; then the invoices
of the first size's automatic purchases made against the Stripe stub on loopback
(`topups.complete_automatic_purchases`), to show what completing them costs.
"""

from __future__ import annotations

import json
import statistics
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from decimal import Decimal
from typing import Any

import psycopg

from bench import seed
from bench.common import bench_database_url, fresh_database, gunicorn, markdown_table, run_load
from bench.process import CommandRun, run_measured
from bench.report import ScenarioResult, Target, environment
from bench.scenario_sweeps import floor_rss
from bench.scenario_webhooks import service_env
from gateway.db import utcnow
from gateway.providers.stripe.sandbox import StripeStub

API_KEY = "bench-key"
HEADERS = {"Authorization": f"Bearer {API_KEY}", "Content-Type": "application/json"}
GRANTED = Decimal("1000000")
SLOWER_TARGET = 0.90  # a threshold rule costs at most 10 % of the throughput
DUTY_TARGET_S = 60.0
DUTY_TARGET_SIZE = 10_000
GROUPS = (
    ("no rule", "none", None),
    ("threshold rule, not reached", "rule", Decimal("10")),
    ("threshold rule, reached, top-up unpaid", "low", Decimal("2000000")),
)

_RULE_COLUMNS = ("id", "wallet_id", '"trigger"', "method", "status", '"interval"', "started_at",
                 "next_run_at", "threshold_credits", "paid_credits", "granted_credits",
                 "created_at", "updated_at")  # fmt: skip


def _threshold_rules(
    conn: psycopg.Connection[Any], wallets: Sequence[seed.SeedWallet], threshold: Decimal
) -> None:
    now = utcnow()
    rows = (
        (f"rtr_{w.wallet_id}", w.wallet_id, "threshold", "fixed", "active", None, None, None,
         threshold, Decimal("100"), None, now, now)
        for w in wallets
    )  # fmt: skip
    with conn.transaction():
        seed._copy(conn, "recurring_transaction_rules", _RULE_COLUMNS, rows)


def _interval_rules(
    conn: psycopg.Connection[Any], wallets: Sequence[seed.SeedWallet], due_at: datetime
) -> None:
    now = utcnow()
    rows = (
        (f"rtr_{w.wallet_id}", w.wallet_id, "interval", "fixed", "active", "monthly", due_at,
         due_at, None, seed.PURCHASE_CREDITS, Decimal("1"), now, now)
        for w in wallets
    )  # fmt: skip
    with conn.transaction():
        seed._copy(conn, "recurring_transaction_rules", _RULE_COLUMNS, rows)


def _application(external_id: str, invoice: str) -> dict[str, Any]:
    body = {
        "credit_application": {
            "invoice_external_id": invoice,
            "external_customer_id": external_id,
            "invoice_type": "usage",
            "currency": "USD",
            "subtotal_amount_cents": 7,
            "tax_rate": "20",
        }
    }
    return {"method": "POST", "path": "/api/v1/credit_applications", "headers": HEADERS,
            "body": json.dumps(body)}  # fmt: skip


@dataclass
class GroupRun:
    name: str
    rates: list[float]
    p50_ms: list[float]
    errors: int

    @property
    def rate(self) -> float:
        return statistics.median(self.rates)


def _applications(
    database_url: str, *, requests: int, rounds: int, workers: int, concurrency: int
) -> tuple[list[GroupRun], str, bool]:
    fresh_database(database_url)
    conn = seed.connect(database_url)
    wallets = {}
    for _name, tag, threshold in GROUPS:
        wallets[tag] = seed.insert_wallets(conn, 100, tag=tag, granted=GRANTED)
        if threshold is not None:
            _threshold_rules(conn, wallets[tag], threshold)
    seed.analyze(conn)
    env = {**service_env(database_url), "GATEWAY_API_KEYS": API_KEY}
    runs = {tag: GroupRun(name, [], [], 0) for name, tag, _ in GROUPS}
    per_round = requests // rounds
    with gunicorn("wsgi:app", env, workers=workers) as url:
        warm = [_application(wallets["none"][n % 100].external_id, f"warm-{n}") for n in range(200)]
        run_load(warm, url, mode="closed", concurrency=concurrency)
        for round_ in range(rounds):
            for _name, tag, _threshold in GROUPS:
                batch = [
                    _application(wallets[tag][n % 100].external_id, f"{tag}-{round_}-{n}")
                    for n in range(per_round)
                ]
                result = run_load(batch, url, mode="closed", concurrency=concurrency)
                runs[tag].rates.append(result["throughput_rps"])
                runs[tag].p50_ms.append(result["p50_ms"])
                runs[tag].errors += result["errors"]
    report = seed.ledger_report(conn)
    purchases = dict(
        conn.execute(
            "SELECT split_part(wallet_id, '_', 2), count(*) FROM purchases GROUP BY 1"
        ).fetchall()
    )
    conn.close()
    # One top-up per wallet of the reached group that got an application, no other.
    expected = {"low": min(100, per_round * rounds)}
    ok = report.ok and purchases == expected and all(r.errors == 0 for r in runs.values())
    detail = f"{report.summary()}; automatic purchases per group: {purchases}"
    return [runs[tag] for _, tag, _ in GROUPS], detail, ok


@dataclass
class DutyRun:
    size: int
    command: CommandRun
    done: dict[str, Any]
    ok: bool
    detail: str


def _duty_env(database_url: str, api_base: str = "") -> dict[str, str]:
    env = {"DATABASE_URL": database_url, "STRIPE_SECRET_KEY": "sk_test_bench"}
    if api_base:
        env["STRIPE_API_BASE"] = api_base
    return env


def _interval_duty(database_url: str, size: int) -> DutyRun:
    fresh_database(database_url)
    conn = seed.connect(database_url)
    made = seed.insert_wallets(conn, size, tag="int", granted=Decimal("100"))
    _interval_rules(conn, made, utcnow() - timedelta(hours=1))
    seed.analyze(conn)
    command = run_measured(
        [sys.executable, "-m", "bench.topup_duty", "interval"], _duty_env(database_url)
    )
    done = json.loads(command.output.strip().splitlines()[-1]) if command.output.strip() else {}
    row = conn.execute(
        """
        SELECT (SELECT count(*) FROM purchases WHERE status = 'creating'
                AND collection_method = 'charge_automatically'),
               (SELECT count(*) FROM wallet_transactions WHERE source = 'interval'),
               (SELECT count(*) FROM recurring_transaction_rules WHERE next_run_at <= now()),
               (SELECT count(DISTINCT (rule_id, rule_period_at)) FROM wallet_transactions
                WHERE source = 'interval')
        """
    ).fetchone()
    purchases, entries, still_due, periods = row if row else (0, 0, 0, 0)
    report = seed.ledger_report(conn)
    conn.close()
    ok = (
        command.returncode == 0
        and purchases == size
        and entries == 2 * size
        and periods == size
        and still_due == 0
        and report.ok
    )
    detail = (
        f"{purchases} purchases left for the invoices, {entries} interval entries over "
        f"{periods} (rule, period) pairs, {still_due} rules still due; {report.summary()}"
    )
    return DutyRun(size, command, done, ok, detail)


def _completion(database_url: str, size: int) -> DutyRun:
    """The invoices of the automatic purchases the last interval run left, at the stub."""
    with StripeStub() as stub:
        command = run_measured(
            [sys.executable, "-m", "bench.topup_duty", "complete", "--limit", str(size)],
            _duty_env(database_url, stub.url),
        )
        invoices = len(stub.invoices)
    done = json.loads(command.output.strip().splitlines()[-1]) if command.output.strip() else {}
    conn = seed.connect(database_url)
    opened = conn.execute("SELECT count(*) FROM purchases WHERE status = 'open'").fetchone()
    conn.close()
    ok = command.returncode == 0 and opened == (size,) and invoices == size
    count = opened[0] if opened else 0
    detail = f"{count} purchases open with their invoice, {invoices} invoices at the stub"
    return DutyRun(size, command, done, ok, detail)


def run(
    *, requests: int, rounds: int, workers: int, concurrency: int, sizes: list[int]
) -> ScenarioResult:
    database_url = bench_database_url()
    groups, applications_detail, applications_ok = _applications(
        database_url, requests=requests, rounds=rounds, workers=workers, concurrency=concurrency
    )
    base = groups[0].rate
    application_rows = [
        [
            group.name,
            " / ".join(f"{rate:.0f}" for rate in group.rates),
            f"{group.rate:.0f}",
            f"{statistics.median(group.p50_ms):.1f}",
            group.errors,
            f"{group.rate / base:.2f}x",
        ]
        for group in groups
    ]
    duty_runs = [_interval_duty(database_url, size) for size in sorted(sizes)]
    small = duty_runs[0]
    # The completion runs on the smallest size's purchases: a fresh interval run first.
    _interval_duty(database_url, small.size)
    completion = _completion(database_url, small.size)
    floor = floor_rss(database_url)
    duty_rows = [
        [
            f"{run.size:,}",
            f"{run.command.elapsed_s:.1f}",
            f"{run.size / run.command.elapsed_s:,.0f}",
            f"{run.command.peak_rss_mib:.0f}",
            json.dumps(run.done),
            ("OK: " if run.ok else "FAILED: ") + run.detail,
        ]
        for run in duty_runs
    ]
    large = duty_runs[-1]
    growth = large.command.peak_rss_mib / small.command.peak_rss_mib
    rule_ratio = groups[1].rate / base
    worst_ratio = groups[2].rate / base
    per_invoice_ms = 1000 * completion.command.elapsed_s / completion.size
    completion_check = ("OK: " if completion.ok else "FAILED: ") + completion.detail
    applications_table = markdown_table(
        ["wallets", "per s, each round", "median per s", "p50 ms", "errors", "vs no rule"],
        application_rows,
    )
    markdown = f"""\
Credit applications: {requests // rounds} requests per group and round, {rounds} rounds
taking turns, closed loop of {concurrency} connections, gunicorn with {workers} sync
workers; each application deducts 7 cents plus tax at 20 %.

{applications_table}

- A threshold rule that is not reached: **{rule_ratio:.2f}x** the throughput without
  rules; reached with its top-up unpaid (two more reads per application):
  **{worst_ratio:.2f}x**.
- Afterwards: {applications_detail}.

The interval duty over N monthly rules all due (each buys {seed.PURCHASE_CREDITS} paid
credits, left `creating` for the invoices, and grants 1), batches of 200, one
transaction each, in a child process; the process floor (start-up, no work) is
{floor:.0f} MiB.

{markdown_table(["due rules", "seconds", "rules/s", "peak RSS MiB", "output", "check"], duty_rows)}

- {large.size:,} due rules in **{large.command.elapsed_s:.1f} s**; peak RSS
  {small.command.peak_rss_mib:.0f} MiB at {small.size:,} and {large.command.peak_rss_mib:.0f}
  MiB at {large.size:,} (**{growth:.2f}x** for {large.size / small.size:.0f}x the rules).
- Then the invoices of {completion.size:,} of those top-ups at the Stripe stub on
  loopback (customer, draft, line, finalize: four calls each, one at a time):
  {completion.command.elapsed_s:.1f} s, {per_invoice_ms:.1f} ms per top-up, peak RSS
  {completion.command.peak_rss_mib:.0f} MiB. {completion_check}.
  The invoices follow the duty at whatever rate Stripe allows (its API limits are
  100 requests/s live, 25/s in test mode): 10,000 top-ups take minutes at Stripe
  whatever the service does, so the duty itself never waits on it.
"""
    targets = [
        Target(
            "credit applications with a threshold rule on every wallet vs none",
            f">= {SLOWER_TARGET:.2f}x",
            f"{rule_ratio:.2f}x (not reached), {worst_ratio:.2f}x (reached, top-up unpaid)",
            min(rule_ratio, worst_ratio) >= SLOWER_TARGET,
        ),
        Target(
            f"interval duty over {large.size:,} due rules",
            f"< {DUTY_TARGET_S:.0f} s",
            f"{large.command.elapsed_s:.1f} s",
            large.command.elapsed_s < DUTY_TARGET_S and large.size >= DUTY_TARGET_SIZE,
        ),
        Target(
            "interval duty memory",
            "flat",
            f"{small.command.peak_rss_mib:.0f} MiB at {small.size:,}, "
            f"{large.command.peak_rss_mib:.0f} MiB at {large.size:,}",
            growth < 1.25,
        ),
        Target(
            "ledger and top-ups after the runs",
            "consistent",
            "consistent"
            if applications_ok and all(run.ok for run in duty_runs) and completion.ok
            else "INCONSISTENT",
            applications_ok and all(run.ok for run in duty_runs) and completion.ok,
        ),
    ]
    return ScenarioResult(
        name="topups",
        title="5. Automatic top-ups",
        markdown=markdown,
        targets=targets,
        figures={
            "applications": [
                {"group": g.name, "rates": g.rates, "median": g.rate, "p50_ms": g.p50_ms}
                for g in groups
            ],
            "duty": [
                {
                    "size": run.size,
                    "seconds": run.command.elapsed_s,
                    "peak_rss_mib": run.command.peak_rss_mib,
                    "ok": run.ok,
                }
                for run in duty_runs
            ],
            "completion": {
                "size": completion.size,
                "seconds": completion.command.elapsed_s,
                "peak_rss_mib": completion.command.peak_rss_mib,
                "ok": completion.ok,
            },
            "floor_rss_mib": floor,
        },
        environment=environment(workers=workers),
    )
