"""Scenario 2, purchases against the Stripe stub (gateway/providers/stripe/sandbox.py, in this
process, on loopback).

Overhead, 0 ms stub: paid-credit top-ups (`POST /api/v1/wallet_transactions`, 10 credits)
one at a time; the baseline, in the same run, is the same three Stripe calls (draft
invoice, line, finalize) made one purchase at a time by a plain stripe-python client in
its own process (bench/stripe_calls.py). Our overhead per purchase = the purchase's
latency minus the three calls' latency (p50 minus p50): our HTTP handling, validation,
ledger entry and purchase row, the three short transactions, the idempotency keys.

No lock held during the Stripe wait, 200 ms stub: credit applications on one wallet,
measured alone, then while purchases into that same wallet run (each waits 3 x 200 ms
on Stripe), then while a stand-in holds that wallet's row lock for 0.6 s at a time
(what a purchase that kept its transaction open across the Stripe calls would do: the
control, showing the measurement would see a held lock). The purchases are served by a
second gunicorn with the same settings on the same database, so they take none of the
applications' workers: the database is all the two share. Meanwhile the purchase
server's connections are sampled every 10 ms for the age of any open transaction.
"""

from __future__ import annotations

import json
import threading
import time
from dataclasses import dataclass
from decimal import Decimal
from typing import Any, Self

from bench import seed
from bench.common import (
    ROOT,
    bench_database_url,
    fresh_database,
    gunicorn,
    markdown_table,
    run_load,
)
from bench.credit_applications import API_KEY, HEADERS, application
from bench.report import ScenarioResult, Target, environment
from gateway.providers.stripe.sandbox import StripeStub

OVERHEAD_TARGET_MS = 15.0
SLOW_STUB_S = 0.2
LOCK_HOLD_S = 3 * SLOW_STUB_S  # the three calls of one purchase
PURCHASE_APP_NAME = "bench-purchases"


def purchase_request(wallet_id: str, credits: str = "10") -> dict[str, Any]:
    body = {"wallet_transaction": {"wallet_id": wallet_id, "paid_credits": credits}}
    return {"method": "POST", "path": "/api/v1/wallet_transactions", "headers": HEADERS,
            "body": json.dumps(body)}  # fmt: skip


def service_env(database_url: str, stub_url: str) -> dict[str, str]:
    return {
        "DATABASE_URL": database_url,
        "GATEWAY_API_KEYS": API_KEY,
        "STRIPE_SECRET_KEY": "sk_test_bench",
        "STRIPE_API_BASE": stub_url,
    }


def stripe_baseline(stub_url: str, count: int) -> dict[str, Any]:
    import subprocess
    import sys

    completed = subprocess.run(
        [sys.executable, "-m", "bench.stripe_calls", "--base", stub_url, "--count", str(count)],
        cwd=ROOT,
        check=True,
        capture_output=True,
        text=True,
    )
    result: dict[str, Any] = json.loads(completed.stdout)
    return result


class _PollingThread:
    """A daemon thread running `_step` on its own database connection until the
    `with` block ends (then the connection is closed)."""

    def __init__(self, database_url: str, pause: float) -> None:
        self._conn = seed.connect(database_url)
        self._pause = pause
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _step(self) -> None:
        raise NotImplementedError

    def _run(self) -> None:
        while not self._stop.is_set():
            self._step()
            self._stop.wait(self._pause)

    def __enter__(self) -> Self:
        self._thread.start()
        return self

    def __exit__(self, *_exc: object) -> None:
        self._stop.set()
        self._thread.join()
        self._conn.close()


class TransactionAgeSampler(_PollingThread):
    """Polls pg_stat_activity for the connections of `application_name`: the oldest
    open transaction, and the longest a transaction sat idle (`idle in transaction`:
    the service busy elsewhere, e.g. waiting on Stripe, with its locks still held)."""

    def __init__(self, database_url: str, application_name: str) -> None:
        super().__init__(database_url, pause=0.01)
        self._name = application_name
        self.max_age_s = 0.0  # oldest open transaction (waiting on locks included)
        self.max_idle_s = 0.0  # longest the service kept one open doing something else
        self.samples = 0

    def _step(self) -> None:
        row = self._conn.execute(
            """
            SELECT
              coalesce(max(extract(epoch FROM clock_timestamp() - xact_start)), 0),
              coalesce(max(extract(epoch FROM clock_timestamp() - state_change))
                       FILTER (WHERE state LIKE 'idle in transaction%%'), 0)
            FROM pg_stat_activity
            WHERE application_name = %s AND xact_start IS NOT NULL
            """,
            (self._name,),
        ).fetchone()
        if row:
            self.max_age_s = max(self.max_age_s, float(row[0]))
            self.max_idle_s = max(self.max_idle_s, float(row[1]))
        self.samples += 1


