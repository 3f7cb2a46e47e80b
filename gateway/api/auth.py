"""Bearer API keys on /api/v1: several accepted (rotation), compared in constant time."""

from __future__ import annotations

import hashlib
import hmac

from flask import g, request

from gateway import actors
from gateway.api.errors import ApiError
from gateway.settings import current_settings


def principal_of(key: str) -> str:
    """A stable, non-secret name for an API key (scopes idempotency keys, logs)."""
    return hashlib.sha256(key.encode()).hexdigest()[:32]


def require_api_key() -> None:
    """`before_request` of the API blueprint: 401 unless a configured key is presented."""
    header = request.headers.get("Authorization", "")
    scheme, _, presented = header.partition(" ")
    presented = presented.strip()
    if scheme.lower() != "bearer" or not presented:
        raise ApiError("unauthorized", "send Authorization: Bearer <api key>")
    presented_bytes = presented.encode()
    settings = current_settings()
    matched: str | None = None
    # Compare against every key without stopping early, so timing says nothing.
    for key, label in zip(settings.api_keys, settings.api_key_labels, strict=True):
        if hmac.compare_digest(presented_bytes, key.encode()):
            matched = label
    if matched is None:
        raise ApiError("unauthorized", "the API key is not valid")
    g.api_principal = principal_of(presented)
    g.api_actor = actors.api(matched)


def api_actor() -> str:
    """`api:LABEL` of the key that authenticated this request (its ledger entries' author)."""
    actor: str = g.api_actor
    return actor
