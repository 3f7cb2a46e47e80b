"""Logs: lines for people (`LOG_FORMAT=text`, the default) or one JSON object per line
for machines (`LOG_FORMAT=json`).

Every request is one line (`event: "request"`: request id, method, path, status,
duration, the API key's label) and every Stripe event delivery one line
(`event: "webhook_event"`: event id, type, outcome). The request id comes from the
caller's `X-Request-Id` when it is a plain token, else it is generated; either way it
is answered in `X-Request-Id` and stamped on every line logged during the request.

Secrets never reach a line: configured keys and anything shaped like a Stripe key, a
webhook secret, a bearer token or a card number is replaced by `[redacted]` as the
line is written, whatever code logged it.
"""

from __future__ import annotations

import base64
import json
import logging
import re
import secrets
import sys
import time
from collections.abc import Iterable
from datetime import UTC, datetime
from typing import IO, Any

from flask import Flask, Response, g, has_request_context, request

from gateway.settings import LOG_FORMATS

REQUEST_ID_HEADER = "X-Request-Id"
# A caller's request id is kept only when it is a plain token (no spaces, quotes or
# control characters that could forge a log line); otherwise one is generated.
_REQUEST_ID = re.compile(r"[A-Za-z0-9._:@+=-]{1,128}", re.ASCII)

# Structured fields a log call may pass with `extra=`, in the order they are written.
FIELDS = (
    "event", "request_id", "method", "path", "status", "duration_ms", "api_key",
    "event_id", "event_type", "outcome", "reason",
)  # fmt: skip

REDACTED = "[redacted]"
_SECRET_SHAPES = re.compile(
    r"(?:sk|rk|pk)_(?:live|test)_[A-Za-z0-9]+"  # Stripe API keys
    r"|whsec_[A-Za-z0-9+/=]+"  # webhook endpoint secrets
    r"|(?i:bearer)\s+[^\s\"',;]+"  # a bearer token quoted with its scheme
)
# 13 digits or more, optionally grouped by spaces or dashes: checked with Luhn below.
_CARD_CANDIDATE = re.compile(r"(?<![0-9])[0-9](?:[ -]?[0-9]){12,}")


def _luhn_valid(digits: str) -> bool:
    total = 0
    for index, char in enumerate(reversed(digits)):
        value = int(char)
        if index % 2:
            value = value * 2 - 9 if value > 4 else value * 2
        total += value
    return total % 10 == 0


class Redactor:
    """Removes secrets from a finished log line."""

    def __init__(self, secrets: Iterable[str] = ()) -> None:
        # Longest first, so a secret containing another is removed whole.
        self.secrets = sorted({secret for secret in secrets if len(secret) >= 4}, key=len)[::-1]

    def __call__(self, line: str) -> str:
        for secret in self.secrets:
            line = line.replace(secret, REDACTED)
        line = _SECRET_SHAPES.sub(REDACTED, line)

        def card(match: re.Match[str]) -> str:
            digits = re.sub(r"[ -]", "", match.group())
            # A card number may sit inside a longer run ("4242…4242 200"): any run of
            # 13 to 19 digits in it that passes Luhn hides the whole run.
            for length in range(13, 20):
                for start in range(len(digits) - length + 1):
                    if _luhn_valid(digits[start : start + length]):
                        return REDACTED
            return match.group()

        return _CARD_CANDIDATE.sub(card, line)


def _request_id() -> str | None:
    if has_request_context():
        value: str | None = g.get("request_id")
        return value
    return None


class JsonFormatter(logging.Formatter):
    """One JSON object per line: time, level, logger, message, then structured fields."""

    def __init__(self, redact: Redactor) -> None:
        super().__init__()
        self.redact = redact

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "time": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        for name in FIELDS:
            if name in record.__dict__:
                entry[name] = record.__dict__[name]
        if "request_id" not in entry and (request_id := _request_id()) is not None:
            entry["request_id"] = request_id
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        return self.redact(json.dumps(entry, default=str, separators=(",", ":")))


