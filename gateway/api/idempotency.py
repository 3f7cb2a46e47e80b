"""`Idempotency-Key` on every POST of /api/v1: a retried request acts at most once.

A caller that may retry a POST (timeout, crash, lost answer) sends a key of its
choosing, 1 to 255 characters, unique per operation. Keys are scoped to the API key
that sent them (`g.api_principal`) and remembered for IDEMPOTENCY_KEY_TTL_HOURS
(default 24) after first use; `gateway idempotency purge` deletes expired ones, and
an expired key is treated as never seen.

- Same key, same method, path and body (JSON compared after parsing, so key order
  and spacing do not matter): the first answer is sent again, status and body byte
  for byte, with `Idempotent-Replayed: true`; nothing is executed.
- Same key with another body, method or path: 422 `idempotency_key_reused`.
- Two requests with one key at once never both act. The key's row is claimed in the
  request's own transaction: on PostgreSQL a second request waits on it and then
  replays the first answer; if the first request has committed part of its work
  and is still running (see below), the second gets 409 `idempotency_key_in_progress`.
- Which answers are kept: 2xx and 4xx ones from the view (a 4xx is the answer to
  that request, as with Stripe). Answers with status >= 500 are not kept and the key
  is released, so retrying with the same key executes again (a 503 from the payment
  provider is retryable). A request refused before the view runs (bad key, invalid
  body, 401) stores nothing either, so a corrected body may reuse the key.

Exactly once: the stored answer commits in the same transaction as the view's
work, so either both exist or neither does. A view that commits mid-way (a purchase
commits its row before calling the payment provider) commits the claim with it; the
claim carries `locked_until` (now + IN_PROGRESS_LEASE) and the answer is stored
when the view finishes. Until then the key answers 409; if the process died in
between, a retry after `locked_until` takes the key over and runs the view again,
which must then find and resume its earlier work.

For that, the view sees the key as `flask.g.idempotency_scope`: a
`purchases.RequestScope` while a keyed request runs (its name "<principal>:<key>" and
when this use of the key expires), None otherwise. The name is stable across retries of
the same request by the same API key, so a use case can store it (e.g. a purchase's
`request_key`) and find its earlier work on a retry; work whose key use has expired is
not the request's any more (an expired key counts as unused).
"""

from __future__ import annotations

import hashlib
import json
import logging
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timedelta
from decimal import Decimal
from typing import Any, cast

from flask import Response, g, request
from marshmallow import ValidationError
from sqlalchemy import Table, bindparam, delete, select, update
from sqlalchemy.dialects.postgresql import insert as postgresql_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.orm import Session, SessionTransaction

from gateway.api.errors import ApiError, error_response
from gateway.db import unit_of_work
from gateway.errors import DomainError, IdempotencyKeyInProgress, IdempotencyKeyReused
from gateway.models import IdempotencyKey
from gateway.purchases import RequestScope

log = logging.getLogger(__name__)

KEY_HEADER = "Idempotency-Key"
REPLAYED_HEADER = "Idempotent-Replayed"
MAX_KEY_LENGTH = 255
# How long a claim that was committed mid-request stays exclusive. Far longer than
# any request may run (gunicorn's timeout is 30 s), short enough that a retry after a
# crash is not refused for long.
IN_PROGRESS_LEASE = timedelta(minutes=2)
_CLAIM_ATTEMPTS = 3


@dataclass(frozen=True)
class Claim:
    """A key this request holds: it runs the view and stores the answer."""

    principal: str
    key: str
    locked_until: datetime  # identifies this claim among retries of the same key
    expires_at: datetime  # when this use of the key ends

    @property
    def scope(self) -> RequestScope:
        return RequestScope(f"{self.principal}:{self.key}", self.expires_at)


@dataclass(frozen=True)
class StoredAnswer:
    status: int
    body: str


def requested_key() -> str | None:
    """The request's Idempotency-Key, or None; 422 when it is empty or too long."""
    raw = request.headers.get(KEY_HEADER)
    if raw is None:
        return None
    key = raw.strip()
    if not key or len(key) > MAX_KEY_LENGTH:
        raise ApiError(
            "validation_errors",
            f"{KEY_HEADER} must be 1 to {MAX_KEY_LENGTH} characters",
            {KEY_HEADER: [f"must be 1 to {MAX_KEY_LENGTH} characters"]},
        )
    return key


def _tag_decimal(value: object) -> object:
    if isinstance(value, Decimal):
        return {"$decimal": str(value)}
    raise TypeError(f"unexpected {type(value).__name__} in a parsed body")


