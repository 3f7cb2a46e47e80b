"""Liveness, readiness and Prometheus metrics (outside /api/v1, no API key)."""

from __future__ import annotations

from flask import Blueprint, Response, current_app
from sqlalchemy import text

from gateway import metrics
from gateway.api.auth import bearer_token, matching
from gateway.api.errors import ApiError, error_response
from gateway.api.framework import OPERATIONS, Operation, Reply, endpoint, json_response
from gateway.api.schemas import ServiceStatusResponse
from gateway.db import get_session
from gateway.migrate import current_revision, head_revision
from gateway.settings import current_settings

service = Blueprint("service", __name__)


@endpoint(
    service, "/healthz", "GET",
    summary="The process is up", response=ServiceStatusResponse, authenticated=False,
)  # fmt: skip
def healthz() -> Reply:
    return Reply({"status": "ok"})


@service.get("/readyz")
def readyz() -> Response:
    """Ready when the database answers and its schema is at the migrations' head."""
    try:
        session = get_session()
        session.execute(text("SELECT 1"))
        revision = current_revision(session.connection())
        session.rollback()
    except Exception:
        current_app.logger.warning("readiness check: database unreachable", exc_info=True)
        return error_response(
            "not_ready", "the database is unreachable", {"database": ["unreachable"]}
        )
    head = head_revision()
    if revision != head:
        return error_response(
            "not_ready",
            f"the database schema is at {revision or 'no revision'}, the code needs {head}: "
            "run `gateway db upgrade`",
            {"schema": [f"at {revision or 'no revision'}, expected {head}"]},
        )
    return json_response({"status": "ok", "database": "ok", "schema": revision}, 200)


@service.get("/metrics")
def prometheus_metrics() -> Response:
    """Open unless METRICS_BEARER_TOKEN is set; then only for that bearer token."""
    token = current_settings().metrics_bearer_token
    if token:
        presented = bearer_token()
        if presented is None or matching(presented, (token,)) is None:
            raise ApiError("unauthorized", "send Authorization: Bearer <metrics token>")
    body, content_type = metrics.render()
    return Response(body, content_type=content_type)


# Plain Flask views (not `@endpoint`), described here so the OpenAPI document lists them.
OPERATIONS.extend(
    [
        Operation(
            rule="/readyz", method="GET", view_name="readyz",
            summary="Ready: the database answers and its schema is at the code's head",
            body=None, query=None, response=ServiceStatusResponse, status=200,
            errors=("not_ready",), authenticated=False,
        ),
        Operation(
            rule="/metrics", method="GET", view_name="prometheus_metrics",
            summary="Prometheus metrics (text exposition format); with METRICS_BEARER_TOKEN "
            "set, only for that bearer token",
            body=None, query=None, response=None, status=200, errors=("unauthorized",),
            authenticated=False,
        ),
    ]
)  # fmt: skip
