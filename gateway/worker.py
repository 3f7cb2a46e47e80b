"""`gateway worker`: delivers outgoing events and runs the periodic duties.

A loop, about once a second: the duties that are due (interval top-ups and the expiry
sweep every minute, the invoices of automatic top-ups every 5 seconds; the
Idempotency-Key, outgoing-event and stored-Stripe-event purges every hour; more join
`DUTIES`), then
the fan-out of new events (`delivery.dispatch`), then one delivery round per endpoint
with something due, each endpoint's queue in its own thread (at most
`OUTGOING_WEBHOOK_CONCURRENCY` at once, never two for one endpoint in one process), so
an endpoint that fails or times out delays only itself.

`request_stop` (SIGTERM, SIGINT) lets every thread finish the attempt in hand, record
it and return; nothing is started after it. Several workers, on one host or many,
share the work through the database (`SKIP LOCKED` on PostgreSQL).
"""

from __future__ import annotations

import functools
import logging
import threading
import time
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import datetime

from sqlalchemy.engine import Connection

from gateway import delivery
from gateway.db import Database, count_in_batches, in_batches, utcnow
from gateway.providers import provider_if_configured
from gateway.settings import Settings

log = logging.getLogger(__name__)

PURGE_BATCH_SIZE = 1000
DISPATCH_BATCH_SIZE = 500


@dataclass(frozen=True)
class Duty:
    """A periodic job of the worker: `run(db, settings, now)` returns a line for the
    log (or None when there was nothing to do)."""

    name: str
    every_seconds: int
    run: Callable[[Database, Settings, datetime], str | None]


def _expire_wallets(db: Database, settings: Settings, now: datetime) -> str | None:
    from gateway.expiry import expire_wallets

    result = expire_wallets(
        db, now=now, batch_size=settings.expiry_batch_size, provider=provider_if_configured()
    )
    return f"expired {result.expired} wallet(s)" if result.expired else None


def _purge_idempotency_keys(db: Database, _settings: Settings, now: datetime) -> str | None:
    from gateway.api.idempotency import purge_expired

    purged = count_in_batches(
        db, lambda session: purge_expired(session, now, PURGE_BATCH_SIZE), PURGE_BATCH_SIZE
    )
    return f"purged {purged} expired idempotency key(s)" if purged else None


def _purge_events(db: Database, settings: Settings, now: datetime) -> str | None:
    days = settings.event_retention_days
    purged = count_in_batches(
        db,
        lambda session: delivery.purge_events(session, now, days, PURGE_BATCH_SIZE),
        PURGE_BATCH_SIZE,
    )
    return f"purged {purged} event(s) past EVENT_RETENTION_DAYS" if purged else None


def _purge_stripe_events(db: Database, settings: Settings, now: datetime) -> str | None:
    from datetime import timedelta

    from gateway.webhooks import purge_events

    purged = purge_events(
        db, now=now, retention=timedelta(days=settings.webhook_event_retention_days)
    )
    return f"purged {purged} stored Stripe event(s)" if purged else None


# Automatic top-ups (gateway.topups): due interval rules a batch per transaction; then
# the invoices of automatic purchases, a bounded number per round so that deliveries
# and the other duties never wait long behind Stripe.
TOP_UP_BATCH_SIZE = 200
TOP_UP_INVOICES_PER_ROUND = 50


def _interval_top_ups(db: Database, _settings: Settings, now: datetime) -> str | None:
    from gateway.topups import buy_all_due_interval_top_ups

    with db.session() as session:  # it commits each batch itself
        run = buy_all_due_interval_top_ups(session, now, TOP_UP_BATCH_SIZE)
    if not run.rules:
        return None
    return f"{run.started} interval top-up(s) started, {len(run.skipped)} due rule(s) skipped"


def _complete_top_ups(db: Database, _settings: Settings, _now: datetime) -> str | None:
    from gateway.topups import complete_automatic_purchases

    provider = provider_if_configured()
    if provider is None:
        return None  # no automatic purchase can exist without one (rules need it)
    with db.session() as session:  # it commits around each provider call itself
        run = complete_automatic_purchases(session, provider, limit=TOP_UP_INVOICES_PER_ROUND)
    if run.unavailable:
        return f"{run.completed} top-up invoice(s) made; the provider is unavailable, the rest wait"
    if not (run.completed or run.rejected):
        return None
    return f"{run.completed} top-up invoice(s) made, {run.rejected} refused (rules paused)"


DUTIES: list[Duty] = [
    Duty("interval-top-ups", 60, _interval_top_ups),
    Duty("complete-top-ups", 5, _complete_top_ups),
    Duty("expire-wallets", 60, _expire_wallets),
    Duty("purge-idempotency-keys", 3600, _purge_idempotency_keys),
    Duty("purge-events", 3600, _purge_events),
    Duty("purge-stripe-events", 3600, _purge_stripe_events),
]


@dataclass
class RoundSummary:
    """What a worker did (one `run_once`, or a loop so far)."""

    dispatched: int = 0
    delivered: int = 0
    failed_attempts: int = 0
    gave_up: int = 0
    duties: dict[str, str | None] = field(default_factory=dict)

    def add(self, run: delivery.EndpointRun) -> None:
        self.delivered += run.delivered
        self.failed_attempts += run.failed_attempts
        self.gave_up += run.gave_up


