"""The configuration every test app starts from, where the test databases are, and free
ports for the servers some tests start."""

from __future__ import annotations

import os
import socket
from typing import Any

from sqlalchemy.engine import make_url

DEFAULT_POSTGRES_URL = "postgresql+psycopg://postgres@127.0.0.1:5432/gateway_test"
IN_CI = os.environ.get("CI", "").lower() in ("1", "true", "yes")

TEST_SETTINGS: dict[str, Any] = {
    "GATEWAY_API_KEYS": "test-key-1,test-key-2",
    "STRIPE_SECRET_KEY": "sk_test_gateway",
    "STRIPE_WEBHOOK_SECRETS": "whsec_test_primary,whsec_test_secondary",
    "STRIPE_API_BASE": "",
    "STRIPE_TAX_MODE": "none",
    "STRIPE_TAX_RATE_IDS": "",
    "STRIPE_COLLECTION_METHOD": "charge_automatically",
    "STRIPE_MAX_NETWORK_RETRIES": 0,
    "SECRET_KEY": "test-secret-key-for-console-sessions",
    # Test receivers listen on loopback over plain http.
    "OUTGOING_WEBHOOKS_ALLOW_HTTP": True,
}
API_KEY = "test-key-1"
AUTH = {"Authorization": f"Bearer {API_KEY}"}


def _worker_suffix() -> str:
    worker = os.environ.get("PYTEST_XDIST_WORKER")
    return f"_{worker}" if worker else ""


def postgres_url() -> str:
    url = make_url(os.environ.get("GATEWAY_TEST_POSTGRES_URL", DEFAULT_POSTGRES_URL))
    return url.set(database=f"{url.database}{_worker_suffix()}").render_as_string(
        hide_password=False
    )


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on (for a server a test starts)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])
