"""Scenario 6, outgoing events: `gateway worker` delivering signed webhooks.

1. Throughput: N events in the outbox, one endpoint answering at once (a bare WSGI app
   under gunicorn, bench/receiver_app.py, in its own processes); `gateway worker
   --once` fans them out and delivers them all. Its time is set against the same
   command with nothing to do (process start, app, duties), measured in the same run.
2. Isolation: the same N events to two endpoints, one of which never answers within
   the timeout, the worker running as it does in production (`gateway worker`); the
   time until the healthy endpoint has every event, against the same with the healthy
   endpoint alone (same run).

Events are real outbox rows: wallets are created through the use cases (each one
writes `wallet.created`), so payloads have their production size.
"""

from __future__ import annotations

import os
import signal
import subprocess
import time
from typing import Any

from sqlalchemy import create_engine, func, select, text, update

from bench.common import BIN, ROOT, bench_database_url, fresh_database, gunicorn, markdown_table
from bench.report import ScenarioResult, Target, environment

THROUGHPUT_TARGET = 300.0  # events/s, one worker, 2 cores
TIMEOUT_SECONDS = 2


def _env(url: str, **extra: str) -> dict[str, str]:
    return {
        **os.environ,
        "DATABASE_URL": url,
        "GATEWAY_API_KEYS": "bench-key",
        "STRIPE_SECRET_KEY": "",
        "OUTGOING_WEBHOOKS_ALLOW_HTTP": "true",
        "OUTGOING_WEBHOOK_TIMEOUT_SECONDS": str(TIMEOUT_SECONDS),
        **extra,
    }


def _seed_events(url: str, count: int) -> None:
    """`count` wallets made by the use case, so `count` `wallet.created` events."""
    from gateway import create_app
    from gateway.db import get_db
    from gateway.models import Customer, Subscription
    from gateway.wallets import WalletInput, create_wallet

    app = create_app({"DATABASE_URL": url, "GATEWAY_API_KEYS": "bench-key"})
    with app.app_context():
        session = get_db().session()
        try:
            for start in range(0, count, 500):
                for n in range(start, min(count, start + 500)):
                    customer = Customer(external_id=f"out-{n}", currency="USD")
                    session.add(customer)
                    session.flush()
                    session.add(
                        Subscription(
                            external_id=f"out-sub-{n}", customer_id=customer.id, plan_code="p"
                        )
                    )
                    create_wallet(
                        session,
                        WalletInput(external_customer_id=f"out-{n}", rate_amount=1),  # type: ignore[arg-type]
                        _now(),
                        created_by="system",
                    )
                session.commit()
        finally:
            session.close()
        get_db().engine.dispose()  # type: ignore[union-attr]


def _now() -> Any:
    from gateway.db import utcnow

    return utcnow()


def _register(url: str, endpoint_url: str) -> str:
    from gateway.db import new_id
    from gateway.models import WebhookEndpoint
    from gateway.webhook_endpoints import new_secret

    engine = create_engine(url)
    endpoint_id = new_id("we")
    with engine.begin() as conn:
        conn.execute(
            WebhookEndpoint.__table__.insert().values(  # type: ignore[attr-defined]
                id=endpoint_id,
                url=endpoint_url,
                secret=new_secret(),
                status="enabled",
                created_at=text("now() - interval '1 hour'"),
            )
        )
    engine.dispose()
    return endpoint_id


def _reset_outbox(url: str) -> None:
    """Every event undelivered again, no endpoint: the next run starts from scratch."""
    from gateway.models import DeliveryAttempt, Event, EventDelivery, WebhookEndpoint

    engine = create_engine(url)
    with engine.begin() as conn:
        conn.execute(DeliveryAttempt.__table__.delete())  # type: ignore[attr-defined]
        conn.execute(EventDelivery.__table__.delete())  # type: ignore[attr-defined]
        conn.execute(WebhookEndpoint.__table__.delete())  # type: ignore[attr-defined]
        conn.execute(update(Event).values(dispatched=False))
    engine.dispose()


def _delivered(url: str, endpoint_id: str) -> int:
    from gateway.models import EventDelivery

    engine = create_engine(url)
    with engine.connect() as conn:
        count = conn.execute(
            select(func.count()).where(
                EventDelivery.endpoint_id == endpoint_id, EventDelivery.status == "delivered"
            )
        ).scalar_one()
    engine.dispose()
    return int(count)


