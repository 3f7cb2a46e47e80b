"""A console form acts once: its one-time token is the operation's idempotency key.

Each rendered form carries a fresh `form_token`. Submitting it claims the token as an
idempotency key (the API's mechanism, `gateway.api.idempotency`, scoped to the
operator), so a double click or a back-and-resubmit acts once and then shows the first
result again. A refusal (invalid value, wallet terminated) keeps nothing: the operator
corrects the form and sends it with the same token. Sent again with other values
after it acted, the token is refused (`idempotency_key_reused`).
"""

from __future__ import annotations

import hashlib
import json
import logging
import secrets
from collections.abc import Callable
from dataclasses import dataclass
from datetime import timedelta

from flask import Response, request
from sqlalchemy.orm import Session

from gateway.api import idempotency
from gateway.db import unit_of_work, utcnow
from gateway.errors import ValidationFailed
from gateway.purchases import RequestScope
from gateway.settings import current_settings

log = logging.getLogger(__name__)

TOKEN_FIELD = "form_token"  # noqa: S105  (a form field name, not a secret)
# Fields that change between two renderings of the same form, not what it asks for.
_NOT_PART_OF_THE_REQUEST = frozenset({"csrf_token", TOKEN_FIELD})


@dataclass(frozen=True)
class Done:
    """What a form's operation answered: where to go next and what to tell the operator."""

    location: str
    message: str


def new_token() -> str:
    return secrets.token_urlsafe(24)


def submitted_token() -> str:
    token = request.form.get(TOKEN_FIELD, "").strip()
    if not token or len(token) > idempotency.MAX_KEY_LENGTH:
        raise ValidationFailed(
            "this form has no valid form token: reload the page and submit it again",
            details={TOKEN_FIELD: ["missing"]},
        )
    return token


def _fingerprint() -> str:
    fields = sorted(
        (name, value)
        for name, value in request.form.items(multi=True)
        if name not in _NOT_PART_OF_THE_REQUEST
    )
    return hashlib.sha256(json.dumps(fields).encode()).hexdigest()


def act_once(session: Session, principal: str, action: Callable[[RequestScope], Done]) -> Done:
    """Run `action(scope)` once for the submitted form token, in one unit of work.

    `scope` names the claim across retries (a purchase stores it to be resumed). A
    replay returns the first `Done`. Refusals raise and leave the token unused.
    """
    token = submitted_token()
    now = utcnow()
    ttl = timedelta(hours=current_settings().idempotency_key_ttl_hours)
    claim: idempotency.Claim | None = None
    try:
        with unit_of_work(session):
            outcome = idempotency.claim_key(
                session,
                principal=principal,
                key=token,
                method="POST",
                path=request.path[:255],
                fingerprint=_fingerprint(),
                now=now,
                ttl=ttl,
            )
            if isinstance(outcome, idempotency.StoredAnswer):
                stored = json.loads(outcome.body)
                return Done(stored["location"], stored["message"])
            claim = outcome
            done = action(claim.scope)
            answer = Response(
                json.dumps({"location": done.location, "message": done.message}),
                mimetype="application/json",
            )
            idempotency.record_answer(session, claim, answer, now=now, ttl=ttl)
            return done
    except Exception:
        if claim is not None:
            _release_quietly(session, claim)
        raise


def _release_quietly(session: Session, claim: idempotency.Claim) -> None:
    """An operation that committed part of its work (a purchase) and then failed holds
    its claim: release it so the same form can be sent again and resume it."""
    try:
        session.rollback()
        with unit_of_work(session):
            idempotency.release(session, claim)
    except Exception:
        log.exception("could not release the console form token %s", claim.scope.name)
