"""Real threads and real commits (`committed_app`, PostgreSQL): released together, and
looked at through sessions of the app's own."""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

from flask import Flask
from sqlalchemy.orm import Session

from gateway.db import get_db


def run_together(count: int, work: Callable[[int], Any]) -> list[Any]:
    """Run `work(i)` on `count` threads released at the same instant; their results."""
    barrier = threading.Barrier(count)
    results: list[Any] = [None] * count
    errors: list[BaseException] = []

    def run(index: int) -> None:
        try:
            barrier.wait(timeout=10)
            results[index] = work(index)
        except BaseException as exc:  # reported below, in the test's thread
            errors.append(exc)

    threads = [threading.Thread(target=run, args=(i,)) for i in range(count)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
    assert not errors, errors
    assert not any(thread.is_alive() for thread in threads)
    return results


@contextmanager
def app_session(app: Flask) -> Iterator[Session]:
    """A session of the app's own (outside any request), closed at the end: to arrange
    rows that must really commit, or to look at what other threads committed."""
    with app.app_context():
        session = get_db().session()
        try:
            yield session
        finally:
            session.close()
