"""Logging is the process's, set up once: making apps does not stack handlers, replace
what is already set up, or reset levels chosen since."""

from __future__ import annotations

import io
import logging
from collections.abc import Iterator

import pytest
from sqlalchemy import create_engine

from gateway import create_app, logs
from tests.support.config import TEST_SETTINGS


def _ours() -> list[logging.Handler]:
    return [h for h in logging.getLogger().handlers if type(h).__name__ == "_GatewayHandler"]


@pytest.fixture
def root_level() -> Iterator[None]:
    """Whatever a test does to the root logger's level is undone after it."""
    logs.configure("text")  # set up as the first app of the process would
    root = logging.getLogger()
    level = root.level
    yield
    root.setLevel(level)
    logs.configure("text")


def _make_app() -> None:
    engine = create_engine("sqlite://")
    try:
        create_app(dict(TEST_SETTINGS), bind=engine)
    finally:
        engine.dispose()


@pytest.mark.usefixtures("root_level")
def test_making_apps_keeps_one_handler_and_what_it_was_set_up_with() -> None:
    _make_app()
    [handler] = _ours()
    formatter = handler.formatter

    _make_app()
    _make_app()

    assert _ours() == [handler]
    assert handler.formatter is formatter  # the same settings: nothing was redone


@pytest.mark.usefixtures("root_level")
def test_a_level_chosen_after_the_setup_survives_the_next_app() -> None:
    _make_app()
    logging.getLogger().setLevel(logging.WARNING)

    _make_app()

    assert logging.getLogger().level == logging.WARNING


@pytest.mark.usefixtures("root_level")
def test_other_settings_repoint_the_one_handler() -> None:
    buffer = io.StringIO()
    logs.configure("json", stream=buffer)
    logging.getLogger("gateway.test").warning("to the buffer")
    assert '"message":"to the buffer"' in buffer.getvalue()

    logs.configure("text")  # no stream given: back to standard error

    [handler] = _ours()
    assert isinstance(handler, logging.StreamHandler)
    assert handler.stream is not buffer
    logging.getLogger("gateway.test").warning("not to the buffer")
    assert "not to the buffer" not in buffer.getvalue()
