"""One run of the automatic top-up duties, as the worker runs them, in its own process:

    python -m bench.topup_duty interval [--batch-size 200]   # every due interval rule
    python -m bench.topup_duty complete [--limit 1000]       # invoices of automatic top-ups

Configured from the environment (DATABASE_URL, STRIPE_SECRET_KEY, STRIPE_API_BASE) like
the `gateway` command; prints one JSON line with what was done. `bench/scenario_topups.py`
starts it through `bench.process` to measure its wall time and peak RSS.
"""

from __future__ import annotations

import argparse
import json
import time

from gateway import create_app, topups
from gateway.db import get_session, utcnow
from gateway.providers import get_provider


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("duty", choices=["interval", "complete"])
    parser.add_argument("--batch-size", type=int, default=200)
    parser.add_argument("--limit", type=int, default=1000)
    args = parser.parse_args()
    app = create_app()
    started = time.perf_counter()
    with app.app_context():
        session = get_session()
        if args.duty == "interval":
            run = topups.buy_all_due_interval_top_ups(session, utcnow(), args.batch_size)
            done = {"rules": run.rules, "started": run.started, "skipped": len(run.skipped)}
        else:
            completed = topups.complete_automatic_purchases(
                session, get_provider(), limit=args.limit
            )
            done = {
                "completed": completed.completed,
                "rejected": completed.rejected,
                "unavailable": completed.unavailable,
            }
    print(json.dumps({**done, "seconds": round(time.perf_counter() - started, 3)}))


if __name__ == "__main__":
    main()
