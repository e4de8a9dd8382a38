"""The duty roster (值班表): teams, people and their contact points, shifts, and who is on
duty at a moment.

Shifts are the one stored truth: a rotation is expanded into shifts when it is loaded, and
a calendar imported from iCalendar is shifts too. An override puts its person on duty
instead of the whole rota of the team for its window; a swap (`replaces`) takes one
person's place and leaves the rest of the team as it was.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, time, timedelta
from pathlib import Path
from zoneinfo import ZoneInfo

from facility.configfile import read_yaml

CHINA = ZoneInfo("Asia/Shanghai")
ROTA, OVERRIDE, SWAP = "rota", "override", "swap"
CONTACT_KINDS = ("mobile", "email", "wecom", "dingtalk", "feishu")


@dataclass(frozen=True, slots=True)
class Team:
    id: str
    name: str
    kind: str  # control_room, standby, contractor, leaders


@dataclass(frozen=True, slots=True)
class Person:
    id: str
    name: str
    team: str
    leader: bool = False
    # mobile (SMS), email, wecom/dingtalk/feishu user ids; absent kinds are empty
    contacts: dict[str, str] = field(default_factory=dict)

    def contact(self, kind: str) -> str:
        return self.contacts.get(kind, "")


@dataclass(frozen=True, slots=True)
class Shift:
    uid: str  # the iCalendar UID: stable across export and import
    team: str
    person: str
    start: datetime  # aware
    end: datetime
    kind: str = ROTA  # rota, override, swap
    replaces: str = ""  # a swap: whose place this person takes
    summary: str = ""  # the calendar's title, kept as it came
    stamp: datetime = datetime(2026, 1, 1, tzinfo=UTC)  # DTSTAMP, kept as it came

    def covers(self, at: datetime) -> bool:
        return self.start <= at < self.end


@dataclass(frozen=True, slots=True)
class Rotation:
    """People of a team take turns: each shift `hours` long from `start`, in list order;
    `days` limits it to working days, rest days or all days (a leader on duty at weekends)."""

    team: str
    people: tuple[str, ...]
    start: datetime
    hours: float = 12.0
    days: str = "all"  # all, workdays, restdays

    def expand(self, first: datetime, last: datetime, calendar: Calendar) -> list[Shift]:
        out: list[Shift] = []
        step = timedelta(hours=self.hours)
        n = max(0, int((first - self.start) / step))
        while True:
            begin = self.start + n * step
            if begin >= last:
                return out
            day = begin.astimezone(CHINA).date()
            rest = calendar.is_rest_day(day)
            if self.days == "all" or (self.days == "restdays") == rest:
                person = self.people[n % len(self.people)]
                out.append(Shift(uid=f"{self.team}-{begin.astimezone(UTC):%Y%m%dT%H%M}Z",
                                 team=self.team, person=person, start=begin,
                                 end=begin + step, kind=ROTA))
            n += 1


@dataclass(frozen=True, slots=True)
class Calendar:
    """Rest days: weekends and public holidays, less the make-up working days (调休)."""

    holidays: dict[date, str] = field(default_factory=dict)
    workdays: frozenset[date] = frozenset()

    @classmethod
    def load(cls, path: Path) -> Calendar:
        data = read_yaml(path) or {}
        holidays: dict[date, str] = {}
        for item in data.get("holidays", []):
            day = item["from"]
            while day <= item["to"]:
                holidays[day] = str(item["name"])
                day += timedelta(days=1)
        return cls(holidays, frozenset(data.get("workdays", [])))

    def is_rest_day(self, day: date) -> bool:
        if day in self.workdays:
            return False
        return day.isoweekday() >= 6 or day in self.holidays


@dataclass(slots=True)
class Roster:
    teams: dict[str, Team] = field(default_factory=dict)
    people: dict[str, Person] = field(default_factory=dict)
    shifts: list[Shift] = field(default_factory=list)

    def on_duty(self, team: str, at: datetime) -> list[Person]:
        """Who of `team` is on duty at `at`: overrides first, then the rota with its swaps."""
        now = [s for s in self.shifts if s.team == team and s.covers(at)]
        overrides = [s.person for s in now if s.kind == OVERRIDE]
        if overrides:
            ids = overrides
        else:
            ids = [s.person for s in now if s.kind == ROTA]
            for swap in (s for s in now if s.kind == SWAP):
                ids = [swap.person if p == swap.replaces else p for p in ids]
                if swap.person not in ids:
                    ids.append(swap.person)
        return [self.people[p] for p in dict.fromkeys(ids) if p in self.people]

    def leaders(self, team: str) -> list[Person]:
        return [p for p in self.people.values() if p.team == team and p.leader]

    def members(self, team: str) -> list[Person]:
        return [p for p in self.people.values() if p.team == team]

    def shift_at(self, team: str, at: datetime) -> Shift | None:
        """The rota shift running at `at` (handover is from one of these to the next)."""
        for s in sorted(self.shifts, key=lambda s: s.start):
            if s.team == team and s.kind == ROTA and s.covers(at):
                return s
        return None


def at_local(day: date, clock: time) -> datetime:
    return datetime.combine(day, clock, tzinfo=CHINA)


def merge_shifts(old: Sequence[Shift], new: Iterable[Shift]) -> list[Shift]:
    """Shifts by uid, the new ones winning (an import replaces what it names)."""
    byuid = {s.uid: s for s in old}
    byuid.update({s.uid: s for s in new})
    return sorted(byuid.values(), key=lambda s: (s.start, s.team, s.uid))
