"""POST /webhooks/stripe: Stripe's deliveries (no API key; the signature is the proof).

Answers: 200 once the event is recorded and processed (or was already); 400 for a
delivery that is not a genuine event of our mode (nothing is stored); 503 while no
endpoint secret is configured; 500 when processing failed (recorded; Stripe retries).
"""

from __future__ import annotations

import logging
from typing import Any

from flask import Blueprint, Response, request
from werkzeug.exceptions import RequestEntityTooLarge

from gateway.api.errors import error_response
from gateway.api.framework import OPERATIONS, Operation, json_response
from gateway.api.schemas import WebhookReceivedResponse
from gateway.db import get_db, utcnow
from gateway.providers.stripe.webhook import (
    SIGNATURE_HEADER,
    WebhookNotConfigured,
    WebhookRejected,
    verify_event,
)
from gateway.settings import current_settings
from gateway.webhooks import (
    EventProcessingFailed,
    LivemodeMismatch,
    check_livemode,
    receive_event,
)

log = logging.getLogger(__name__)

_RECEIVED = WebhookReceivedResponse()

stripe_webhooks = Blueprint("stripe_webhooks", __name__)


@stripe_webhooks.post("/webhooks/stripe")
def receive_stripe_event() -> Response:
    settings = current_settings()
    limit = settings.webhook_max_body_bytes
    # The raw body is what Stripe signed: read it as bytes, never as parsed JSON.
    request.max_content_length = limit
    try:
        payload = request.get_data(cache=False)
    except RequestEntityTooLarge:
        return _rejected(
            WebhookRejected("invalid_payload", f"the body is larger than {limit} bytes")
        )
    try:
        event = verify_event(
            payload,
            request.headers.get(SIGNATURE_HEADER),
            settings.stripe_webhook_secrets,
            tolerance_seconds=settings.webhook_tolerance_seconds,
        )
    except WebhookNotConfigured as exc:
        log.error("a Stripe webhook arrived but no endpoint secret is configured")
        return error_response(
            "webhook_not_configured", str(exc), {"setting": "STRIPE_WEBHOOK_SECRETS"}
        )
    except WebhookRejected as exc:
        return _rejected(exc)
    try:
        check_livemode(event, settings.stripe_livemode)
    except LivemodeMismatch:
        _log_event(event.get("id"), event.get("type"), "rejected", reason="livemode_mismatch")
        raise
    try:
        result = receive_event(get_db(), event, utcnow())
    except EventProcessingFailed as exc:
        _log_event(exc.event_id, event.get("type"), "failed", reason=exc.error)
        return error_response(
            "webhook_processing_failed",
            "processing the event failed; it is recorded and will be processed again "
            "when Stripe retries the delivery",
            {"event_id": exc.event_id},
        )
    _log_event(
        result.event_id, result.type, "duplicate" if result.duplicate else result.status.value
    )
    receipt = {
        "id": result.event_id,
        "type": result.type,
        "status": result.status.value,
        "duplicate": result.duplicate,
    }
    return json_response(_RECEIVED.dump({"received": True, "event": receipt}), 200)


def _log_event(event_id: Any, event_type: Any, outcome: str, *, reason: str | None = None) -> None:
    """One line per delivery (`event: webhook_event`, see gateway.logs)."""
    fields = {"event": "webhook_event", "event_id": event_id, "event_type": event_type,
              "outcome": outcome}  # fmt: skip
    if reason is not None:
        fields["reason"] = reason
    level = logging.WARNING if outcome in ("rejected", "failed") else logging.INFO
    log.log(level, "Stripe event %s %s: %s", event_id, event_type, outcome, extra=fields)


def _rejected(exc: WebhookRejected) -> Response:
    code = "invalid_signature" if exc.reason in _SIGNATURE_REASONS else "invalid_webhook_payload"
    _log_event(None, None, "rejected", reason=exc.reason)
    return error_response(code, exc.message, {"reason": exc.reason})


_SIGNATURE_REASONS = frozenset({"missing_signature", "invalid_signature"})


# A plain Flask view (the raw body is what is signed), described for the OpenAPI document.
OPERATIONS.append(
    Operation(
        rule="/webhooks/stripe", method="POST", view_name="receive_stripe_event",
        summary="Stripe event deliveries, verified by their Stripe-Signature header "
        "(no API key)",
        body=None, query=None, response=WebhookReceivedResponse, status=200,
        errors=("invalid_signature", "invalid_webhook_payload", "livemode_mismatch",
                "webhook_not_configured", "webhook_processing_failed"),
        authenticated=False,
    )
)  # fmt: skip
