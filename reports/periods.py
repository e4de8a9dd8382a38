"""Report periods in the campus's local time: a month, an ISO week or a date range,
with the previous period of the same kind and the same period a year earlier."""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import date, datetime, time, timedelta
from zoneinfo import ZoneInfo


@dataclass(frozen=True, slots=True)
class Period:
    """[start, end) in local time; `kind` is month, week or range."""

    start: datetime
    end: datetime
    kind: str
    label: str
    # Set when the period is still in progress: the end it will have; `end` is then the
    # start of the 15-minute interval in progress (see `until_now`).
    full_end: datetime | None = None

    def __post_init__(self) -> None:
        if self.start.tzinfo is None or self.end.tzinfo is None:
            raise ValueError("period bounds must carry a time zone")
        if self.end <= self.start:
            raise ValueError(f"period {self.label}: the end must be after the start")

    @property
    def slug(self) -> str:
        """The period in a file name: 2026-10, 2026-W41 or 2026-10-01_2026-10-15."""
        if self.kind in ("month", "week"):
            return self.label
        last = (self.end - timedelta(microseconds=1)).date()
        return f"{self.start.date().isoformat()}_{last.isoformat()}"

    @property
    def hours(self) -> float:
        return (self.end - self.start).total_seconds() / 3600

    def ns(self) -> tuple[int, int]:
        return _ns(self.start), _ns(self.end)

    @property
    def in_progress(self) -> bool:
        return self.full_end is not None

    def cut(self, end: datetime) -> Period:
        """The same period read only up to `end` (its end to come kept as `full_end`)."""
        return Period(self.start, end, self.kind, self.label, self.full_end or self.end)

    def _zone(self) -> ZoneInfo:
        zone = self.start.tzinfo
        assert isinstance(zone, ZoneInfo), zone  # periods are made in the site's time zone
        return zone

    def previous(self) -> Period:
        """The period of the same kind just before this one."""
        if self.kind == "month":
            return month(_shift_month(self.start.date(), -1), self._zone())
        length = self.end - self.start
        start, end = self.start - length, self.start
        if self.kind == "week":
            iso = start.isocalendar()
            return Period(start, end, "week", f"{iso.year}-W{iso.week:02d}")
        return Period(start, end, "range", _range_label(start, end))

    def year_before(self) -> Period:
        """The same month, ISO week or dates one year earlier."""
        tz = self._zone()
        if self.kind == "month":
            return month(date(self.start.year - 1, self.start.month, 1), tz)
        if self.kind == "week":
            iso = self.start.isocalendar()
            return week(iso.year - 1, min(iso.week, _weeks_in(iso.year - 1)), tz)
        start, end = _minus_year(self.start), _minus_year(self.end)
        return Period(start, end, "range", _range_label(start, end))


BUCKET = timedelta(minutes=15)


def until_now(period: Period, now: datetime) -> Period:
    """The part of `period` a report can count at `now`: all of it once it is over; while
    it runs, up to the start of the 15-minute interval in progress (that interval is not
    complete and the rest has not happened, so neither is data or a gap). ValueError when
    the period has not started or is less than one interval old."""
    if now >= period.end:
        return period
    if now < period.start:
        raise ValueError(f"统计期 {period.label} 尚未开始")
    epoch = datetime.fromtimestamp(0, now.tzinfo)
    cut = now - (now - epoch) % BUCKET
    if cut <= period.start:
        raise ValueError(f"统计期 {period.label} 开始不足15分钟，还没有完整的15分钟区间")
    return period.cut(cut)


def same_length(period: Period, like: Period) -> Period:
    """`period` (a previous or year-earlier one) cut to the length `like` has run, so that
    a period in progress is compared with the same stretch of the other."""
    if not like.in_progress:
        return period
    return period.cut(min(period.end, period.start + (like.end - like.start)))


def _ns(moment: datetime) -> int:
    return int(moment.timestamp()) * 1_000_000_000 + moment.microsecond * 1000


def _shift_month(first: date, months: int) -> date:
    index = first.year * 12 + first.month - 1 + months
    return date(index // 12, index % 12 + 1, 1)


def _minus_year(moment: datetime) -> datetime:
    try:
        return moment.replace(year=moment.year - 1)
    except ValueError:  # 29 February
        return moment.replace(year=moment.year - 1, day=28)


def _weeks_in(year: int) -> int:
    return date(year, 12, 28).isocalendar().week


def _range_label(start: datetime, end: datetime) -> str:
    last = (end - timedelta(microseconds=1)).date()
    return f"{start.date().isoformat()} – {last.isoformat()}"


def month(first: date, tz: ZoneInfo) -> Period:
    start = datetime.combine(first.replace(day=1), time(), tz)
    end = datetime.combine(_shift_month(first.replace(day=1), 1), time(), tz)
    return Period(start, end, "month", f"{first.year}-{first.month:02d}")


def week(year: int, number: int, tz: ZoneInfo) -> Period:
    monday = date.fromisocalendar(year, number, 1)
    start = datetime.combine(monday, time(), tz)
    return Period(start, start + timedelta(days=7), "week", f"{year}-W{number:02d}")


def date_range(first: date, last: date, tz: ZoneInfo) -> Period:
    """Whole days from `first` to `last` inclusive."""
    start = datetime.combine(first, time(), tz)
    end = datetime.combine(last + timedelta(days=1), time(), tz)
    return Period(start, end, "range", _range_label(start, end))


def parse(tz: ZoneInfo, *, month_text: str | None = None, week_text: str | None = None,
          from_text: str | None = None, to_text: str | None = None) -> Period:
    """The period the command line asks for: --month 2026-10, --week 2026-W41 (or a
    date inside the week), or --from 2026-10-01 --to 2026-10-15 (inclusive)."""
    given = [x for x in (month_text, week_text, from_text or to_text) if x]
    if len(given) != 1:
        raise ValueError("give exactly one of --month, --week or --from/--to")
    if month_text:
        found = re.fullmatch(r"(\d{4})-(\d{1,2})", month_text.strip())
        if not found or not 1 <= int(found[2]) <= 12:
            raise ValueError(f"--month {month_text!r}: expected YYYY-MM")
        return month(date(int(found[1]), int(found[2]), 1), tz)
    if week_text:
        found = re.fullmatch(r"(\d{4})-?W(\d{1,2})", week_text.strip(), re.IGNORECASE)
        if found:
            year, number = int(found[1]), int(found[2])
            if not 1 <= number <= _weeks_in(year):
                raise ValueError(f"--week {week_text!r}: {year} has {_weeks_in(year)} weeks")
            return week(year, number, tz)
        day = _date(week_text, "--week")
        iso = day.isocalendar()
        return week(iso.year, iso.week, tz)
    if not (from_text and to_text):
        raise ValueError("--from and --to go together")
    first, last = _date(from_text, "--from"), _date(to_text, "--to")
    if last < first:
        raise ValueError("--to is before --from")
    return date_range(first, last, tz)


def _date(text: str, option: str) -> date:
    try:
        return date.fromisoformat(text.strip())
    except ValueError:
        raise ValueError(f"{option} {text!r}: expected YYYY-MM-DD") from None
