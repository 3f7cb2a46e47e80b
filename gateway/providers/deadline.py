"""One time limit for everything a request asks of the payment provider.

A purchase makes up to four provider calls, each of which the HTTP client may repeat
(`STRIPE_MAX_NETWORK_RETRIES`) after waiting for `STRIPE_TIMEOUT_SECONDS`: left alone,
20 s x 3 attempts x 4 calls, far past gunicorn's 30 s worker timeout, which kills the
worker (the caller gets gunicorn's HTML error, the Idempotency-Key stays locked until
its lease runs out). Inside `within(seconds)` every provider call is bounded by what
is left of that one budget: each HTTP attempt's timeout is clamped to it, the pause
before a retry never outlasts it, and once it is spent no call is started (the
provider reports itself unavailable, which the caller answers with 503
`payment_provider_unavailable`, the purchase kept to be resumed).

The budget is held in a context variable: each thread (each request of a threaded
worker) has its own. Outside `within` nothing is bounded here (reconciliation and
the CLI keep the client's own timeouts).
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar

_ENDS_AT: ContextVar[float | None] = ContextVar("provider_deadline", default=None)


@contextmanager
def within(seconds: float) -> Iterator[None]:
    """Bound the provider calls made inside to `seconds` in all (a budget already set
    by an enclosing `within` is only ever shortened)."""
    ends_at = time.monotonic() + seconds
    current = _ENDS_AT.get()
    token = _ENDS_AT.set(ends_at if current is None else min(current, ends_at))
    try:
        yield
    finally:
        _ENDS_AT.reset(token)


def remaining() -> float | None:
    """Seconds left of the budget (0 once spent), or None when no budget is set."""
    ends_at = _ENDS_AT.get()
    if ends_at is None:
        return None
    return max(0.0, ends_at - time.monotonic())


def spent() -> bool:
    left = remaining()
    return left is not None and left <= 0
