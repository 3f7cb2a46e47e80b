"""Bearer API keys on /api/v1: several accepted (rotation), compared in constant time."""

from __future__ import annotations

import hashlib
import hmac

from flask import g, request

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
    matched = False
    # Compare against every key without stopping early, so timing says nothing.
    for key in current_settings().api_keys:
        matched |= hmac.compare_digest(presented_bytes, key.encode())
    if not matched:
        raise ApiError("unauthorized", "the API key is not valid")
    g.api_principal = principal_of(presented)
