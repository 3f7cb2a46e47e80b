"""Outgoing events: the webhook endpoints they are sent to, and the feed."""

from __future__ import annotations

import json
from typing import Any

from sqlalchemy import select

from gateway import events, webhook_endpoints
from gateway.api import api_v1
from gateway.api.framework import Reply, endpoint
from gateway.api.schemas import (
    EventListQuery,
    EventListResponse,
    EventResponse,
    PageQuery,
    WebhookEndpointCreatedResponse,
    WebhookEndpointListResponse,
    WebhookEndpointRequest,
    WebhookEndpointResponse,
    pagination_meta,
)
from gateway.db import get_session, utcnow
from gateway.models import DeliveryAttempt, EventDelivery, WebhookEndpoint
from gateway.settings import current_settings


@endpoint(
    api_v1, "/webhook_endpoints", "POST",
    summary="Register a webhook endpoint; its signing secret is in this answer only",
    body=WebhookEndpointRequest, response=WebhookEndpointCreatedResponse, status=201,
)  # fmt: skip
def create_webhook_endpoint(body: dict[str, Any]) -> Reply:
    data = body["webhook_endpoint"]
    created = webhook_endpoints.create_endpoint(
        get_session(),
        url=data["url"],
        event_types=data.get("event_types"),
        description=data.get("description"),
        allow_http=current_settings().outgoing_webhooks_allow_http,
        now=utcnow(),
    )
    return Reply({"webhook_endpoint": created}, 201)


@endpoint(
    api_v1, "/webhook_endpoints", "GET",
    summary="List webhook endpoints, newest first", query=PageQuery,
    response=WebhookEndpointListResponse, errors=["validation_errors"],
)  # fmt: skip
def list_webhook_endpoints(query: dict[str, Any]) -> Reply:
    rows, total = webhook_endpoints.list_endpoints(
        get_session(), page=query["page"], per_page=query["per_page"]
    )
    meta = pagination_meta(query["page"], query["per_page"], total)
    return Reply({"webhook_endpoints": rows, "meta": meta})


@endpoint(
    api_v1, "/webhook_endpoints/<endpoint_id>", "GET",
    summary="Get a webhook endpoint (never its secret)", response=WebhookEndpointResponse,
    errors=["not_found"],
)  # fmt: skip
def get_webhook_endpoint(endpoint_id: str) -> Reply:
    return Reply({"webhook_endpoint": webhook_endpoints.get_endpoint(get_session(), endpoint_id)})


@endpoint(
    api_v1, "/webhook_endpoints/<endpoint_id>", "DELETE",
    summary="Disable a webhook endpoint: nothing more is sent to it",
    response=WebhookEndpointResponse, errors=["not_found"],
)  # fmt: skip
def delete_webhook_endpoint(endpoint_id: str) -> Reply:
    disabled = webhook_endpoints.disable_endpoint(get_session(), endpoint_id, utcnow())
    return Reply({"webhook_endpoint": disabled})


@endpoint(
    api_v1, "/events", "GET",
    summary="List events in creation order, after the given one (catch up from a last id)",
    query=EventListQuery, response=EventListResponse, errors=["validation_errors"],
)  # fmt: skip
def list_events(query: dict[str, Any]) -> Reply:
    rows, has_more = events.list_events(
        get_session(), after=query.get("after"), type_=query.get("type"), limit=query["limit"]
    )
    return Reply({"events": rows, "has_more": has_more})


@endpoint(
    api_v1, "/events/<event_id>", "GET",
    summary="Get an event with its delivery attempts per endpoint",
    response=EventResponse, errors=["not_found"],
)  # fmt: skip
def get_event(event_id: str) -> Reply:
    session = get_session()
    event = events.get_event(session, event_id)
    rows = session.execute(
        select(EventDelivery, WebhookEndpoint.url)
        .join(WebhookEndpoint, WebhookEndpoint.id == EventDelivery.endpoint_id)
        .where(EventDelivery.event_id == event_id)
        .order_by(EventDelivery.created_at, EventDelivery.id)
    ).all()
    attempts: dict[str, list[DeliveryAttempt]] = {}
    if rows:
        for attempt in session.execute(
            select(DeliveryAttempt)
            .where(DeliveryAttempt.delivery_id.in_([delivery.id for delivery, _ in rows]))
            .order_by(DeliveryAttempt.attempted_at, DeliveryAttempt.id)
        ).scalars():
            attempts.setdefault(attempt.delivery_id, []).append(attempt)
    deliveries = [
        {
            "endpoint_id": delivery.endpoint_id,
            "url": url,
            "status": delivery.status,
            "next_attempt_at": delivery.next_attempt_at,
            "delivered_at": delivery.delivered_at,
            "attempts": attempts.get(delivery.id, []),
        }
        for delivery, url in rows
    ]
    return Reply({"event": json.loads(event.body), "deliveries": deliveries})
