"""The benchmark suite: `python -m bench SCENARIO` (or `all`), figures printed and kept
in bench/RESULTS.md (bench/results.json holds the raw numbers).

    python -m bench webhooks              # 1. webhook ingestion vs a minimal endpoint
    python -m bench purchases             # 2. purchase overhead; no lock held on Stripe
    python -m bench credit-applications   # 3. many wallets and one hot wallet
    python -m bench expire                # 4. gateway expire-wallets at 10k and 100k
    python -m bench reconcile             # 4. gateway reconcile at 1k and 10k
    python -m bench topups                # 5. threshold rules' cost, the interval duty
    python -m bench outgoing              # 6. gateway worker: webhooks out, one slow endpoint
    python -m bench all                   # everything, about 9 minutes on 2 cores
    python -m bench report                # rewrite RESULTS.md from results.json

PostgreSQL: GATEWAY_BENCH_DATABASE_URL (default
postgresql+psycopg://postgres@127.0.0.1:5432/gateway_bench), dropped and recreated by
each scenario. Run it on a quiet machine: `uptime` first; the load average at the
start of each scenario is recorded next to its figures.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from collections.abc import Callable

from bench import report
from bench.report import ScenarioResult


def _webhooks(args: argparse.Namespace) -> ScenarioResult:
    from bench import scenario_webhooks

    return scenario_webhooks.run(
        events=args.events, workers=args.workers, concurrency=args.concurrency
    )


def _purchases(args: argparse.Namespace) -> ScenarioResult:
    from bench import scenario_purchases

    return scenario_purchases.run(
        purchases=args.purchases, applications=args.applications, workers=args.workers
    )


def _credit_applications(args: argparse.Namespace) -> ScenarioResult:
    from bench import scenario_credit_applications

    return scenario_credit_applications.run(
        requests=args.requests, workers=args.workers, concurrency=args.concurrency
    )


def _expire(args: argparse.Namespace) -> ScenarioResult:
    from bench import scenario_sweeps

    return scenario_sweeps.run_expire(sizes=args.expire_sizes)


def _reconcile(args: argparse.Namespace) -> ScenarioResult:
    from bench import scenario_sweeps

    return scenario_sweeps.run_reconcile(sizes=args.reconcile_sizes, paid=args.paid_fraction)


def _topups(args: argparse.Namespace) -> ScenarioResult:
    from bench import scenario_topups

    return scenario_topups.run(
        requests=args.requests,
        rounds=args.rounds,
        workers=args.workers,
        concurrency=args.concurrency,
        sizes=args.topup_sizes,
    )


def _outgoing(args: argparse.Namespace) -> ScenarioResult:
    from bench import scenario_outgoing

    return scenario_outgoing.run(events=args.outgoing_events)


SCENARIOS: dict[str, Callable[[argparse.Namespace], ScenarioResult]] = {
    "webhooks": _webhooks,
    "purchases": _purchases,
    "credit-applications": _credit_applications,
    "expire": _expire,
    "reconcile": _reconcile,
    "topups": _topups,
    "outgoing": _outgoing,
}


def _sizes(text: str) -> list[int]:
    return [int(part.replace("_", "")) for part in text.split(",") if part]


def parser() -> argparse.ArgumentParser:
    main = argparse.ArgumentParser(
        prog="python -m bench",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    main.add_argument("scenario", choices=[*SCENARIOS, "all", "report"])
    main.add_argument(
        "--workers", type=int, default=4, help="gunicorn sync workers (service and baseline)"
    )
    main.add_argument("--concurrency", type=int, default=8, help="closed-loop connections")
    main.add_argument("--events", type=int, default=3000, help="webhook deliveries per run")
    main.add_argument("--purchases", type=int, default=300, help="purchases per run")
    main.add_argument(
        "--applications", type=int, default=600, help="credit applications per run (scenario 2)"
    )
    main.add_argument(
        "--requests", type=int, default=1500, help="credit applications per run (scenario 3)"
    )
    main.add_argument(
        "--outgoing-events", type=int, default=3000, help="events delivered per run (scenario 6)"
    )
    main.add_argument("--expire-sizes", type=_sizes, default=[10_000, 100_000])
    main.add_argument("--reconcile-sizes", type=_sizes, default=[1_000, 10_000])
    main.add_argument("--topup-sizes", type=_sizes, default=[1_000, 10_000])
    main.add_argument(
        "--rounds", type=int, default=3, help="turns of the credit-application groups (scenario 5)"
    )
    main.add_argument(
        "--paid-fraction",
        type=float,
        default=0.5,
        help="share of reconcile's purchases paid at Stripe with the webhook lost",
    )
    return main


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    if args.scenario == "report":
        report.RESULTS_MD.write_text(report.render(report.load()))
        print(f"rewrote {report.RESULTS_MD.relative_to(report.ROOT)}")
        return 0
    names = list(SCENARIOS) if args.scenario == "all" else [args.scenario]
    load = os.getloadavg()[0]
    if load > (os.cpu_count() or 1):
        print(
            f"note: load average {load:.1f} on {os.cpu_count()} cores; figures will be noisy",
            file=sys.stderr,
        )
    failed = False
    for name in names:
        started = time.monotonic()
        print(f"== {name} ==", flush=True)
        result = SCENARIOS[name](args)
        report.save(result)
        print(result.markdown)
        for target in result.targets:
            mark = {True: "met", False: "MISSED", None: "-"}[target.met]
            print(f"  [{mark}] {target.what}: {target.measured} (target {target.target})")
            failed = failed or target.met is False
        print(f"  ({time.monotonic() - started:.0f} s)\n", flush=True)
    print(f"results: {report.RESULTS_MD.relative_to(report.ROOT)}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
