"""gunicorn settings: `gunicorn -c config/gunicorn.conf.py wsgi:app`.

Threaded workers (gthread): a purchase waits on Stripe for up to
PURCHASE_DEADLINE_SECONDS with no database transaction open, and must not hold a
whole worker meanwhile. With sync workers about five purchases waiting on a slow
Stripe stalled credit applications and Stripe's own webhook deliveries; with
GATEWAY_THREADS threads per worker they are served by the other threads
(tests/infrastructure/test_gunicorn_threads.py). Each thread takes at most one database connection
(GATEWAY_DB_POOL_SIZE, default 10, plus 10 overflow, per worker: keep threads below
that).
"""

import multiprocessing
import os

from gateway.settings import WORKER_TIMEOUT_SECONDS

bind = os.environ.get("GATEWAY_BIND", "127.0.0.1:8000")
workers = int(os.environ.get("GATEWAY_WORKERS", multiprocessing.cpu_count() * 2 + 1))
worker_class = "gthread"
threads = int(os.environ.get("GATEWAY_THREADS", "8"))
# A request may not outlast this (a purchase's provider calls end well before:
# PURCHASE_DEADLINE_SECONDS is at most this less 5 s).
timeout = WORKER_TIMEOUT_SECONDS
graceful_timeout = 30
keepalive = 5
# An empty GATEWAY_ACCESS_LOG turns the access log off (benchmarks).
accesslog = os.environ.get("GATEWAY_ACCESS_LOG", "-") or None