class TextFormatter(logging.Formatter):
    """The classic line, with the structured fields as `name=value` after the message."""

    def __init__(self, redact: Redactor) -> None:
        super().__init__("%(asctime)s %(levelname)s %(name)s %(message)s")
        self.redact = redact

    def format(self, record: logging.LogRecord) -> str:
        line = super().format(record)
        pairs = [f"{name}={record.__dict__[name]}" for name in FIELDS if name in record.__dict__]
        if "request_id" not in record.__dict__ and (request_id := _request_id()) is not None:
            pairs.append(f"request_id={request_id}")
        if pairs:
            first, newline, rest = line.partition("\n")
            line = f"{first} {' '.join(pairs)}{newline}{rest}"
        return self.redact(line)


class _GatewayHandler(logging.StreamHandler):  # type: ignore[type-arg]
    """The one handler the service installs on the root logger."""

    # What it was last set up with: format, secrets, stream.
    setup: tuple[str, tuple[str, ...], IO[str]] | None = None


def configure(
    log_format: str, *, secrets: Iterable[str] = (), stream: IO[str] | None = None
) -> None:
    """Set up the process's logging: the app factory calls it for every app it makes
    (every `gateway` command goes through the factory too).

    Logging belongs to the process, so it is set up once: the first call installs the
    one handler on the root logger (on `stream`, default standard error), lets INFO
    through the root logger and quiets Alembic's plugin announcements. Another call
    with the same arguments changes nothing; with others it only re-points that
    handler (its format, what it redacts, its stream). Levels set afterwards, by an
    operator's code or a test, are never reset.
    """
    if log_format not in LOG_FORMATS:
        raise ValueError(f"LOG_FORMAT must be one of {', '.join(LOG_FORMATS)}")
    target = stream or sys.stderr
    wanted = (log_format, tuple(secrets), target)
    root = logging.getLogger()
    handler = next((h for h in root.handlers if isinstance(h, _GatewayHandler)), None)
    if handler is not None and handler.setup == wanted:
        return
    if handler is None:
        handler = _GatewayHandler(target)
        root.addHandler(handler)
        if root.level == logging.NOTSET or root.level > logging.INFO:
            root.setLevel(logging.INFO)
        # Alembic announces every plugin it sets up at INFO, before any command runs.
        logging.getLogger("alembic.runtime.plugins").setLevel(logging.WARNING)
    elif handler.stream is not target:
        handler.setStream(target)
    redact = Redactor(wanted[1])
    handler.setFormatter(JsonFormatter(redact) if log_format == "json" else TextFormatter(redact))
    handler.setup = wanted


request_log = logging.getLogger("gateway.requests")


def new_request_id() -> str:
    """32 characters of base32 (a-z, 2-7): unique like a UUID, and never the long run
    of digits that the card-number redaction would take for a card (a UUID's hex can
    be, about once in fifty)."""
    return base64.b32encode(secrets.token_bytes(20)).decode("ascii").lower()


def init_app(app: Flask) -> None:
    """A request id for every request, and one log line when it is answered."""

    @app.before_request
    def _start() -> None:
        given = request.headers.get(REQUEST_ID_HEADER, "")
        g.request_id = given if _REQUEST_ID.fullmatch(given) else new_request_id()
        g.request_started = time.perf_counter()

    @app.after_request
    def _answered(response: Response) -> Response:
        request_id = g.get("request_id") or new_request_id()
        response.headers[REQUEST_ID_HEADER] = request_id
        started = g.get("request_started")
        duration_ms = round((time.perf_counter() - started) * 1000, 2) if started else None
        actor: str | None = g.get("api_actor")
        request_log.info(
            "%s %s %s",
            request.method,
            request.path,
            response.status_code,
            extra={
                "event": "request",
                "request_id": request_id,
                "method": request.method,
                "path": request.path,
                "status": response.status_code,
                "duration_ms": duration_ms,
                "api_key": actor.removeprefix("api:") if actor else None,
            },
        )
        return response
