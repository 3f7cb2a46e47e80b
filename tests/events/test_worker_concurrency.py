"""`gateway worker` for real on PostgreSQL: several workers at once, a slow endpoint
beside a healthy one, and worker processes killed or stopped mid-delivery."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from collections import Counter
from pathlib import Path
from typing import Any

import pytest
from flask import Flask
from sqlalchemy import func, select
from sqlalchemy.engine import Engine

from gateway.db import get_db
from gateway.models import DeliveryAttempt, EventDelivery
from gateway.settings import PROJECT_ROOT, Settings
from gateway.worker import Worker
from tests.support.api import create_wallet, registered_endpoint, subscribed_customer
from tests.support.config import TEST_SETTINGS
from tests.support.receiver import Behaviour, running_receiver
from tests.support.threads import app_session

pytestmark = pytest.mark.postgres


def make_wallets(app: Flask, count: int) -> None:
    client = app.test_client()
    for _ in range(count):
        create_wallet(client, subscribed_customer(client))


def settings_of(app: Flask, **overrides: Any) -> Settings:
    settings: Settings = app.extensions["settings"]
    return Settings(**{**settings.__dict__, **overrides})


def count_rows(app: Flask, model: Any, *where: Any) -> int:
    with app_session(app) as session:
        return int(
            session.execute(select(func.count()).select_from(model).where(*where)).scalar_one()
        )


def test_concurrent_workers_never_send_one_attempt_twice(committed_app: Flask) -> None:
    with running_receiver() as receiver:
        registered_endpoint(
            committed_app.test_client(), receiver.url, event_types=["wallet.created"]
        )
        make_wallets(committed_app, 120)
        barrier = threading.Barrier(4)
        errors: list[BaseException] = []

        def work() -> None:
            try:
                with committed_app.app_context():
                    worker = Worker(get_db(), settings_of(committed_app), duties=[])
                    barrier.wait(timeout=10)
                    worker.run_once()
            except BaseException as exc:  # pragma: no cover - reported below
                errors.append(exc)

        threads = [threading.Thread(target=work) for _ in range(4)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(timeout=120)
        assert not errors, errors
        # Whatever one run left (rows another held), a last run sends.
        with committed_app.app_context():
            Worker(get_db(), settings_of(committed_app), duties=[]).run_once()

        counts = Counter(receiver.ids())
        assert len(counts) == 120
        assert set(counts.values()) == {1}, [k for k, v in counts.items() if v > 1]
        assert count_rows(committed_app, DeliveryAttempt) == 120
        assert count_rows(committed_app, EventDelivery, EventDelivery.status == "delivered") == 120


def test_a_timing_out_endpoint_does_not_delay_a_healthy_one(committed_app: Flask) -> None:
    with running_receiver(Behaviour(delay=3.0)) as slow, running_receiver() as healthy:
        registered_endpoint(committed_app.test_client(), slow.url, event_types=["wallet.created"])
        registered_endpoint(
            committed_app.test_client(), healthy.url, event_types=["wallet.created"]
        )
        make_wallets(committed_app, 30)
        with committed_app.app_context():
            worker = Worker(
                get_db(),
                settings_of(committed_app, outgoing_webhook_timeout_seconds=2),
                duties=[],
                tick_seconds=0.1,
            )
            loop = threading.Thread(target=worker.run_forever)
            started = time.monotonic()
            loop.start()
            try:
                healthy.wait_for(30, timeout=20)
                healthy_done = time.monotonic() - started
            finally:
                worker.request_stop()
                loop.join(timeout=30)
        assert len(healthy.received) == 30
        # The healthy queue did not wait for the slow one's 2 s timeouts.
        assert healthy_done < 2.0, healthy_done
        assert len(slow.received) <= 2


def _worker_process(engine: Engine, *args: str) -> subprocess.Popen[bytes]:
    env = {
        **os.environ,
        "DATABASE_URL": engine.url.render_as_string(hide_password=False),
        "GATEWAY_API_KEYS": TEST_SETTINGS["GATEWAY_API_KEYS"],
        "OUTGOING_WEBHOOKS_ALLOW_HTTP": "true",
        "OUTGOING_WEBHOOK_TIMEOUT_SECONDS": "10",
        "STRIPE_SECRET_KEY": "",
    }
    gateway = str(Path(sys.executable).parent / "gateway")
    return subprocess.Popen(  # noqa: S603
        [gateway, "worker", *args], cwd=PROJECT_ROOT, env=env,
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
    )  # fmt: skip


def test_a_worker_killed_mid_delivery_loses_nothing(
    committed_app: Flask, postgres_engine: Engine
) -> None:
    hold = threading.Event()
    with running_receiver(Behaviour(hold=hold)) as receiver:
        registered_endpoint(
            committed_app.test_client(), receiver.url, event_types=["wallet.created"]
        )
        make_wallets(committed_app, 1)
        process = _worker_process(postgres_engine)
        try:
            # The request arrived and waits for its answer: the worker claimed the
            # delivery and sent it, and has recorded nothing yet.
            assert receiver.wait_for(1, timeout=120)
            process.send_signal(signal.SIGKILL)
            process.wait(timeout=10)
        finally:
            if process.poll() is None:
                process.kill()
        hold.set()
        assert count_rows(committed_app, EventDelivery, EventDelivery.status == "pending") == 1
        assert count_rows(committed_app, DeliveryAttempt) == 0
        receiver.behaviour = Behaviour()
        once = _worker_process(postgres_engine, "--once")
        output = once.communicate(timeout=60)[0].decode()
        assert once.returncode == 0, output
        assert "delivered 1" in output
        assert count_rows(committed_app, EventDelivery, EventDelivery.status == "delivered") == 1
        first, second = receiver.ids()
        assert first == second  # the same event, the same webhook-id, sent again


def test_sigterm_finishes_the_attempt_in_hand(
    committed_app: Flask, postgres_engine: Engine
) -> None:
    with running_receiver(Behaviour(delay=1.5)) as receiver:
        registered_endpoint(
            committed_app.test_client(), receiver.url, event_types=["wallet.created"]
        )
        make_wallets(committed_app, 3)
        process = _worker_process(postgres_engine)
        try:
            receiver.wait_for(1, timeout=120)
            process.send_signal(signal.SIGTERM)
            output = process.communicate(timeout=30)[0].decode()
        finally:
            if process.poll() is None:
                process.kill()
        assert process.returncode == 0, output
        assert "SIGTERM" in output
        # The attempt in hand was answered and recorded; nothing was started after it.
        assert len(receiver.received) == 1
        assert count_rows(committed_app, DeliveryAttempt) == 1
        assert count_rows(committed_app, EventDelivery, EventDelivery.status == "delivered") == 1
        assert count_rows(committed_app, EventDelivery, EventDelivery.status == "pending") == 2