def _once(url: str) -> tuple[float, str]:
    started = time.monotonic()
    done = subprocess.run(
        [str(BIN / "gateway"), "worker", "--once"],
        cwd=ROOT, env=_env(url), capture_output=True, text=True, check=True,
    )  # fmt: skip
    return time.monotonic() - started, done.stdout


def _until_delivered(url: str, endpoint_id: str, count: int, limit: float = 600) -> float:
    """Run `gateway worker` until `endpoint_id` has `count` deliveries; seconds taken."""
    started = time.monotonic()
    process = subprocess.Popen(
        [str(BIN / "gateway"), "worker"], cwd=ROOT, env=_env(url),
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True,
    )  # fmt: skip
    try:
        while _delivered(url, endpoint_id) < count:
            if time.monotonic() - started > limit:
                raise RuntimeError("the healthy endpoint was not served in time")
            time.sleep(0.05)
        return time.monotonic() - started
    finally:
        os.killpg(process.pid, signal.SIGTERM)
        process.wait(timeout=60)


def run(*, events: int = 3000) -> ScenarioResult:
    url = bench_database_url()
    fresh_database(url)
    _seed_events(url, events)
    load = os.getloadavg()[0]
    receiver_env = {"BENCH_RECEIVER_SLOW_SECONDS": str(TIMEOUT_SECONDS * 3)}
    with (
        # gthread workers keep connections alive, as a production receiver does.
        gunicorn(
            "bench.receiver_app:app", receiver_env, workers=2, threads=4, health_path="/fast"
        ) as fast_base,
        gunicorn(
            "bench.receiver_app:app", receiver_env, workers=1, threads=32, health_path="/fast"
        ) as slow_base,
    ):
        # 1. throughput of one worker, against its own start-up (same run)
        idle, _ = _once(url)  # fans the events out to no endpoint: reset below
        _reset_outbox(url)
        healthy = _register(url, f"{fast_base}/fast")
        elapsed, output = _once(url)
        delivered = _delivered(url, healthy)
        assert delivered == events, (delivered, output)
        per_second = events / max(elapsed - idle, 1e-9)

        # 2. a healthy endpoint alone, then beside one that always times out
        _reset_outbox(url)
        alone_endpoint = _register(url, f"{fast_base}/fast")
        alone = _until_delivered(url, alone_endpoint, events)
        _reset_outbox(url)
        _register(url, f"{slow_base}/slow")
        beside_endpoint = _register(url, f"{fast_base}/fast")
        beside = _until_delivered(url, beside_endpoint, events)

    ratio = alone / beside if beside else 0.0
    rows = [
        ["`gateway worker --once`, nothing to do (start-up)", f"{idle:.2f} s", ""],
        [f"`gateway worker --once`, {events} events to one endpoint", f"{elapsed:.2f} s",
         f"**{per_second:.0f} events/s** (start-up excluded)"],
        [f"`gateway worker`, {events} events, healthy endpoint alone", f"{alone:.2f} s",
         f"{events / alone:.0f} events/s"],
        [f"`gateway worker`, {events} events, healthy endpoint beside one timing out "
         f"({TIMEOUT_SECONDS} s)", f"{beside:.2f} s",
         f"{events / beside:.0f} events/s, **{ratio:.2f}x** of alone"],
    ]  # fmt: skip
    markdown = (
        "One worker process, PostgreSQL, the receiver under gunicorn on loopback; the "
        f"timing-out receiver sleeps {TIMEOUT_SECONDS * 3} s, the worker's timeout is "
        f"{TIMEOUT_SECONDS} s.\n\n" + markdown_table(["run", "time", "throughput"], rows) + "\n"
    )
    return ScenarioResult(
        name="outgoing",
        title="6. Outgoing events (gateway worker)",
        markdown=markdown,
        targets=[
            Target(
                "worker throughput, receiver answering at once",
                f">= {THROUGHPUT_TARGET:.0f} events/s",
                f"{per_second:.0f} events/s",
                per_second >= THROUGHPUT_TARGET,
            ),
            Target(
                "healthy endpoint beside one timing out, vs alone",
                "not slowed (>= 0.8x)",
                f"{ratio:.2f}x",
                ratio >= 0.8,
            ),
        ],
        figures={
            "events": events,
            "startup_s": round(idle, 3),
            "once_s": round(elapsed, 3),
            "events_per_s": round(per_second, 1),
            "healthy_alone_s": round(alone, 3),
            "healthy_beside_timeouts_s": round(beside, 3),
            "isolation_ratio": round(ratio, 3),
        },
        environment=environment(load_average_at_start=round(load, 2)),
    )
