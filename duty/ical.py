"""The roster in and out as iCalendar (RFC 5545), with the `icalendar` library.

One VEVENT per shift: UID, DTSTAMP, DTSTART/DTEND, SUMMARY, CATEGORIES (the team) and
three X- properties for what RFC 5545 has no word for (the person's id, override/swap,
whom a swap replaces). A calendar made elsewhere needs only UID, DTSTART, DTEND and the
team and person, as X- properties or as CATEGORIES and an ATTENDEE whose CN or mailto is a
person of the roster. UID, times, SUMMARY and DTSTAMP are kept as they came, so an
exported calendar imported again exports the same bytes.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from datetime import UTC, date, datetime

import icalendar

from duty.roster import CHINA, ROTA, Person, Shift, Team

PRODID = "-//Panyu District Office Centre//facility duty//ZH"


class CalendarError(ValueError):
    """An event that cannot be a shift; the message names its UID and what is missing."""


def export(shifts: Iterable[Shift], people: Mapping[str, Person],
           teams: Mapping[str, Team]) -> bytes:
    cal = icalendar.Calendar()
    cal.add("prodid", PRODID)
    cal.add("version", "2.0")
    cal.add("x-wr-calname", "值班表")
    for s in sorted(shifts, key=lambda s: (s.start, s.uid)):
        ev = icalendar.Event()
        ev.add("uid", s.uid)
        ev.add("dtstamp", s.stamp.astimezone(UTC))
        ev.add("dtstart", s.start.astimezone(UTC))
        ev.add("dtend", s.end.astimezone(UTC))
        ev.add("summary", s.summary or _summary(s, people, teams))
        ev.add("categories", [s.team])
        person = people.get(s.person)
        if person is not None and person.contact("email"):
            attendee = icalendar.vCalAddress(f"mailto:{person.contact('email')}")
            attendee.params["cn"] = icalendar.vText(person.name)
            ev.add("attendee", attendee, encode=False)
        ev.add("x-facility-team", s.team)
        ev.add("x-facility-person", s.person)
        ev.add("x-facility-kind", s.kind)
        if s.replaces:
            ev.add("x-facility-replaces", s.replaces)
        cal.add_component(ev)
    return bytes(cal.to_ical())


def _summary(s: Shift, people: Mapping[str, Person], teams: Mapping[str, Team]) -> str:
    person = people[s.person].name if s.person in people else s.person
    team = teams[s.team].name if s.team in teams else s.team
    word = {"override": "代班", "swap": "换班"}.get(s.kind, "值班")
    return f"{word}：{person}（{team}）"


def parse(data: bytes, people: Mapping[str, Person]) -> list[Shift]:
    try:
        cal = icalendar.Calendar.from_ical(data)
    except ValueError as exc:
        raise CalendarError(f"not an iCalendar file: {exc}") from None
    by_email = {p.contact("email").lower(): p for p in people.values() if p.contact("email")}
    by_name = {p.name: p for p in people.values()}
    shifts = []
    for ev in cal.walk("VEVENT"):
        uid = str(ev.get("uid", ""))
        if not uid:
            raise CalendarError("an event has no UID")
        person = str(ev.get("x-facility-person", ""))
        if not person:
            person = _attendee(ev, by_email, by_name)
        if not person:
            raise CalendarError(f"event {uid}: no person of the roster (X-FACILITY-PERSON "
                                "or an ATTENDEE by e-mail or name)")
        team = str(ev.get("x-facility-team", ""))
        if not team:
            cats = ev.get("categories")
            team = str(cats.cats[0]) if cats is not None and cats.cats else ""
        if not team:
            team = people[person].team if person in people else ""
        if not team:
            raise CalendarError(f"event {uid}: no team (X-FACILITY-TEAM or CATEGORIES)")
        start, end = _when(ev, "dtstart", uid), _when(ev, "dtend", uid)
        stamp = _when(ev, "dtstamp", uid) if "dtstamp" in ev else start
        shifts.append(Shift(uid=uid, team=team, person=person, start=start, end=end,
                            kind=str(ev.get("x-facility-kind", ROTA)),
                            replaces=str(ev.get("x-facility-replaces", "")),
                            summary=str(ev.get("summary", "")), stamp=stamp))
    return shifts


def _attendee(ev: icalendar.Component, by_email: Mapping[str, Person],
              by_name: Mapping[str, Person]) -> str:
    found = ev.get("attendee")
    for a in found if isinstance(found, list) else [found] if found is not None else []:
        email = str(a).removeprefix("mailto:").removeprefix("MAILTO:").lower()
        if email in by_email:
            return by_email[email].id
        cn = str(a.params.get("cn", ""))
        if cn in by_name:
            return by_name[cn].id
    return ""


def _when(ev: icalendar.Component, name: str, uid: str) -> datetime:
    prop = ev.get(name)
    if prop is None:
        raise CalendarError(f"event {uid}: no {name.upper()}")
    value = prop.dt
    if isinstance(value, datetime):
        # A floating time is the campus's local time.
        return value if value.tzinfo is not None else value.replace(tzinfo=CHINA)
    if isinstance(value, date):
        return datetime.combine(value, datetime.min.time(), tzinfo=CHINA)
    raise CalendarError(f"event {uid}: {name.upper()} is not a date or time")
