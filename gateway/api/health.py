"""Liveness, readiness and Prometheus metrics (outside /api/v1, no API key)."""

from __future__ import annotations

from flask import Blueprint, Response, current_app
from sqlalchemy import text

from gateway import metrics
from gateway.api.framework import Reply, endpoint, json_response
from gateway.db import get_session
from gateway.migrate import current_revision, head_revision

service = Blueprint("service", __name__)


@endpoint(service, "/healthz", "GET", summary="The process is up", authenticated=False)
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
        return json_response({"status": "unavailable", "database": "unreachable"}, 503)
    head = head_revision()
    if revision != head:
        return json_response(
            {"status": "unavailable", "database": "ok", "schema": revision, "expected": head},
            503,
        )
    return json_response({"status": "ok", "database": "ok", "schema": revision}, 200)


@service.get("/metrics")
def prometheus_metrics() -> Response:
    body, content_type = metrics.render()
    return Response(body, content_type=content_type)