class Worker:
    def __init__(
        self,
        db: Database,
        settings: Settings,
        *,
        concurrency: int | None = None,
        tick_seconds: float = 1.0,
        clock: Callable[[], datetime] = utcnow,
        sender: delivery.Sender | None = None,
        duties: list[Duty] | None = None,
    ) -> None:
        self.db = db
        self.settings = settings
        self.policy = delivery.DeliveryPolicy(
            settings.outgoing_webhook_retry_schedule, settings.outgoing_webhook_timeout_seconds
        )
        self.sender = sender or delivery.Sender(settings.outgoing_webhook_timeout_seconds)
        self.clock = clock
        self.tick_seconds = tick_seconds
        self.duties = list(DUTIES if duties is None else duties)
        concurrency = concurrency or settings.outgoing_webhook_concurrency
        # Sessions bound to one connection (tests) cannot be shared between threads.
        self.threaded = concurrency > 1 and not isinstance(db.engine, Connection)
        self._pool = ThreadPoolExecutor(concurrency, "deliver") if self.threaded else None
        self._stop = threading.Event()
        self._busy: set[str] = set()
        self._busy_lock = threading.Lock()
        self._next_duty: dict[str, float] = {}
        self.summary = RoundSummary()
        self._summary_lock = threading.Lock()

    # --- control -----------------------------------------------------------------

    def request_stop(self) -> None:
        """Finish the attempts in hand, start nothing new."""
        self._stop.set()

    @property
    def stopping(self) -> bool:
        return self._stop.is_set()

    def close(self) -> None:
        if self._pool is not None:
            self._pool.shutdown(wait=True)
        self.sender.close()

    # --- the loop ------------------------------------------------------------------

    def run_forever(self) -> None:
        log.info(
            "worker started: %s delivery thread(s), duties %s",
            self._pool._max_workers if self._pool is not None else 1,
            ", ".join(f"{duty.name} every {duty.every_seconds}s" for duty in self.duties),
        )
        try:
            while not self.stopping:
                try:
                    self._run_due_duties(force=False)
                    self._dispatch_all()
                    self._start_deliveries()
                except Exception:  # a database hiccup must not end the worker
                    log.exception("worker round failed; trying again")
                self._stop.wait(self.tick_seconds)
        finally:
            self.close()
            log.info("worker stopped")

    def run_once(self) -> RoundSummary:
        """Everything due now: every duty, the fan-out, and each endpoint's queue until
        nothing in it is due (a failed attempt is rescheduled, so this ends)."""
        try:
            self._run_due_duties(force=True)
            self._dispatch_all()
            endpoints = self._due_endpoints()
            if self._pool is not None:
                futures = [self._pool.submit(self._drain, endpoint) for endpoint in endpoints]
                for future in futures:
                    future.result()
            else:
                for endpoint in endpoints:
                    self._drain(endpoint)
        finally:
            self.close()
        return self.summary

    # --- the parts -----------------------------------------------------------------

    def _run_due_duties(self, *, force: bool) -> None:
        for duty in self.duties:
            if self.stopping:
                return
            if not force and time.monotonic() < self._next_duty.get(duty.name, 0.0):
                continue
            self._next_duty[duty.name] = time.monotonic() + duty.every_seconds
            try:
                line = duty.run(self.db, self.settings, self.clock())
            except Exception:
                log.exception("duty %s failed; it runs again at its next time", duty.name)
                self.summary.duties[duty.name] = "failed"
                continue
            self.summary.duties[duty.name] = line
            if line:
                log.info("%s: %s", duty.name, line)

    def _dispatch_all(self) -> None:
        if self.stopping:
            return
        for count in in_batches(
            self.db,
            lambda session: delivery.dispatch(session, self.clock(), DISPATCH_BATCH_SIZE),
            DISPATCH_BATCH_SIZE,
            handled=int,
        ):
            self.summary.dispatched += count
            if self.stopping:
                return

    def _due_endpoints(self) -> list[str]:
        with self.db.session() as session:  # a read: closing it rolls back
            return delivery.due_endpoint_ids(session, self.clock())

    def _start_deliveries(self) -> None:
        for endpoint_id in self._due_endpoints():
            with self._busy_lock:
                if endpoint_id in self._busy:
                    continue
                self._busy.add(endpoint_id)
            if self._pool is None:
                try:
                    self._drain(endpoint_id)
                finally:
                    self._release(endpoint_id)
                continue
            future = self._pool.submit(self._drain, endpoint_id)
            future.add_done_callback(functools.partial(self._finished, endpoint_id))

    def _finished(self, endpoint_id: str, future: Future[None]) -> None:
        self._release(endpoint_id)
        error = future.exception()
        if error is not None:
            log.error("delivering to endpoint %s failed: %r", endpoint_id, error)

    def _release(self, endpoint_id: str) -> None:
        with self._busy_lock:
            self._busy.discard(endpoint_id)

    def _drain(self, endpoint_id: str) -> None:
        """Rounds of `endpoint_id`'s due deliveries until none is due or an attempt
        fails: the endpoint is unwell, the rest of its queue waits for the next tick
        (and the failed delivery for its retry)."""
        while not self.stopping:
            run = delivery.deliver_due(
                self.db.session,
                self.sender,
                endpoint_id,
                self.policy,
                clock=self.clock,
                should_stop=lambda: self.stopping,
            )
            with self._summary_lock:
                self.summary.add(run)
            if run.attempts == 0 or run.failed_attempts:
                return
