"""Interval rule dates: started_at + k x interval, month ends clamped, leap years."""

from __future__ import annotations

import calendar
from datetime import UTC, datetime, timedelta

import pytest
from hypothesis import given
from hypothesis import strategies as st

from gateway.intervals import (
    Interval,
    first_run_at_or_after,
    latest_run_at_or_before,
    run_after,
    run_at,
)


def at(text: str) -> datetime:
    return datetime.fromisoformat(text).replace(tzinfo=UTC)


def dates(started: str, interval: Interval, count: int) -> list[str]:
    return [run_at(at(started), interval, k).date().isoformat() for k in range(count)]


def test_monthly_from_the_31st_takes_the_last_day_of_shorter_months() -> None:
    assert dates("2027-01-31T09:00", Interval.MONTHLY, 6) == [
        "2027-01-31", "2027-02-28", "2027-03-31", "2027-04-30", "2027-05-31", "2027-06-30",
    ]  # fmt: skip


def test_monthly_in_a_leap_year_takes_february_29() -> None:
    assert dates("2028-01-30T00:00", Interval.MONTHLY, 3) == [
        "2028-01-30",
        "2028-02-29",
        "2028-03-30",
    ]


def test_yearly_from_february_29_buys_on_february_28_in_common_years() -> None:
    assert dates("2028-02-29T12:00", Interval.YEARLY, 5) == [
        "2028-02-29", "2029-02-28", "2030-02-28", "2031-02-28", "2032-02-29",
    ]  # fmt: skip


def test_quarterly_from_november_30_clamps_to_february() -> None:
    assert dates("2026-11-30T00:00", Interval.QUARTERLY, 4) == [
        "2026-11-30", "2027-02-28", "2027-05-30", "2027-08-30",
    ]  # fmt: skip


def test_weekly_is_seven_days_and_keeps_the_time_of_day() -> None:
    started = at("2027-12-29T23:30")
    assert run_at(started, Interval.WEEKLY, 1) == at("2028-01-05T23:30")


def test_latest_date_after_downtime_is_the_last_one_due() -> None:
    started = at("2027-01-31T09:00")
    assert latest_run_at_or_before(started, Interval.MONTHLY, at("2027-06-15T00:00")) == (
        4,
        at("2027-05-31T09:00"),
    )
    assert latest_run_at_or_before(started, Interval.MONTHLY, at("2027-01-31T08:59")) is None
    assert first_run_at_or_after(started, Interval.MONTHLY, at("2027-02-28T09:00")) == at(
        "2027-02-28T09:00"
    )
    assert run_after(started, Interval.MONTHLY, at("2027-02-28T09:00")) == at("2027-03-31T09:00")


starts = st.datetimes(
    min_value=datetime(2000, 1, 1), max_value=datetime(2090, 12, 31), timezones=st.just(UTC)
)


@pytest.mark.parametrize("interval", list(Interval))
@given(started=starts, offset=st.integers(min_value=0, max_value=40 * 366 * 24 * 3600))
def test_latest_and_next_dates_bracket_any_moment(
    interval: Interval, started: datetime, offset: int
) -> None:
    moment = started + timedelta(seconds=offset)
    latest = latest_run_at_or_before(started, interval, moment)
    assert latest is not None
    k, date = latest
    assert date == run_at(started, interval, k) <= moment < run_at(started, interval, k + 1)
    assert run_after(started, interval, moment) == run_at(started, interval, k + 1)
    if interval != Interval.WEEKLY:
        last_day = calendar.monthrange(date.year, date.month)[1]
        assert date.day == min(started.day, last_day)  # the same day, clamped to the month
        assert date.time() == started.time()
