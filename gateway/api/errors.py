"""Every error leaves the service in one shape, from one table of codes to statuses.

`{"status": 422, "error": "Unprocessable Entity", "code": "...", "message": "...",
"error_details": {...}}` — never a stack trace, SQL or secret.
"""

from __future__ import annotations

import logging
from http import HTTPStatus
from typing import Any

from flask import Flask, Response, jsonify
from marshmallow import ValidationError
from werkzeug.exceptions import HTTPException

from gateway.errors import DomainError

log = logging.getLogger(__name__)

STATUS_BY_CODE: dict[str, int] = {
    "validation_errors": 422,
    "invalid_json": 400,
    "unsupported_media_type": 415,
    "payload_too_large": 413,
    "method_not_allowed": 405,
    "unauthorized": 401,
    "not_found": 404,
    "no_active_subscription": 422,
    "wallet_already_exists": 422,
    "wallet_is_terminated": 422,
    "coupons_not_applicable": 422,
    "amount_too_small": 422,
    "amount_too_large": 422,
    "currency_mismatch": 422,
    "payment_provider_unavailable": 503,
    "payment_provider_rejected": 422,
    "idempotency_key_reused": 422,
    "idempotency_key_in_progress": 409,
    "invoice_already_applied": 422,
    "not_ready": 503,
    "invalid_signature": 400,
    "invalid_webhook_payload": 400,
    "livemode_mismatch": 400,
    "webhook_not_configured": 503,
    "webhook_processing_failed": 500,
    "internal_error": 500,
}

# Werkzeug's own HTTP errors (routing, body size…) mapped to contract codes.
_CODE_BY_HTTP_STATUS = {
    400: "invalid_json",
    401: "unauthorized",
    404: "not_found",
    405: "method_not_allowed",
    413: "payload_too_large",
    415: "unsupported_media_type",
}


class ApiError(Exception):
    """An error raised by the HTTP layer itself (body parsing, authentication)."""

    def __init__(self, code: str, message: str, details: dict[str, Any] | None = None) -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        self.details = details or {}


def error_body(
    code: str, message: str, details: dict[str, Any] | None = None, status: int | None = None
) -> dict[str, Any]:
    status = status or STATUS_BY_CODE.get(code, 422)
    return {
        "status": status,
        "error": HTTPStatus(status).phrase,
        "code": code,
        "message": message,
        "error_details": details or {},
    }


def error_response(
    code: str, message: str, details: dict[str, Any] | None = None, status: int | None = None
) -> Response:
    body = error_body(code, message, details, status)
    response = jsonify(body)
    response.status_code = body["status"]
    if code == "unauthorized":
        response.headers["WWW-Authenticate"] = 'Bearer realm="credit-gateway"'
    return response


def register_error_handlers(app: Flask) -> None:
    @app.errorhandler(DomainError)
    def _domain(exc: DomainError) -> Response:
        return error_response(exc.code, exc.message, exc.details)

    @app.errorhandler(ApiError)
    def _api(exc: ApiError) -> Response:
        return error_response(exc.code, exc.message, exc.details)

    @app.errorhandler(ValidationError)
    def _validation(exc: ValidationError) -> Response:
        details = exc.messages if isinstance(exc.messages, dict) else {"_schema": exc.messages}
        return error_response("validation_errors", "the request is not valid", details)

    @app.errorhandler(HTTPException)
    def _http(exc: HTTPException) -> Response:
        status = exc.code or 500
        code = _CODE_BY_HTTP_STATUS.get(status)
        if code is None:
            code = "internal_error" if status >= 500 else "validation_errors"
        response = error_response(code, exc.description or HTTPStatus(status).phrase, status=status)
        for name, value in exc.get_headers():  # e.g. Allow on 405
            if name.lower() != "content-type":
                response.headers[name] = value
        return response

    @app.errorhandler(Exception)
    def _unexpected(exc: Exception) -> Response:
        log.exception("unhandled error")
        return error_response("internal_error", "an internal error occurred; it was logged")