def request_fingerprint(raw_body: bytes) -> str:
    """SHA-256 of the body: parsed JSON in a canonical form, else the raw bytes."""
    try:
        parsed = json.loads(raw_body.decode("utf-8"), parse_float=Decimal)
        canonical = json.dumps(
            parsed, sort_keys=True, separators=(",", ":"), default=_tag_decimal
        ).encode()
    except (UnicodeDecodeError, ValueError, RecursionError, TypeError):
        canonical = raw_body
    return hashlib.sha256(canonical).hexdigest()


def execute_once(
    session: Session, key: str, action: Callable[[], Response], *, now: datetime, ttl: timedelta
) -> Response:
    """Run `action` (the view, answering a Response) at most once for this key.

    Runs the whole request as one unit of work on `session`; see the module doc.
    """
    principal: str = g.api_principal
    method = request.method
    path = request.path[:255]
    fingerprint = request_fingerprint(request.get_data(cache=True))
    claim: Claim | None = None
    try:
        with unit_of_work(session):
            outcome = claim_key(
                session,
                principal=principal,
                key=key,
                method=method,
                path=path,
                fingerprint=fingerprint,
                now=now,
                ttl=ttl,
            )
            if isinstance(outcome, StoredAnswer):
                return replay(outcome)
            claim = outcome
            g.idempotency_scope = claim.scope
            return _run_and_record(session, claim, action, now=now, ttl=ttl)
    except Exception:
        if claim is not None:
            _release_quietly(session, claim)
        raise


def claim_key(
    session: Session,
    *,
    principal: str,
    key: str,
    method: str,
    path: str,
    fingerprint: str,
    now: datetime,
    ttl: timedelta,
) -> Claim | StoredAnswer:
    """Take the key for this request, or say what the earlier use of it answered.

    Raises `idempotency_key_reused` (another request used it) or
    `idempotency_key_in_progress` (its first request is still running).
    """
    for _attempt in range(_CLAIM_ATTEMPTS):
        # A new key is one INSERT. On PostgreSQL it waits while another transaction
        # holds the same key uncommitted, and inserts nothing if that one committed.
        lease = now + IN_PROGRESS_LEASE
        claimed = session.execute(
            _CLAIM[session.get_bind().dialect.name],
            {
                "principal": principal,
                "key": key,
                "method": method,
                "path": path,
                "request_fingerprint": fingerprint,
                "locked_until": lease,
                "created_at": now,
                "expires_at": now + ttl,
            },
        ).first()
        if claimed is not None:
            return Claim(principal, key, lease, now + ttl)
        row = _locked_row(session, principal, key)
        if row is None:
            continue  # released or purged since: claim it again
        if row.expires_at <= now:
            # Expired but not purged yet: as if it had never been used.
            _reset(row, method, path, fingerprint, now=now, ttl=ttl)
            session.flush()
            return Claim(principal, key, _lease(row), row.expires_at)
        if (row.method, row.path, row.request_fingerprint) != (method, path, fingerprint):
            raise IdempotencyKeyReused(
                f"this {KEY_HEADER} was used for another request "
                f"({row.method} {row.path}{'' if row.path != path else ' with another body'}); "
                "send a new key for a new request",
                details={KEY_HEADER: ["was used for another request"]},
            )
        if row.response_status is not None and row.response_body is not None:
            return StoredAnswer(row.response_status, row.response_body)
        if row.locked_until is not None and row.locked_until > now:
            raise _in_progress()
        # Its first request committed part of its work and then stopped before it
        # answered (process died): this retry takes the key over and resumes.
        row.locked_until = now + IN_PROGRESS_LEASE
        session.flush()
        return Claim(principal, key, row.locked_until, row.expires_at)
    raise _in_progress()


def replay(answer: StoredAnswer) -> Response:
    response = Response(answer.body, status=answer.status, mimetype="application/json")
    response.headers[REPLAYED_HEADER] = "true"
    return response


def record_answer(
    session: Session, claim: Claim, response: Response, *, now: datetime, ttl: timedelta
) -> None:
    """Keep `response` as the key's answer, in the caller's transaction."""
    recorded = session.execute(
        _RECORD_ANSWER,
        {
            "b_principal": claim.principal,
            "b_key": claim.key,
            "b_locked_until": claim.locked_until,
            "response_status": response.status_code,
            "response_body": response.get_data(as_text=True),
            "locked_until": None,
        },
    ).first()
    if recorded is not None:  # the usual case: the key is still ours
        return
    row = _locked_row(session, claim.principal, claim.key)
    if row is None:
        # The view rolled back its whole transaction, claim included, and then
        # carried on: claim the key again along with what it did afterwards.
        row = IdempotencyKey(principal=claim.principal, key=claim.key)
        _reset(row, request.method, request.path[:255], "", now=now, ttl=ttl)
        row.request_fingerprint = request_fingerprint(request.get_data(cache=True))
        session.add(row)
    elif row.locked_until != claim.locked_until:
        # Another request took the key over (our lease ran out); its answer stands.
        return
    row.response_status = response.status_code
    row.response_body = response.get_data(as_text=True)
    row.locked_until = None
    session.flush()


