"""When an interval top-up rule buys: pure date arithmetic, no I/O.

A rule started at `started_at` buys at `started_at + k x interval` for k = 0, 1, 2, ...
Every date is computed from `started_at` itself, never from the previous one, so a
monthly rule started on the 31st buys on the last day of each shorter month and is
back on the 31st when the month has one (Jan 31, Feb 28 or 29, Mar 31, Apr 30, ...);
a yearly rule started on February 29 buys on February 28 in common years.
"""

from __future__ import annotations

import calendar
import enum
from datetime import datetime, timedelta


class Interval(enum.StrEnum):
    WEEKLY = "weekly"
    MONTHLY = "monthly"
    QUARTERLY = "quarterly"
    YEARLY = "yearly"


_MONTHS = {Interval.MONTHLY: 1, Interval.QUARTERLY: 3, Interval.YEARLY: 12}


def _add_months(start: datetime, months: int) -> datetime:
    """`start` moved by `months` calendar months, the day clamped to the month's last."""
    month_index = start.month - 1 + months
    year = start.year + month_index // 12
    month = month_index % 12 + 1
    day = min(start.day, calendar.monthrange(year, month)[1])
    return start.replace(year=year, month=month, day=day)


def run_at(started_at: datetime, interval: Interval, k: int) -> datetime:
    """The k-th date (k >= 0) of a rule started at `started_at`."""
    if k < 0:
        raise ValueError("periods are counted from 0")
    if interval == Interval.WEEKLY:
        return started_at + timedelta(weeks=k)
    return _add_months(started_at, _MONTHS[interval] * k)


def _period_estimate(started_at: datetime, interval: Interval, at: datetime) -> int:
    """A k whose date is at most one period away from `at` (exact for weeks)."""
    if interval == Interval.WEEKLY:
        return (at - started_at) // timedelta(weeks=1)
    months = (at.year - started_at.year) * 12 + (at.month - started_at.month)
    return months // _MONTHS[interval]


def latest_run_at_or_before(
    started_at: datetime, interval: Interval, at: datetime
) -> tuple[int, datetime] | None:
    """The last date of the rule at or before `at` (with its k), or None before the first.

    After downtime this is the one period still worth buying: the ones before it are
    not bought late, in a burst.
    """
    if at < started_at:
        return None
    k = max(0, _period_estimate(started_at, interval, at))
    while k > 0 and run_at(started_at, interval, k) > at:
        k -= 1
    while run_at(started_at, interval, k + 1) <= at:
        k += 1
    return k, run_at(started_at, interval, k)


def first_run_at_or_after(started_at: datetime, interval: Interval, at: datetime) -> datetime:
    """The first date of the rule at or after `at`."""
    latest = latest_run_at_or_before(started_at, interval, at)
    if latest is None:
        return started_at
    k, date = latest
    return date if date == at else run_at(started_at, interval, k + 1)


def run_after(started_at: datetime, interval: Interval, at: datetime) -> datetime:
    """The first date of the rule strictly after `at`."""
    latest = latest_run_at_or_before(started_at, interval, at)
    if latest is None:
        return started_at
    return run_at(started_at, interval, latest[0] + 1)
