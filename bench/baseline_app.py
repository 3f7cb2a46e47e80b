"""The webhook baseline: the least a correct endpoint can do.

Verifies the Stripe signature on the raw body and inserts the event id, nothing
more. Run under the same gunicorn settings as the service so the ratio between the
two measures only the service's own work (event log, settlement, ledger).

    DATABASE_URL=postgresql://... STRIPE_WEBHOOK_SECRETS=whsec_... \
        gunicorn -c config/gunicorn.conf.py bench.baseline_app:app
"""

from __future__ import annotations

import json
import os

import psycopg
import stripe
from flask import Flask, Response, request

SECRET = os.environ["STRIPE_WEBHOOK_SECRETS"].split(",")[0]
DSN = os.environ["DATABASE_URL"].replace("postgresql+psycopg://", "postgresql://")

app = Flask(__name__)
_connection: psycopg.Connection | None = None  # one per worker process, opened after fork


@app.post("/webhooks/stripe")
def receive() -> Response:
    payload = request.get_data()
    try:
        stripe.WebhookSignature.verify_header(
            payload.decode(), request.headers.get("Stripe-Signature", ""), SECRET, 300
        )
        event_id = json.loads(payload)["id"]
    except Exception:
        return Response('{"error":"bad signature"}', status=400, mimetype="application/json")
    global _connection  # noqa: PLW0603
    if _connection is None or _connection.closed:
        _connection = psycopg.connect(DSN, autocommit=True)
    _connection.execute(
        "INSERT INTO bench_baseline_events (id) VALUES (%s) ON CONFLICT DO NOTHING", (event_id,)
    )
    return Response('{"received":true}', mimetype="application/json")


@app.get("/healthz")
def healthz() -> Response:
    return Response('{"status":"ok"}', mimetype="application/json")
