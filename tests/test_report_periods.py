"""Report periods and office hours: months, ISO weeks and ranges in local time, their
previous period and the same period a year earlier, and the holiday calendar."""

from __future__ import annotations

from datetime import date, datetime
from zoneinfo import ZoneInfo

import pytest

from facility.settings import ReportSettings
from reports.calendar import load_calendar
from reports.periods import parse

TZ = ZoneInfo("Asia/Shanghai")


def test_month_week_and_range() -> None:
    october = parse(TZ, month_text="2026-10")
    assert (october.start, october.end) == (datetime(2026, 10, 1, tzinfo=TZ),
                                            datetime(2026, 11, 1, tzinfo=TZ))
    assert october.previous().label == "2026-09" and october.year_before().label == "2025-10"
    january = parse(TZ, month_text="2026-01")
    assert january.previous().label == "2025-12"
    week = parse(TZ, week_text="2026-10-08")
    assert week.label == "2026-W41" and week.start == datetime(2026, 10, 5, tzinfo=TZ)
    assert week.previous().label == "2026-W40" and week.year_before().label == "2025-W41"
    span = parse(TZ, from_text="2026-10-01", to_text="2026-10-15")
    assert span.hours == 15 * 24 and span.slug == "2026-10-01_2026-10-15"
    assert span.previous().end == span.start and span.previous().hours == span.hours
    assert span.year_before().start == datetime(2025, 10, 1, tzinfo=TZ)
    leap = parse(TZ, from_text="2028-02-29", to_text="2028-02-29")
    assert leap.year_before().start == datetime(2027, 2, 28, tzinfo=TZ)


@pytest.mark.parametrize(("kwargs", "message"), [
    ({"month_text": "2026-13"}, "YYYY-MM"),
    ({"week_text": "2026-W54"}, "weeks"),
    ({"from_text": "2026-10-05"}, "go together"),
    ({"from_text": "2026-10-05", "to_text": "2026-10-01"}, "before"),
    ({}, "exactly one"),
])
def test_bad_periods_say_why(kwargs: dict[str, str], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        parse(TZ, **kwargs)


def test_office_hours_follow_the_holiday_calendar() -> None:
    calendar = load_calendar(ReportSettings())
    assert not calendar.is_workday(date(2026, 10, 1))  # National Day
    assert calendar.is_workday(date(2026, 10, 10))  # a make-up Saturday
    assert not calendar.is_workday(date(2026, 10, 11))  # Sunday
    assert calendar.is_office_time(datetime(2026, 10, 9, 8, 30, tzinfo=TZ))
    assert not calendar.is_office_time(datetime(2026, 10, 9, 18, 0, tzinfo=TZ))
    assert calendar.holidays_between(date(2026, 10, 1), date(2026, 10, 3))[0][1] == "国庆节"