class LockHolder(_PollingThread):
    """The control: holds `wallet_id`'s row lock for `hold` seconds, again and again."""

    def __init__(self, database_url: str, wallet_id: str, hold: float, gap: float) -> None:
        super().__init__(database_url, pause=gap)
        self._wallet_id = wallet_id
        self._hold = hold
        self.holds = 0

    def _step(self) -> None:
        with self._conn.transaction():
            self._conn.execute("SELECT 1 FROM wallets WHERE id = %s FOR UPDATE", (self._wallet_id,))
            time.sleep(self._hold)
        self.holds += 1


@dataclass
class Background:
    """run_load in a thread, with the wall-clock window it ran in."""

    result: dict[str, Any] | None = None
    started: float = 0.0
    finished: float = 0.0


def load_in_background(
    requests: list[dict[str, Any]], url: str, concurrency: int
) -> tuple[threading.Thread, Background]:
    background = Background()

    def target() -> None:
        background.started = time.monotonic()
        background.result = run_load(requests, url, mode="closed", concurrency=concurrency)
        background.finished = time.monotonic()

    thread = threading.Thread(target=target, daemon=True)
    thread.start()
    return thread, background


def _latency_row(name: str, result: dict[str, Any], note: str = "") -> list[Any]:
    return [
        name,
        result["count"],
        json.dumps(result.get("statuses", {}), sort_keys=True),
        f"{result['throughput_rps']:.1f}",
        result["p50_ms"],
        result["p99_ms"],
        note,
    ]


@dataclass
class _LockPhase:
    """Credit applications on one wallet alone, during slow purchases into it, and with
    its lock held (the control)."""

    alone_before: dict[str, Any]
    during: dict[str, Any]
    alone_after: dict[str, Any]
    alone: dict[str, float]
    control: dict[str, Any]
    slow: Background
    overlap: bool
    sampler: TransactionAgeSampler
    holder: LockHolder


def _lock_phase(
    database_url: str, url: str, purchase_url: str, hot: seed.SeedWallet, applications: int
) -> _LockPhase:
    customer = hot.external_id

    def applications_batch(tag: str, count: int) -> list[dict[str, Any]]:
        return [application(customer, f"{tag}-{n}", None) for n in range(count)]

    run_load(applications_batch("warm", 50), url, mode="closed", concurrency=4)
    alone_before = run_load(
        applications_batch("alone", applications), url, mode="closed", concurrency=4
    )
    # Enough purchases (4 at a time, >= 0.6 s each) to outlast the applications.
    expected = alone_before["elapsed_s"] * 1.5 + 3
    count = 4 * int(expected / LOCK_HOLD_S + 1)
    with TransactionAgeSampler(database_url, PURCHASE_APP_NAME) as sampler:
        thread, slow = load_in_background(
            [purchase_request(hot.wallet_id) for _ in range(count)], purchase_url, 4
        )
        time.sleep(1.0)  # the purchases are under way
        apps_started = time.monotonic()
        during = run_load(
            applications_batch("during", applications), url, mode="closed", concurrency=4
        )
        apps_finished = time.monotonic()
        thread.join()
    assert slow.result is not None
    overlap = slow.started < apps_started and slow.finished > apps_finished
    # Alone again: the reference is the mean of before and after, so a drift in
    # the machine's load during the three runs does not pass for an effect.
    alone_after = run_load(
        applications_batch("again", applications), url, mode="closed", concurrency=4
    )
    alone = {
        "throughput_rps": (alone_before["throughput_rps"] + alone_after["throughput_rps"]) / 2,
        "p50_ms": (alone_before["p50_ms"] + alone_after["p50_ms"]) / 2,
    }
    control_count = min(applications, 150)
    with LockHolder(database_url, hot.wallet_id, LOCK_HOLD_S, 0.2) as holder:
        time.sleep(0.1)
        control = run_load(
            applications_batch("control", control_count), url, mode="closed", concurrency=4
        )
    return _LockPhase(alone_before, during, alone_after, alone, control, slow, overlap,
                      sampler, holder)  # fmt: skip


@dataclass(frozen=True)
class _LedgerAfter:
    report: seed.LedgerReport
    balance: Decimal
    consumed: Decimal
    invoices_at_stub: int
    purchase_rows: int
    one_invoice_each: bool


