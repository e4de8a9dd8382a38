"""Office hours: which moments count as "someone is at work" and which are nights,
weekends and holidays, from the settings and the holiday calendar file."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import date, datetime, time, timedelta
from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field

from facility.configfile import ConfigError, read_yaml, validate
from facility.settings import ReportSettings

DEFAULT_HOLIDAYS = Path(__file__).with_name("holidays.yaml")


class _Holiday(BaseModel):
    model_config = ConfigDict(extra="forbid", populate_by_name=True)
    start: date = Field(alias="from")
    end: date = Field(alias="to")
    name: str


class _CalendarFile(BaseModel):
    model_config = ConfigDict(extra="forbid")
    holidays: list[_Holiday] = []
    workdays: list[date] = []


@dataclass(frozen=True, slots=True)
class WorkCalendar:
    office_start: time
    office_end: time
    weekdays: frozenset[int]  # ISO weekdays that are working days by default
    holidays: dict[date, str]
    makeup_days: frozenset[date]
    source: str

    def is_workday(self, day: date) -> bool:
        if day in self.makeup_days:
            return True
        return day.isoweekday() in self.weekdays and day not in self.holidays

    def is_office_time(self, moment: datetime) -> bool:
        """`moment` in local time: a working day, between office start and end."""
        return self.is_workday(moment.date()) and \
            self.office_start <= moment.time() < self.office_end

    def describe(self) -> str:
        days = "、".join("一二三四五六日"[d - 1] for d in sorted(self.weekdays))
        return (f"工作日（周{days}，法定节假日除外，调休上班日计入）"
                f"{self.office_start:%H:%M}–{self.office_end:%H:%M}")

    def holidays_between(self, first: date, last: date) -> list[tuple[date, str]]:
        return sorted((d, n) for d, n in self.holidays.items() if first <= d <= last)


def _hhmm(text: str) -> time:
    hours, minutes = text.split(":")
    return time(int(hours), int(minutes))


def load_calendar(options: ReportSettings, base: Path | None = None) -> WorkCalendar:
    path = options.holidays_file or DEFAULT_HOLIDAYS
    if not path.is_absolute() and base is not None:
        path = base / path
    parsed = validate(_CalendarFile, read_yaml(path) or {}, path)
    holidays: dict[date, str] = {}
    for holiday in parsed.holidays:
        day = holiday.start
        while day <= holiday.end:
            holidays[day] = holiday.name
            day += timedelta(days=1)
    start, end = _hhmm(options.office_start), _hhmm(options.office_end)
    if end <= start:
        raise ConfigError("reports.office_end must be after reports.office_start")
    return WorkCalendar(start, end, frozenset(options.workdays), holidays,
                        frozenset(parsed.workdays), str(path))
