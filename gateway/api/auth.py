"""Bearer API keys on /api/v1: several accepted (rotation), compared in constant time."""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Sequence

from flask import g, request

from gateway import actors
from gateway.api.errors import ApiError
from gateway.settings import current_settings


def principal_of(key: str) -> str:
    """A stable, non-secret name for an API key (scopes idempotency keys, logs)."""
    return hashlib.sha256(key.encode()).hexdigest()[:32]


def digest(secret: str) -> bytes:
    """SHA-256 of a secret: what is compared, so the time taken says nothing of the
    secret's length (compare_digest on the raw strings returns at once on a length
    mismatch)."""
    return hashlib.sha256(secret.encode()).digest()


def matching(presented: str, secrets: Sequence[str]) -> int | None:
    """The position of `presented` among `secrets`, or None, in time independent of
    which, if any, and of their lengths (every digest is compared, none stops the loop)."""
    presented_digest = digest(presented)
    found: int | None = None
    for index, secret in enumerate(secrets):
        if hmac.compare_digest(presented_digest, digest(secret)):
            found = index
    return found


def bearer_token() -> str | None:
    """The token of an `Authorization: Bearer <token>` header, or None."""
    header = request.headers.get("Authorization", "")
    scheme, _, presented = header.partition(" ")
    presented = presented.strip()
    if scheme.lower() != "bearer" or not presented:
        return None
    return presented


def require_api_key() -> None:
    """`before_request` of the API blueprint: 401 unless a configured key is presented."""
    presented = bearer_token()
    if presented is None:
        raise ApiError("unauthorized", "send Authorization: Bearer <api key>")
    settings = current_settings()
    found = matching(presented, settings.api_keys)
    if found is None:
        raise ApiError("unauthorized", "the API key is not valid")
    g.api_principal = principal_of(presented)
    g.api_actor = actors.api(settings.api_key_labels[found])


def api_actor() -> str:
    """`api:LABEL` of the key that authenticated this request (its ledger entries' author)."""
    actor: str = g.api_actor
    return actor
