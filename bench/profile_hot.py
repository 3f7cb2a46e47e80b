"""Where a hot route's time goes, in-process: round trips per request and CPU per request.

    python -m bench.profile_hot webhooks [--requests 600] [--profile out.prof]
    python -m bench.profile_hot credit-applications [--one-wallet]

Seeds a fresh database (GATEWAY_BENCH_DATABASE_URL) as the load scenarios do, sends
the requests through Flask's test client (no gunicorn, no loopback), and prints the
CPU time per request (`time.process_time`), the wall time and how much of it a
transaction was open (for a request that locks a wallet, how long the next request for
that wallet waits: the hot wallet's rate is about one over it), and every statement
sent to PostgreSQL per request, BEGIN and COMMIT included: each one is a round trip and
a few tenths of a millisecond of SQLAlchemy, psycopg and PostgreSQL work. `--profile` also writes a
cProfile (CPU time) of the measured requests, for `python -m pstats`.
"""

from __future__ import annotations

import argparse
import collections
import cProfile
import logging
import os
import tempfile
import time
from decimal import Decimal
from typing import Any

from sqlalchemy import event

from bench import credit_applications, seed
from bench.common import bench_database_url, fresh_database
from bench.scenario_webhooks import paid_event, seed_purchases, service_env, signed

WARM_UP = 50


class _Open:
    """Wall time with a transaction open (BEGIN to COMMIT or ROLLBACK): for a request
    that locks a wallet, the time the next request for that wallet waits."""

    def __init__(self, engine: Any) -> None:
        self.seconds = 0.0
        self._since: float | None = None
        event.listen(engine, "begin", self._begin)
        event.listen(engine, "commit", self._end)
        event.listen(engine, "rollback", self._end)

    def _begin(self, _conn: Any) -> None:
        self._since = time.perf_counter()

    def _end(self, _conn: Any) -> None:
        if self._since is not None:
            self.seconds += time.perf_counter() - self._since
            self._since = None


def _statements(engine: Any) -> collections.Counter[str]:
    counts: collections.Counter[str] = collections.Counter()

    @event.listens_for(engine, "before_cursor_execute")
    def _sent(_conn: Any, _cursor: Any, statement: str, *_args: Any) -> None:
        counts[" ".join(statement.split())[:80]] += 1

    for name in ("begin", "commit", "rollback"):
        event.listen(engine, name, lambda _conn, name=name: counts.update([name.upper()]))
    return counts


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("route", choices=["webhooks", "credit-applications"])
    parser.add_argument("--requests", type=int, default=600)
    parser.add_argument("--one-wallet", action="store_true", help="every application, one wallet")
    parser.add_argument("--profile", help="write a cProfile of the measured requests here")
    args = parser.parse_args()

    url = bench_database_url()
    fresh_database(url)
    conn = seed.connect(url)
    os.environ.update({**service_env(url), "GATEWAY_API_KEYS": credit_applications.API_KEY})
    os.environ.setdefault("PROMETHEUS_MULTIPROC_DIR", tempfile.mkdtemp(prefix="gateway-metrics-"))
    from gateway import create_app

    app = create_app()
    logging.getLogger().handlers.clear()  # as under the bench's gunicorn: logs to nowhere
    client = app.test_client()
    count = args.requests + WARM_UP
    requests: list[dict[str, Any]]
    expected: int
    if args.route == "webhooks":
        purchases = seed_purchases(conn, count, "prf")
        requests = [signed(paid_event(f"evt_prf_{n:07d}", p)) for n, p in enumerate(purchases)]
        expected = 200
    else:
        wallets = seed.insert_wallets(
            conn, 100, tag="prc", granted=Decimal(1000000), provider_customers=True
        )
        requests = [
            credit_applications.application(
                wallets[0 if args.one_wallet else n % len(wallets)].external_id, f"inv-{n}", None
            )
            for n in range(count)
        ]
        expected = 201
    seed.analyze(conn)
    conn.close()

    def send(request: dict[str, Any]) -> None:
        answer = client.post(request["path"], data=request["body"], headers=request["headers"])
        assert answer.status_code == expected, answer.data

    for request in requests[:WARM_UP]:
        send(request)
    counts = _statements(app.extensions["db"].engine)
    held = _Open(app.extensions["db"].engine)
    measured = requests[WARM_UP:]
    profiler = cProfile.Profile(time.process_time) if args.profile else None

    def run() -> None:
        for request in measured:
            send(request)

    started, wall_started = time.process_time(), time.perf_counter()
    if profiler is not None:
        profiler.runcall(run)
        profiler.dump_stats(args.profile)
    else:
        run()
    cpu_ms = 1000 * (time.process_time() - started) / len(measured)
    wall_ms = 1000 * (time.perf_counter() - wall_started) / len(measured)
    print(f"{args.route}: {len(measured)} requests, {cpu_ms:.2f} ms CPU per request in-process")
    print(
        f"wall time per request {wall_ms:.2f} ms, of which a transaction was open "
        f"{1000 * held.seconds / len(measured):.2f} ms"
    )
    print(f"round trips per request: {sum(counts.values()) / len(measured):.1f}")
    for statement, n in counts.most_common():
        print(f"  {n / len(measured):5.2f}  {statement}")


if __name__ == "__main__":
    main()
