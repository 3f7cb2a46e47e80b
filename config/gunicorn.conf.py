"""gunicorn settings: `gunicorn -c config/gunicorn.conf.py wsgi:app`."""

import multiprocessing
import os

bind = os.environ.get("GATEWAY_BIND", "127.0.0.1:8000")
workers = int(os.environ.get("GATEWAY_WORKERS", multiprocessing.cpu_count() * 2 + 1))
threads = int(os.environ.get("GATEWAY_THREADS", "1"))
timeout = 30
graceful_timeout = 30
keepalive = 5
# An empty GATEWAY_ACCESS_LOG turns the access log off (benchmarks).
accesslog = os.environ.get("GATEWAY_ACCESS_LOG", "-") or None
