"""Webhook endpoints: where outgoing events are sent, each with its signing secret.

The secret (`whsec_` + base64 of 32 random bytes, the Standard Webhooks form) is
answered by the create call only; reads never show it. Deleting an endpoint disables
it: nothing more is sent to it, its history stays readable through the events.
"""

from __future__ import annotations

import base64
import secrets
from collections.abc import Sequence
from datetime import datetime
from urllib.parse import urlsplit

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from gateway.errors import NotFound, ValidationFailed
from gateway.models import WebhookEndpoint, WebhookEndpointStatus

MAX_URL_LENGTH = 2048


def new_secret() -> str:
    return "whsec_" + base64.b64encode(secrets.token_bytes(32)).decode("ascii")


def _url_problem(url: str, *, allow_http: bool) -> str | None:
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError:
        return "must be a valid URL"
    del port  # parsed only to refuse an invalid one
    schemes = ("https", "http") if allow_http else ("https",)
    if parts.scheme not in schemes:
        if parts.scheme == "http":
            return "must be https:// (http:// needs OUTGOING_WEBHOOKS_ALLOW_HTTP)"
        return "must be an https:// URL"
    if not parts.hostname:
        return "must name a host"
    if parts.username is not None or parts.password is not None:
        return "must not carry credentials"
    if parts.fragment:
        return "must not have a fragment"
    if any(char.isspace() or ord(char) < 32 for char in url):
        return "must not contain spaces or control characters"
    return None


def _invalid(field: str, message: str) -> ValidationFailed:
    return ValidationFailed(
        f"the webhook endpoint's {field} {message}",
        details={"webhook_endpoint": {field: [message]}},
    )


def create_endpoint(
    session: Session,
    *,
    url: str,
    event_types: Sequence[str] | None,
    description: str | None,
    allow_http: bool,
    now: datetime,
) -> WebhookEndpoint:
    """A new enabled endpoint (the event types were checked by the request schema)."""
    problem = _url_problem(url, allow_http=allow_http)
    if problem is not None:
        raise _invalid("url", problem)
    endpoint = WebhookEndpoint(
        url=url,
        description=description,
        event_types=sorted(set(event_types)) if event_types is not None else None,
        secret=new_secret(),
        status=WebhookEndpointStatus.ENABLED,
        created_at=now,
    )
    session.add(endpoint)
    session.flush()
    return endpoint


def get_endpoint(session: Session, endpoint_id: str) -> WebhookEndpoint:
    endpoint = session.get(WebhookEndpoint, endpoint_id)
    if endpoint is None:
        raise NotFound(
            f"webhook endpoint {endpoint_id} does not exist",
            details={"webhook_endpoint": ["not_found"]},
        )
    return endpoint


def list_endpoints(
    session: Session, *, page: int, per_page: int
) -> tuple[list[WebhookEndpoint], int]:
    total = session.execute(select(func.count()).select_from(WebhookEndpoint)).scalar_one()
    rows = session.execute(
        select(WebhookEndpoint)
        .order_by(WebhookEndpoint.created_at.desc(), WebhookEndpoint.id.desc())
        .limit(per_page)
        .offset((page - 1) * per_page)
    ).scalars()
    return list(rows), int(total)


def disable_endpoint(session: Session, endpoint_id: str, now: datetime) -> WebhookEndpoint:
    """Disabled: nothing more is sent to it. Repeating it changes nothing."""
    endpoint = session.execute(
        select(WebhookEndpoint).where(WebhookEndpoint.id == endpoint_id).with_for_update()
    ).scalar_one_or_none()
    if endpoint is None:
        raise NotFound(
            f"webhook endpoint {endpoint_id} does not exist",
            details={"webhook_endpoint": ["not_found"]},
        )
    if endpoint.status != WebhookEndpointStatus.DISABLED:
        endpoint.status = WebhookEndpointStatus.DISABLED
        endpoint.disabled_at = now
        session.flush()
    return endpoint
