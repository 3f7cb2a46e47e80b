"""Moments relative to now, with their unit said where they are used, and the form the
API writes them in."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from gateway.db import utcnow


def past(*, days: int = 0, hours: int = 0, minutes: int = 0, seconds: int = 0) -> datetime:
    """That long ago, to the whole second: `past(hours=3)`."""
    delta = timedelta(days=days, hours=hours, minutes=minutes, seconds=seconds)
    return utcnow().replace(microsecond=0) - delta


def iso(moment: datetime) -> str:
    """`moment` as the API writes it: UTC, to the second, with a `Z`."""
    return moment.astimezone(UTC).isoformat(timespec="seconds").replace("+00:00", "Z")


def in_days(days: float) -> str:
    """That many days from now, as the API writes it (an `expiration_at` to send)."""
    return iso(utcnow() + timedelta(days=days))
