"""Prometheus metrics. Under gunicorn set PROMETHEUS_MULTIPROC_DIR so every worker's
counters are summed (prometheus-client's multiprocess mode)."""

from __future__ import annotations

import os
import time

from flask import Flask, Response, g, request
from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Histogram,
    generate_latest,
    multiprocess,
)

REQUESTS = Counter(
    "gateway_http_requests_total", "HTTP requests answered", ["method", "endpoint", "status"]
)
LATENCY = Histogram(
    "gateway_http_request_duration_seconds",
    "Time to answer an HTTP request",
    ["method", "endpoint"],
    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10),
)
CREDITS_MOVED = Counter(
    "gateway_ledger_credits_total",
    "Credits moved by payments: purchased (settled), refunded or disputed (taken back), "
    "reinstated (a dispute won); grants, voids and consumption are not counted",
    ["transaction_status"],
)
WEBHOOK_EVENTS = Counter(
    "gateway_webhook_events_total", "Verified webhook events by outcome", ["type", "outcome"]
)
PROVIDER_CALLS = Counter(
    "gateway_provider_calls_total",
    "Calls to the payment provider by operation and outcome (ok, unavailable, rejected, error)",
    ["operation", "outcome"],
)

# The `method` label takes these values, every other method is "other": a client
# choosing the method must not create series (each made-up method made 17).
KNOWN_METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"})


def method_label(method: str) -> str:
    return method if method in KNOWN_METHODS else "other"


def init_app(app: Flask) -> None:
    @app.before_request
    def _start_timer() -> None:
        g.request_started = time.perf_counter()

    @app.after_request
    def _observe(response: Response) -> Response:
        started = g.get("request_started")
        endpoint = request.url_rule.rule if request.url_rule is not None else "unmatched"
        method = method_label(request.method)
        REQUESTS.labels(method, endpoint, str(response.status_code)).inc()
        if started is not None:
            LATENCY.labels(method, endpoint).observe(time.perf_counter() - started)
        return response


def render() -> tuple[bytes, str]:
    if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        registry = CollectorRegistry()
        multiprocess.MultiProcessCollector(registry)  # type: ignore[no-untyped-call]
        return generate_latest(registry), CONTENT_TYPE_LATEST
    return generate_latest(), CONTENT_TYPE_LATEST
