"""Delivering outgoing events to webhook endpoints (run by `gateway worker`).

Two steps, both safe with any number of workers:

1. `dispatch`: events not yet dispatched are fanned out, one `event_deliveries` row
   per enabled endpoint that wants the type and existed when the event was written.
   A batch is locked with `SKIP LOCKED` on PostgreSQL, so workers share the work.
2. `deliver_due` for one endpoint: its due deliveries (its queue) are POSTed one after
   the other, signed with the Standard Webhooks scheme (`standardwebhooks`: headers
   `webhook-id` = the event id, `webhook-timestamp`, `webhook-signature`). A 2xx
   answer is delivered; anything else, a connection error or the timeout is retried
   after the next delay of the schedule, and once the schedule is spent the delivery
   is `failed`. Every attempt is recorded with its status code (or error) and the
   first bytes of the answer. Redirects are not followed; at most
   `MAX_RESPONSE_BYTES` of an answer are read.

On PostgreSQL the rows being sent stay locked (`FOR UPDATE SKIP LOCKED`) in a
transaction that also records the outcomes, so two workers never send one attempt,
and a worker killed between claiming and recording leaves the rows pending (its
transaction rolls back): the next run sends them again, with the same `webhook-id`
(at least once). SQLite has no row locks and serialises writers, so there a batch is
read, sent with no transaction open, then recorded; run one worker on SQLite.

Each endpoint's queue is drained by one thread at a time (`gateway.worker`): an
endpoint that fails or times out delays only its own queue. After a failed attempt
the rest of that endpoint's batch waits for the next round.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any, cast

import urllib3
from sqlalchemy import Table, and_, bindparam, delete, exists, func, insert, select, update
from sqlalchemy.engine import CursorResult
from sqlalchemy.orm import Session
from standardwebhooks.webhooks import Webhook

from gateway.db import new_id
from gateway.models import (
    DeliveryAttempt,
    DeliveryStatus,
    Event,
    EventDelivery,
    WebhookEndpoint,
    WebhookEndpointStatus,
)

log = logging.getLogger(__name__)

MAX_RESPONSE_BYTES = 4096
USER_AGENT = "credit-gateway-webhooks/1"
_ERROR_LIMIT = 500

_deliveries = cast(Table, EventDelivery.__table__)
_attempts = cast(Table, DeliveryAttempt.__table__)
_events = cast(Table, Event.__table__)


@dataclass(frozen=True)
class DeliveryPolicy:
    retry_schedule: tuple[int, ...]
    timeout_seconds: float

    def next_attempt(self, attempts_made: int, now: datetime) -> datetime | None:
        """When to try again after `attempts_made` attempts, or None: give up."""
        if attempts_made > len(self.retry_schedule):
            return None
        return now + timedelta(seconds=self.retry_schedule[attempts_made - 1])


@dataclass(frozen=True)
class Outcome:
    """What one POST came to."""

    status_code: int | None
    error: str | None
    response_body: str | None
    duration_ms: int

    @property
    def delivered(self) -> bool:
        return self.status_code is not None and 200 <= self.status_code < 300


# --- step 1: fan-out ----------------------------------------------------------------


def _wants(event_types: Sequence[str] | None, event_type: str) -> bool:
    return event_types is None or event_type in event_types


def dispatch(session: Session, now: datetime, batch_size: int = 500) -> int:
    """Fan out one batch of undispatched events; returns how many were dispatched.
    The caller commits (and calls again while a full batch came back)."""
    rows = session.execute(
        select(Event.position, Event.id, Event.type, Event.created_at)
        .where(Event.dispatched.is_(False))
        .order_by(Event.position)
        .limit(batch_size)
        .with_for_update(skip_locked=True)
    ).all()
    if not rows:
        return 0
    endpoints = session.execute(
        select(WebhookEndpoint.id, WebhookEndpoint.event_types, WebhookEndpoint.created_at).where(
            WebhookEndpoint.status == WebhookEndpointStatus.ENABLED
        )
    ).all()
    deliveries = [
        {
            "id": new_id("dlv"),
            "event_id": row.id,
            "endpoint_id": endpoint.id,
            "status": DeliveryStatus.PENDING.value,
            "attempts": 0,
            "next_attempt_at": now,
            "created_at": now,
        }
        for row in rows
        for endpoint in endpoints
        if endpoint.created_at <= row.created_at and _wants(endpoint.event_types, row.type)
    ]
    conn = session.connection()
    if deliveries:
        conn.execute(insert(_deliveries), deliveries)
    conn.execute(
        update(_events)
        .where(_events.c.position.in_([row.position for row in rows]))
        .values(dispatched=True)
    )
    return len(rows)


# --- step 2: sending ----------------------------------------------------------------


def due_endpoint_ids(session: Session, now: datetime) -> list[str]:
    """Enabled endpoints with at least one delivery due now."""
    return list(
        session.execute(
            select(EventDelivery.endpoint_id)
            .join(WebhookEndpoint, WebhookEndpoint.id == EventDelivery.endpoint_id)
            .where(
                EventDelivery.status == DeliveryStatus.PENDING,
                EventDelivery.next_attempt_at <= now,
                WebhookEndpoint.status == WebhookEndpointStatus.ENABLED,
            )
            .distinct()
        ).scalars()
    )


def next_due_at(session: Session) -> datetime | None:
    """The earliest time a pending delivery to an enabled endpoint is due."""
    return session.execute(
        select(func.min(EventDelivery.next_attempt_at))
        .join(WebhookEndpoint, WebhookEndpoint.id == EventDelivery.endpoint_id)
        .where(
            EventDelivery.status == DeliveryStatus.PENDING,
            WebhookEndpoint.status == WebhookEndpointStatus.ENABLED,
        )
    ).scalar_one_or_none()


class Sender:
    """POSTs signed events; one per worker process (its connection pools are shared by
    the worker's threads, one pool per endpoint host)."""

    def __init__(self, timeout_seconds: float) -> None:
        self._timeout = urllib3.Timeout(connect=timeout_seconds, read=timeout_seconds)
        self._http = urllib3.PoolManager(
            num_pools=64, maxsize=4, retries=False, timeout=self._timeout
        )
        self._signers: dict[str, Webhook] = {}

    def _signer(self, secret: str) -> Webhook:
        signer = self._signers.get(secret)
        if signer is None:
            signer = self._signers[secret] = Webhook(secret)
        return signer

    def headers(self, secret: str, event_id: str, body: str, at: datetime) -> dict[str, str]:
        return {
            "content-type": "application/json",
            "user-agent": USER_AGENT,
            "webhook-id": event_id,
            "webhook-timestamp": str(int(at.timestamp())),
            "webhook-signature": self._signer(secret).sign(event_id, at, body),
        }

    def send(self, url: str, secret: str, event_id: str, body: str, at: datetime) -> Outcome:
        started = time.monotonic()
        payload = body.encode("utf-8")
        try:
            response = self._http.request(
                "POST",
                url,
                body=payload,
                headers=self.headers(secret, event_id, body, at),
                redirect=False,
                retries=False,
                preload_content=False,
                timeout=self._timeout,
            )
        except (urllib3.exceptions.HTTPError, OSError, ValueError) as exc:
            return Outcome(None, _describe(exc), None, _elapsed_ms(started))
        try:
            excerpt = response.read(MAX_RESPONSE_BYTES + 1)
            text = excerpt[:MAX_RESPONSE_BYTES].decode("utf-8", errors="replace")
            status = response.status
        except (urllib3.exceptions.HTTPError, OSError) as exc:
            response.close()
            return Outcome(response.status, _describe(exc), None, _elapsed_ms(started))
        if len(excerpt) > MAX_RESPONSE_BYTES:
            response.close()  # the rest is not read: this connection is not reused
        else:
            response.release_conn()
        return Outcome(status, None, text, _elapsed_ms(started))

    def close(self) -> None:
        self._http.clear()


def _describe(exc: BaseException) -> str:
    reason = getattr(exc, "reason", None)
    text = f"{type(exc).__name__}: {reason or exc}"
    return text[:_ERROR_LIMIT]


def _elapsed_ms(started: float) -> int:
    return int((time.monotonic() - started) * 1000)


_DUE = (
    select(
        _deliveries.c.id,
        _deliveries.c.attempts,
        _events.c.id.label("event_id"),
        _events.c.body,
    )
    .join(_events, _events.c.id == _deliveries.c.event_id)
    .where(
        _deliveries.c.endpoint_id == bindparam("endpoint_id"),
        _deliveries.c.status == DeliveryStatus.PENDING.value,
        _deliveries.c.next_attempt_at <= bindparam("now"),
    )
    .order_by(_deliveries.c.next_attempt_at, _events.c.position)
    .limit(bindparam("batch_size"))
)
_INSERT_ATTEMPT = insert(_attempts)
_RECORD = (
    update(_deliveries)
    .where(
        _deliveries.c.id == bindparam("d_id"),
        _deliveries.c.attempts == bindparam("d_attempts_before"),
        _deliveries.c.status == DeliveryStatus.PENDING.value,
    )
    .values(
        attempts=bindparam("d_attempts"),
        status=bindparam("d_status"),
        next_attempt_at=bindparam("d_next"),
        last_attempt_at=bindparam("d_at"),
        delivered_at=bindparam("d_delivered_at"),
    )
)


@dataclass
class EndpointRun:
    delivered: int = 0
    failed_attempts: int = 0
    gave_up: int = 0

    @property
    def attempts(self) -> int:
        return self.delivered + self.failed_attempts


def deliver_due(
    new_session: Callable[[], Session],
    sender: Sender,
    endpoint_id: str,
    policy: DeliveryPolicy,
    *,
    clock: Callable[[], datetime],
    batch_size: int = 50,
    should_stop: Callable[[], bool] = lambda: False,
) -> EndpointRun:
    """Send one batch of `endpoint_id`'s due deliveries, in order; returns what came of
    them. Stops after a failed attempt (the endpoint is unwell: the rest of its batch
    waits for the next round) or when `should_stop` says so between two attempts."""
    run = EndpointRun()
    session = new_session()
    try:
        endpoint = session.get(WebhookEndpoint, endpoint_id)
        if endpoint is None or endpoint.status != WebhookEndpointStatus.ENABLED:
            session.rollback()
            return run
        url, secret = endpoint.url, endpoint.secret
        conn = session.connection()
        hold_locks = conn.dialect.name == "postgresql"
        statement = _DUE.with_for_update(of=_deliveries, skip_locked=True) if hold_locks else _DUE
        rows = conn.execute(
            statement, {"endpoint_id": endpoint_id, "now": clock(), "batch_size": batch_size}
        ).all()
        if not hold_locks:
            session.commit()  # SQLite: no transaction stays open while sending
        results: list[tuple[Any, datetime, Outcome]] = []
        for row in rows:
            if should_stop():
                break
            at = clock()
            outcome = sender.send(url, secret, row.event_id, row.body, at)
            results.append((row, at, outcome))
            if not outcome.delivered:
                log.info(
                    "event %s to endpoint %s: attempt %d failed (%s)",
                    row.event_id,
                    endpoint_id,
                    row.attempts + 1,
                    outcome.error or f"HTTP {outcome.status_code}",
                )
                break
        _record(session, results, policy, run)
        session.commit()
    except BaseException:
        session.rollback()
        raise
    finally:
        session.close()
    return run


def _record(
    session: Session,
    results: Sequence[tuple[Any, datetime, Outcome]],
    policy: DeliveryPolicy,
    run: EndpointRun,
) -> None:
    if not results:
        return
    conn = session.connection()
    conn.execute(
        _INSERT_ATTEMPT,
        [
            {
                "delivery_id": row.id,
                "attempted_at": at,
                "status_code": outcome.status_code,
                "error": outcome.error,
                "response_body": outcome.response_body,
                "duration_ms": outcome.duration_ms,
            }
            for row, at, outcome in results
        ],
    )
    updates = []
    for row, at, outcome in results:
        attempts = row.attempts + 1
        if outcome.delivered:
            status, next_at, delivered_at = DeliveryStatus.DELIVERED, None, at
            run.delivered += 1
        else:
            next_at = policy.next_attempt(attempts, at)
            status = DeliveryStatus.PENDING if next_at is not None else DeliveryStatus.FAILED
            delivered_at = None
            run.failed_attempts += 1
            run.gave_up += status == DeliveryStatus.FAILED
        updates.append(
            {
                "d_id": row.id,
                "d_attempts_before": row.attempts,
                "d_attempts": attempts,
                "d_status": status.value,
                "d_next": next_at,
                "d_at": at,
                "d_delivered_at": delivered_at,
            }
        )
    conn.execute(_RECORD, updates)


# --- operations ----------------------------------------------------------------------


def redeliver(session: Session, event_id: str, now: datetime) -> int:
    """Send event `event_id` again to every endpoint it went to (delivered or failed):
    each delivery is pending again, due now, with a fresh retry schedule. Returns the
    number of deliveries queued."""
    result = session.execute(
        update(EventDelivery)
        .where(EventDelivery.event_id == event_id)
        .where(
            EventDelivery.endpoint_id.in_(
                select(WebhookEndpoint.id).where(
                    WebhookEndpoint.status == WebhookEndpointStatus.ENABLED
                )
            )
        )
        .values(status=DeliveryStatus.PENDING, attempts=0, next_attempt_at=now)
        .execution_options(synchronize_session=False)
    )
    return int(cast(CursorResult[Any], result).rowcount or 0)


def redeliver_failed(session: Session, now: datetime) -> int:
    """Every `failed` delivery to an enabled endpoint pending again, due now."""
    result = session.execute(
        update(EventDelivery)
        .where(EventDelivery.status == DeliveryStatus.FAILED)
        .where(
            EventDelivery.endpoint_id.in_(
                select(WebhookEndpoint.id).where(
                    WebhookEndpoint.status == WebhookEndpointStatus.ENABLED
                )
            )
        )
        .values(status=DeliveryStatus.PENDING, attempts=0, next_attempt_at=now)
        .execution_options(synchronize_session=False)
    )
    return int(cast(CursorResult[Any], result).rowcount or 0)


def purge_events(session: Session, now: datetime, retention_days: int, batch_size: int) -> int:
    """Delete one batch of events older than the retention with nothing left to send
    (no pending delivery to an enabled endpoint); their deliveries and attempts go with
    them. Returns the number deleted; the caller commits and calls again."""
    cutoff = now - timedelta(days=retention_days)
    still_owed = exists().where(
        and_(
            EventDelivery.event_id == Event.id,
            EventDelivery.status == DeliveryStatus.PENDING,
            EventDelivery.endpoint_id.in_(
                select(WebhookEndpoint.id).where(
                    WebhookEndpoint.status == WebhookEndpointStatus.ENABLED
                )
            ),
        )
    )
    ids = list(
        session.execute(
            select(Event.id)
            .where(Event.created_at < cutoff, Event.dispatched.is_(True), ~still_owed)
            .order_by(Event.position)
            .limit(batch_size)
            .with_for_update(skip_locked=True)
        ).scalars()
    )
    if not ids:
        return 0
    deliveries = select(EventDelivery.id).where(EventDelivery.event_id.in_(ids))
    session.execute(delete(DeliveryAttempt).where(DeliveryAttempt.delivery_id.in_(deliveries)))
    session.execute(delete(EventDelivery).where(EventDelivery.event_id.in_(ids)))
    session.execute(delete(Event).where(Event.id.in_(ids)))
    return len(ids)


def event_exists(session: Session, event_id: str) -> bool:
    return session.execute(select(Event.id).where(Event.id == event_id)).first() is not None