def release(session: Session, claim: Claim) -> None:
    """Forget a claim that got no answer worth keeping (status >= 500)."""
    session.execute(
        delete(IdempotencyKey).where(
            IdempotencyKey.principal == claim.principal,
            IdempotencyKey.key == claim.key,
            IdempotencyKey.response_status.is_(None),
            IdempotencyKey.locked_until == claim.locked_until,
        )
    )


def purge_expired(session: Session, now: datetime, batch_size: int) -> int:
    """Delete one batch of expired keys; returns how many. The caller commits."""
    ids = (
        session.execute(
            select(IdempotencyKey.id)
            .where(IdempotencyKey.expires_at <= now)
            .order_by(IdempotencyKey.expires_at, IdempotencyKey.id)
            .limit(batch_size)
            .with_for_update(skip_locked=True)
        )
        .scalars()
        .all()
    )
    if ids:
        session.execute(delete(IdempotencyKey).where(IdempotencyKey.id.in_(ids)))
    return len(ids)


def _run_and_record(
    session: Session, claim: Claim, action: Callable[[], Response], *, now: datetime, ttl: timedelta
) -> Response:
    # The view runs in a savepoint so that a refusal (4xx) undoes its work but keeps
    # the claim, and the refusal is stored as the key's answer.
    savepoint = session.begin_nested()
    try:
        response = action()
    except Exception as exc:
        refusal = _refusal_response(exc)
        if refusal is None or refusal.status_code >= 500:
            raise
        _undo_view(session, savepoint)
        record_answer(session, claim, refusal, now=now, ttl=ttl)
        return refusal
    if savepoint.is_active:
        savepoint.commit()
    if response.status_code >= 500:
        release(session, claim)  # not an answer to keep: a retry runs again
    else:
        record_answer(session, claim, response, now=now, ttl=ttl)
    return response


def _undo_view(session: Session, savepoint: SessionTransaction) -> None:
    if savepoint.is_active:
        savepoint.rollback()
    else:
        # The view committed mid-way: undo what it did since its last commit.
        session.rollback()


def _refusal_response(exc: Exception) -> Response | None:
    """The error answer the app would give for `exc`, if it is a known refusal."""
    if isinstance(exc, DomainError | ApiError):
        return error_response(exc.code, exc.message, exc.details)
    if isinstance(exc, ValidationError):
        details: Any = exc.messages if isinstance(exc.messages, dict) else {"_schema": exc.messages}
        return error_response("validation_errors", "the request is not valid", details)
    return None


def _release_quietly(session: Session, claim: Claim) -> None:
    try:
        session.rollback()
        with unit_of_work(session):
            release(session, claim)
    except Exception:
        # The lease runs out on its own; a retry can take the key over then.
        log.exception("could not release idempotency key %s", claim.scope.name)


_keys = cast(Table, IdempotencyKey.__table__)
# Built once per dialect: a new key's row, or nothing (no error) if the key has one.
_CLAIM = {
    name: dialect_insert(_keys)
    .on_conflict_do_nothing(index_elements=[_keys.c.principal, _keys.c.key])
    .returning(_keys.c.id)
    for name, dialect_insert in (("sqlite", sqlite_insert), ("postgresql", postgresql_insert))
}
# The answer onto the key while this request's claim holds it (SET from the parameters).
_RECORD_ANSWER = (
    update(_keys)
    .where(
        _keys.c.principal == bindparam("b_principal"),
        _keys.c.key == bindparam("b_key"),
        _keys.c.locked_until == bindparam("b_locked_until"),
    )
    .returning(_keys.c.id)
)


def _locked_row(session: Session, principal: str, key: str) -> IdempotencyKey | None:
    return session.execute(
        select(IdempotencyKey)
        .where(IdempotencyKey.principal == principal, IdempotencyKey.key == key)
        .with_for_update()
        .execution_options(populate_existing=True)
    ).scalar_one_or_none()


def _reset(
    row: IdempotencyKey,
    method: str,
    path: str,
    fingerprint: str,
    *,
    now: datetime,
    ttl: timedelta,
) -> None:
    row.method = method
    row.path = path
    row.request_fingerprint = fingerprint
    row.response_status = None
    row.response_body = None
    row.locked_until = now + IN_PROGRESS_LEASE
    row.created_at = now
    row.expires_at = now + ttl


def _lease(row: IdempotencyKey) -> datetime:
    assert row.locked_until is not None
    return row.locked_until


def _in_progress() -> IdempotencyKeyInProgress:
    return IdempotencyKeyInProgress(
        f"a request with this {KEY_HEADER} is still being processed; retry shortly",
        details={KEY_HEADER: ["in progress"]},
    )
