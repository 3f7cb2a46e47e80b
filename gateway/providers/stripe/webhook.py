"""Stripe webhook deliveries: verify the signature on the raw body, then read the event.

`verify_event` checks `Stripe-Signature` with stripe-python's `WebhookSignature`
against each configured endpoint secret (several during a rotation), with the
library's tolerance for old timestamps, and refuses timestamps from the future as
well (the library does not). It returns the event as a plain dict; nothing here
touches the database. An event's invoice (`data.object`) has the JSON form of an
API invoice; `events.read_event` reads it.
"""

from __future__ import annotations

import json
import time
from collections.abc import Sequence
from typing import Any

from stripe import SignatureVerificationError, WebhookSignature

SIGNATURE_HEADER = "Stripe-Signature"
# Column sizes of webhook_events.
_MAX_EVENT_ID = 255
_MAX_EVENT_TYPE = 128


class WebhookRejected(Exception):
    """A delivery that is not a genuine, well-formed Stripe event; `reason` is a code."""

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason
        self.message = message


class WebhookNotConfigured(Exception):
    """No endpoint secret is configured, so no delivery can be verified."""


def verify_event(
    payload: bytes,
    signature_header: str | None,
    secrets: Sequence[str],
    *,
    tolerance_seconds: int,
) -> dict[str, Any]:
    """The event in `payload`, if one of `secrets` signed it recently; else `WebhookRejected`.

    A timestamp older than `tolerance_seconds` or more than `tolerance_seconds` ahead of
    our clock is refused, so a captured delivery cannot be replayed later.
    """
    if not secrets:
        raise WebhookNotConfigured("set STRIPE_WEBHOOK_SECRETS to the endpoint's whsec_ secret(s)")
    if tolerance_seconds <= 0:
        # The library treats a tolerance of 0 as "no limit": never allow that.
        raise ValueError("the webhook tolerance must be a positive number of seconds")
    if not signature_header:
        raise WebhookRejected("missing_signature", f"the {SIGNATURE_HEADER} header is missing")
    try:
        text = payload.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise WebhookRejected("invalid_payload", "the body is not UTF-8") from exc

    failures: list[str] = []
    for secret in secrets:
        try:
            WebhookSignature.verify_header(text, signature_header, secret, tolerance_seconds)
        except SignatureVerificationError as exc:
            failures.append(str(exc))
            continue
        break
    else:
        # Signatures are checked before the age, so a tolerance complaint means a secret
        # matched: say so, it is the more useful message. Secrets are never echoed.
        stale = [message for message in failures if "tolerance" in message]
        raise WebhookRejected("invalid_signature", (stale or failures)[0])

    timestamp = _signed_timestamp(signature_header)
    if timestamp > time.time() + tolerance_seconds:
        raise WebhookRejected(
            "invalid_signature",
            f"the signature timestamp {timestamp} is more than {tolerance_seconds} s in the future",
        )
    return _parse_event(text)


def _signed_timestamp(header: str) -> int:
    """The `t=` value the library verified (parsed the way the library parses it)."""
    for item in header.split(","):
        parts = item.split("=", 2)
        if parts[0] == "t" and len(parts) > 1:
            try:
                return int(parts[1])
            except ValueError:
                break
    raise WebhookRejected("invalid_signature", "the signature header has no usable timestamp")


def _refuse_constant(name: str) -> Any:
    raise ValueError(f"{name} is not valid JSON")


def _parse_event(text: str) -> dict[str, Any]:
    try:
        event = json.loads(text, parse_constant=_refuse_constant)
    except (ValueError, RecursionError) as exc:
        raise WebhookRejected("invalid_payload", "the body is not valid JSON") from exc
    if not isinstance(event, dict) or event.get("object") != "event":
        raise WebhookRejected("invalid_payload", "the body is not a Stripe event")
    event_id, event_type = event.get("id"), event.get("type")
    if not isinstance(event_id, str) or not 0 < len(event_id) <= _MAX_EVENT_ID:
        raise WebhookRejected("invalid_payload", "the event has no usable id")
    if not isinstance(event_type, str) or not 0 < len(event_type) <= _MAX_EVENT_TYPE:
        raise WebhookRejected("invalid_payload", "the event has no usable type")
    if not isinstance(event.get("livemode"), bool):
        raise WebhookRejected("invalid_payload", "the event has no livemode flag")
    data = event.get("data")
    if not isinstance(data, dict) or not isinstance(data.get("object"), dict):
        raise WebhookRejected("invalid_payload", "the event has no data.object")
    return event