def _ledger_after(conn: Any, hot: seed.SeedWallet, stub: StripeStub) -> _LedgerAfter:
    """The ledger, the hot wallet's balance and the stub's invoices once the runs are over."""
    report = seed.ledger_report(conn)
    balance = seed.wallet_balances(conn, [hot.wallet_id])[hot.wallet_id]
    consumed_row = conn.execute(
        "SELECT coalesce(sum(credit_amount), 0) FROM wallet_transactions "
        "WHERE wallet_id = %s AND transaction_status = 'invoiced' AND status = 'settled'",
        (hot.wallet_id,),
    ).fetchone()
    consumed = Decimal(consumed_row[0]) if consumed_row else Decimal(0)
    purchase_ids = {row[0] for row in conn.execute("SELECT id FROM purchases")}
    per_purchase: dict[str, int] = {}
    for invoice in stub.invoices.values():
        named = invoice["metadata"].get("gateway_purchase_id")
        if named in purchase_ids:
            per_purchase[named] = per_purchase.get(named, 0) + 1
    purchase_rows = len(purchase_ids)
    one_invoice_each = len(per_purchase) == purchase_rows and set(per_purchase.values()) == {1}
    return _LedgerAfter(report, balance, consumed, sum(per_purchase.values()), purchase_rows,
                        one_invoice_each)  # fmt: skip


