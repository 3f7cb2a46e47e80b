"""Moments relative to now, with their unit said where they are used."""

from __future__ import annotations

from datetime import datetime, timedelta

from gateway.db import utcnow


def past(*, days: int = 0, hours: int = 0, minutes: int = 0, seconds: int = 0) -> datetime:
    """That long ago, to the whole second: `past(hours=3)`."""
    delta = timedelta(days=days, hours=hours, minutes=minutes, seconds=seconds)
    return utcnow().replace(microsecond=0) - delta
