"""A webhook receiver for the outgoing-events bench: a bare WSGI app under gunicorn.

`/fast` answers 200 at once (after counting the request); `/slow` sleeps longer than
the worker's timeout, so every delivery to it times out; `/healthz` answers 200.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Iterable
from typing import Any

SLOW_SECONDS = float(os.environ.get("BENCH_RECEIVER_SLOW_SECONDS", "5"))


def app(environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
    path = environ.get("PATH_INFO", "")
    length = int(environ.get("CONTENT_LENGTH") or 0)
    if length:
        environ["wsgi.input"].read(length)
    if path == "/slow":
        time.sleep(SLOW_SECONDS)
    start_response("200 OK", [("Content-Type", "text/plain"), ("Content-Length", "2")])
    return [b"ok"]
