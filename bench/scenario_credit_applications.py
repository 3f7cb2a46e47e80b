"""Scenario 3, credit applications: bench/credit_applications.py's runs (many wallets,
with and without Idempotency-Key, replays, one hot wallet) on a fresh database, the
webhook baseline (one signed request, one inserted row) under the same gunicorn
settings in the same run, then the ledger checked: balances equal their settled
entries, and every applied answer has exactly one `invoiced` entry of its credits.
"""

from __future__ import annotations

import argparse
import json
from decimal import Decimal
from typing import Any

from bench import credit_applications, seed
from bench.common import bench_database_url, fresh_database, gunicorn, markdown_table, run_load
from bench.report import ScenarioResult, Target, environment
from bench.scenario_webhooks import ignored_event, service_env, signed

# Issue 17's targets: many wallets at least 0.3x the baseline, one hot wallet (every
# application serialised on its row lock) at least 0.8x the many-wallet rate.
SPREAD_TARGET = 0.3
HOT_WALLET_TARGET = 0.8


def _applications_check(conn: Any) -> tuple[bool, str]:
    row = conn.execute(
        """
        SELECT count(*) FILTER (WHERE a.status = 'applied'),
               count(*) FILTER (WHERE a.status = 'applied' AND (e.id IS NULL
                   OR e.credit_amount <> a.credit_amount OR e.status <> 'settled'
                   OR e.transaction_status <> 'invoiced')),
               (SELECT count(*) FROM wallet_transactions WHERE transaction_status = 'invoiced'),
               count(*)
        FROM credit_applications a
        LEFT JOIN wallet_transactions e ON e.id = a.transaction_id
        """
    ).fetchone()
    applied, bad, entries, answers = row if row else (0, 0, 0, 0)
    consumed = conn.execute(
        """
        SELECT count(*) FROM wallets w WHERE w.consumed_credits <> coalesce((
            SELECT sum(credit_amount) FROM wallet_transactions e
            WHERE e.wallet_id = w.id AND e.transaction_status = 'invoiced'), 0)
        """
    ).fetchone()
    consumed_mismatch = consumed[0] if consumed else 0
    ok = bad == 0 and entries == applied and consumed_mismatch == 0
    return ok, (
        f"{answers} answers stored, {applied} applied, {entries} `invoiced` entries, "
        f"{bad} applied answers without their entry, {consumed_mismatch} wallets whose "
        "consumed credits differ from their entries"
    )


def run(*, requests: int, workers: int, concurrency: int) -> ScenarioResult:
    database_url = bench_database_url()
    fresh_database(database_url)
    conn = seed.connect(database_url)
    conn.execute("CREATE TABLE bench_baseline_events (id text PRIMARY KEY)")
    env = {**service_env(database_url), "GATEWAY_API_KEYS": credit_applications.API_KEY}
    args = argparse.Namespace(requests=requests, concurrency=concurrency, customers=100)
    with (
        gunicorn("wsgi:app", env, workers=workers) as service,
        gunicorn("bench.baseline_app:app", env, workers=workers) as baseline_url,
    ):
        warm = [signed(ignored_event(n)) for n in range(100)]
        run_load(warm, baseline_url, mode="closed", concurrency=concurrency)
        baseline = run_load(
            [signed(ignored_event(n)) for n in range(requests)],
            baseline_url,
            mode="closed",
            concurrency=concurrency,
        )
        rows = credit_applications.measure(service, args)
    report = seed.ledger_report(conn)
    applications_ok, applications_detail = _applications_check(conn)
    conn.close()

    by_name = {row[0]: row for row in rows}
    rate = {name: float(row[4]) for name, row in by_name.items()}
    base_rate = baseline["throughput_rps"]
    table = markdown_table(
        ["run", "requests", "errors", "statuses", "per s", "p50 ms", "p99 ms", "vs baseline"],
        [
            [
                "baseline: verify + insert one row",
                baseline["count"],
                baseline["errors"],
                json.dumps(baseline["statuses"], sort_keys=True),
                f"{base_rate:.0f}",
                baseline["p50_ms"],
                baseline["p99_ms"],
                "1.00x",
            ],
            *[[*row, f"{rate[row[0]] / base_rate:.2f}x"] for row in rows],
        ],
    )
    hot_ratio = rate["one wallet"] / rate["spread"]
    key_ratio = rate["spread+key"] / rate["spread"]
    ledger_ok = report.ok and applications_ok
    markdown = f"""\
{requests} requests per run, closed loop of {concurrency} connections, gunicorn with
{workers} sync workers; "spread" goes to 100 customers' wallets, "one wallet" to a
single customer's (every application waits for that wallet's row lock); each
application deducts 7 cents of credits (rate 0.333) plus tax at 20 %.

{table}

- Many wallets: {rate["spread"]:.0f} applications/s ({rate["spread"] / base_rate:.2f}x the
  baseline); with an Idempotency-Key {key_ratio:.2f}x that; replays
  {rate["replay"] / rate["spread"]:.2f}x.
- One hot wallet: {rate["one wallet"]:.0f}/s, **{hot_ratio:.2f}x** the many-wallet rate.
- Ledger afterwards: {report.summary()}; {applications_detail}.
"""
    targets = [
        Target(
            "applications on many wallets vs baseline",
            f">= {SPREAD_TARGET}x",
            f"{rate['spread']:.0f}/s, {rate['spread'] / base_rate:.2f}x",
            rate["spread"] / base_rate >= SPREAD_TARGET,
        ),
        Target(
            "one hot wallet vs many wallets",
            f">= {HOT_WALLET_TARGET}x",
            f"{rate['one wallet']:.0f}/s, {hot_ratio:.2f}x",
            hot_ratio >= HOT_WALLET_TARGET,
        ),
        Target(
            "ledger after the runs",
            "consistent",
            "consistent" if ledger_ok else "INCONSISTENT",
            ledger_ok,
        ),
    ]
    return ScenarioResult(
        name="credit-applications",
        title="3. Credit applications",
        markdown=markdown,
        targets=targets,
        figures={
            "baseline": baseline,
            "rows": rows,
            "consumed_check": applications_detail,
            "granted": str(Decimal("1000000")),
        },
        environment=environment(workers=workers),
    )