def run(*, purchases: int, applications: int, workers: int) -> ScenarioResult:
    database_url = bench_database_url()
    fresh_database(database_url)
    conn = seed.connect(database_url)
    wallets = seed.insert_wallets(conn, 8, tag="pov")
    hot = seed.insert_wallets(conn, 1, tag="phot", granted=Decimal("1000000"))[0]
    seed.analyze(conn)
    stub = StripeStub(latency=0.0)
    stub_url = stub.start()
    env = service_env(database_url, stub_url)
    purchase_env = {**env, "DATABASE_URL": f"{database_url}?application_name={PURCHASE_APP_NAME}"}
    try:
        with (
            gunicorn("wsgi:app", env, workers=workers) as url,
            gunicorn("wsgi:app", purchase_env, workers=workers) as purchase_url,
        ):
            # --- overhead, 0 ms stub ------------------------------------------------------
            # First purchases make each customer's Stripe customer and warm every worker.
            run_load([purchase_request(w.wallet_id) for w in wallets * 2], url, mode="closed",
                     concurrency=1)  # fmt: skip
            run_load([purchase_request(hot.wallet_id)] * 4, purchase_url, mode="closed",
                     concurrency=4)  # fmt: skip
            baseline = stripe_baseline(stub_url, purchases)
            measured = run_load(
                [purchase_request(wallets[n % len(wallets)].wallet_id) for n in range(purchases)],
                url,
                mode="closed",
                concurrency=1,
            )
            baseline_again = stripe_baseline(stub_url, purchases)
            # --- no lock held on Stripe, 200 ms stub -------------------------------------
            stub.latency = SLOW_STUB_S
            lock = _lock_phase(database_url, url, purchase_url, hot, applications)
    finally:
        stub.stop()
    ledger = _ledger_after(conn, hot, stub)
    conn.close()
    alone_before, during, alone_after = lock.alone_before, lock.during, lock.alone_after
    alone, control, slow, sampler = lock.alone, lock.control, lock.slow, lock.sampler
    overlap, holder, report = lock.overlap, lock.holder, ledger.report
    consumed, invoices_at_stub = ledger.consumed, ledger.invoices_at_stub
    purchase_rows, one_invoice_each = ledger.purchase_rows, ledger.one_invoice_each

    base_p50 = min(baseline["p50_ms"], baseline_again["p50_ms"])
    overhead = measured["p50_ms"] - base_p50
    overhead_p99 = measured["p99_ms"] - min(baseline["p99_ms"], baseline_again["p99_ms"])
    ratio_throughput = during["throughput_rps"] / alone["throughput_rps"]
    p50_added = during["p50_ms"] - alone["p50_ms"]
    control_ratio = control["throughput_rps"] / alone["throughput_rps"]
    ledger_ok = (
        report.ok
        and ledger.balance == Decimal("1000000") - consumed
        and one_invoice_each
        and set(report.purchases_by_status) == {"open"}
    )
    # Purchases into the wallet lock it briefly too (phases 1 and 3) and share the 2
    # cores, so "unchanged" allows 25 %; a lock held across the Stripe calls costs the
    # applications 70-80 % (the control), and shows as an idle transaction >= 200 ms.
    unchanged = ratio_throughput >= 0.75 and p50_added < 50
    overhead_table = markdown_table(
        ["run (one at a time)", "count", "statuses", "per s", "p50 ms", "p99 ms", "note"],
        [
            _latency_row("baseline: the 3 Stripe calls, before", baseline),
            _latency_row("purchase through the service", measured),
            _latency_row("baseline: the 3 Stripe calls, after", baseline_again),
        ],
    )
    lock_table = markdown_table(
        ["credit applications on one wallet", "count", "statuses", "per s", "p50 ms", "p99 ms",
         "note"],
        [
            _latency_row("alone, before", alone_before),
            _latency_row("while purchases into it wait on Stripe", during,
                         f"purchase server: longest idle transaction "
                         f"{sampler.max_idle_s * 1000:.0f} ms, oldest "
                         f"{sampler.max_age_s * 1000:.0f} ms ({sampler.samples} samples)"),
            _latency_row("purchases meanwhile (200 ms stub)", slow.result,
                         "covered the whole run" if overlap else "did NOT cover the whole run"),
            _latency_row("alone, after", alone_after),
            _latency_row(f"control: lock held {LOCK_HOLD_S:.1f} s at a time", control,
                         f"{holder.holds} holds"),
        ],
    )  # fmt: skip
    markdown = f"""\
Our overhead per purchase is the p50 of a paid-credit top-up through the service
minus the p50 of the same three Stripe calls made directly by stripe-python (the lower
of the baseline runs before and after), both one purchase at a time against the 0 ms
stub. gunicorn with {workers} sync workers.

{overhead_table}

- Overhead per purchase: **{overhead:.1f} ms** at p50 ({measured["p50_ms"]:.1f} -
  {base_p50:.1f} ms; {measured["p50_ms"] / base_p50:.2f}x the Stripe calls alone),
  {overhead_p99:.1f} ms at p99.

With a {SLOW_STUB_S * 1000:.0f} ms stub ({applications} applications, 4 connections;
purchases 4 at a time on a second server):

{lock_table}

- Applications on the wallet while purchases into it wait on Stripe:
  **{ratio_throughput:.2f}x** the throughput alone (mean of before and after), p50
  {p50_added:+.1f} ms. What the purchases still cost them is their own short holds of
  the wallet's lock (phase 1 writes the entry, phase 3 stores the invoice: a few ms
  each, no Stripe call inside) and their CPU on the shared cores. With the
  wallet's lock held as a purchase would hold it across its Stripe calls (control):
  {control_ratio:.2f}x, p50 {control["p50_ms"]:.0f} ms, p99 {control["p99_ms"]:.0f} ms.
  Sampled every 10 ms, no transaction of the purchase server sat idle (its locks held
  while it did something else) longer than {sampler.max_idle_s * 1000:.0f} ms, while
  each purchase waited {LOCK_HOLD_S * 1000:.0f} ms on Stripe; the oldest open
  transaction was {sampler.max_age_s * 1000:.0f} ms old (phase 1 queueing for the
  wallet's lock behind the applications counts there).
- Ledger afterwards: {report.summary()}; the wallet's balance is 1,000,000 minus the
  {consumed} credits applied; {invoices_at_stub} invoices at the stub for
  {purchase_rows} purchases ({"one each" if one_invoice_each else "NOT one each"}).
"""
    targets = [
        Target(
            "overhead per purchase, p50, 0 ms stub",
            f"< {OVERHEAD_TARGET_MS:.0f} ms",
            f"{overhead:.1f} ms ({measured['p50_ms']:.1f} ms vs {base_p50:.1f} ms for the "
            "Stripe calls alone)",
            overhead < OVERHEAD_TARGET_MS,
        ),
        Target(
            "credit applications on the wallet during slow purchases",
            "unchanged (>= 0.75x, p50 + < 50 ms)",
            f"{ratio_throughput:.2f}x, p50 {p50_added:+.1f} ms (control with a held lock: "
            f"{control_ratio:.2f}x); longest idle purchase transaction "
            f"{sampler.max_idle_s * 1000:.0f} ms",
            unchanged and overlap and sampler.max_idle_s < SLOW_STUB_S,
        ),
        Target(
            "ledger after purchases and applications",
            "consistent",
            "consistent" if ledger_ok else "INCONSISTENT",
            ledger_ok,
        ),
    ]
    return ScenarioResult(
        name="purchases",
        title="2. Purchases against the Stripe stub",
        markdown=markdown,
        targets=targets,
        figures={
            "baseline": baseline,
            "baseline_again": baseline_again,
            "purchases": measured,
            "applications_alone": [alone_before, alone_after],
            "applications_during": during,
            "slow_purchases": slow.result,
            "control": control,
            "max_transaction_age_s": sampler.max_age_s,
            "max_idle_in_transaction_s": sampler.max_idle_s,
        },
        environment=environment(workers=workers),
    )
