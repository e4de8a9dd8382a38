"""Escalation: from the rules engine's incidents to the people who must answer.

Pure and on an injected clock (seconds): `take(alert)` and `tick()` return the notices to
send; nothing here sends, sleeps or stores. One page per incident (not per alert): the
first route that matches (system, zone, severity, rest day) names a chain of steps, each
`after` seconds from the raise, and the standby teams notified in parallel. A step fires
only while nobody has acknowledged and the incident is active. Quiet hours hold an
incident less severe than the route's threshold until they end; worse always goes.

One notification per incident per person: a person's first notice opens a thread, and
later changes (escalated, acknowledged, cleared) are updates on that thread, each at most
once. `sent` remembers (incident, person, event, step), so a repeated AlertMessage (a
QoS 1 redelivery, a restart's replay) cannot page anyone twice.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime

from duty.config import DutyFile, RouteSpec, Step
from duty.roster import CHINA, Calendar, Person, Roster
from facility import labels
from facility.messages import SEVERITY_RANK, AlertMessage, Severity

RAISED, ESCALATED, ACKNOWLEDGED, CLEARED = "raised", "escalated", "acknowledged", "cleared"


@dataclass(frozen=True, slots=True)
class Notice:
    incident: str
    person: str
    event: str  # raised, escalated, acknowledged, cleared
    step: int
    ts: float  # clock seconds
    title: str
    text: str
    channels: tuple[str, ...]  # in order; each next one is the fallback
    first: bool  # opens the person's thread (else an update on it)

    @property
    def thread(self) -> str:
        return f"{self.incident}.{self.person}"

    @property
    def key(self) -> tuple[str, str, str, int]:
        return (self.incident, self.person, self.event, self.step)


@dataclass(frozen=True, slots=True)
class Attempt:
    """One try of one channel for one notice (the delivery log's row)."""

    incident: str
    person: str
    event: str
    step: int
    channel: str
    n: int  # 1, 2, ... on this channel
    ts: float
    ok: bool
    retryable: bool
    detail: str


@dataclass(slots=True)
class Page:
    incident: str
    route: str
    raised_at: float
    severity: str
    family: str
    zone: str
    place: str
    title: str
    text: str
    alerts: dict[str, bool] = field(default_factory=dict)  # alert id -> active
    unacked: set[str] = field(default_factory=set)  # alerts that want an acknowledgement
    steps_done: int = 0
    held_until: float = 0.0  # quiet hours: the chain starts then
    acked_by: str = ""
    acked_at: float = 0.0
    cleared_at: float = 0.0
    notified: dict[str, float] = field(default_factory=dict)  # person -> first notice

    @property
    def open(self) -> bool:
        return not self.acked_by and not self.cleared_at


def page_json(page: Page) -> str:
    data = asdict(page)
    data["unacked"] = sorted(page.unacked)
    return json.dumps(data, ensure_ascii=False, sort_keys=True)


def page_from_json(text: str) -> Page:
    data = json.loads(text)
    data["unacked"] = set(data["unacked"])
    return Page(**data)


LinkMaker = Callable[[str, str], str]  # (person, incident) -> an acknowledge URL
CodeMaker = Callable[[str, str], str]  # (person, incident) -> a reply code


class Escalator:
    def __init__(self, config: DutyFile, roster: Roster, calendar: Calendar,
                 clock: Callable[[], float], *, link: LinkMaker | None = None,
                 places: Mapping[str, str] | None = None,
                 code: CodeMaker | None = None) -> None:
        self.config = config
        self.code = code
        self.roster = roster
        self.calendar = calendar
        self.clock = clock
        self.link = link
        self.places = places or {}
        self.routes = {r.name: r for r in config.routes}
        self.pages: dict[str, Page] = {}
        self.sent: set[tuple[str, str, str, int]] = set()

    # --- in ---------------------------------------------------------------------------

    def take(self, alert: AlertMessage) -> list[Notice]:
        incident = alert.incident or alert.id
        page = self.pages.get(incident)
        now = self.clock()
        if page is None:
            if not alert.active or alert.acknowledged:
                return []
            route = self.route_for(alert, now)
            if route is None:
                return []
            page = Page(incident=incident, route=route.name, raised_at=now,
                        severity=alert.severity, family=alert.family, zone=alert.zone,
                        place=alert.place, title=alert.title or alert.rule, text=alert.text)
            self.pages[incident] = page
            quiet = route.quiet_hours
            moment = datetime.fromtimestamp(now, UTC)
            if quiet is not None and _rank(alert.severity) < _rank(quiet.below) \
                    and quiet.contains(moment):
                page.held_until = quiet.ends_after(moment).timestamp()
        page.alerts[alert.id] = alert.active
        if alert.acknowledged:
            page.unacked.discard(alert.id)
        elif alert.active:
            page.unacked.add(alert.id)
        out = self.tick() if page.open else []
        if alert.acknowledged and not page.acked_by:
            page.acked_by, page.acked_at = alert.by or "?", now
            out += self._update(page, ACKNOWLEDGED, 0,
                                labels.DUTY_TEXT["acked_by"].format(who=page.acked_by))
        if not any(page.alerts.values()) and not page.cleared_at:
            page.cleared_at = now
            out += self._update(page, CLEARED, 0, labels.DUTY_TEXT["cleared"])
        return out

    def tick(self) -> list[Notice]:
        """Fire every step that is due; called on each alert and on a timer."""
        now = self.clock()
        out: list[Notice] = []
        for page in list(self.pages.values()):
            if not page.open:
                if page.acked_by and page.cleared_at:
                    del self.pages[page.incident]  # done: nothing more will be said
                continue
            if page.held_until > now:
                continue
            route = self.routes[page.route]
            steps = self.config.chains[route.chain]
            while page.steps_done < len(steps) and \
                    max(page.raised_at, page.held_until) + steps[page.steps_done].after <= now:
                out += self._fire(page, route, steps[page.steps_done], page.steps_done, now)
                page.steps_done += 1
        return out

    def route_for(self, alert: AlertMessage, now: float) -> RouteSpec | None:
        rest = self.calendar.is_rest_day(datetime.fromtimestamp(now, CHINA).date())
        for route in self.config.routes:
            if route.families and alert.family not in route.families:
                continue
            if route.zones and alert.zone not in route.zones:
                continue
            if _rank(alert.severity) < _rank(route.min_severity):
                continue
            if route.rest_days_only and not rest:
                continue
            return route
        return None

    def acknowledge(self, key: str, who: str) -> list[Notice]:
        """A page that is ours alone (a work order's SLA) acknowledged by its link."""
        page = self.pages.get(key)
        if page is None or not page.open:
            return []
        page.acked_by, page.acked_at = who, self.clock()
        return self._update(page, ACKNOWLEDGED, 0,
                            labels.DUTY_TEXT["acked_by"].format(who=who))

    def page_chain(self, key: str, chain: str, title: str) -> list[Notice]:
        """Page through a chain for something that is not an incident (a work order past
        its SLA): acknowledged by its link, never by the rules engine."""
        route = f"@{chain}"
        if key not in self.pages and route in self.routes:
            self.pages[key] = Page(incident=key, route=route, raised_at=self.clock(),
                                   severity=Severity.MAJOR, family="", zone="", place="",
                                   title=title, text="", alerts={key: True})
        return self.tick()

    def announce(self, key: str, targets: list[str], title: str) -> list[Notice]:
        """Tell people once, with no chain and nothing to acknowledge (a new work order)."""
        out = []
        now = self.clock()
        for person in self.resolve(targets, now):
            if (key, person.id, "workorder", 0) in self.sent:
                continue
            self.sent.add((key, person.id, "workorder", 0))
            head = f"【{labels.DUTY_EVENT['workorder']}】"
            out.append(Notice(incident=key, person=person.id, event="workorder", step=0,
                              ts=now, title=head + title, text=head + title,
                              channels=tuple(self.config.workorders.channels), first=True))
        return out

    # --- out --------------------------------------------------------------------------

    def _fire(self, page: Page, route: RouteSpec, step: Step, index: int,
              now: float) -> list[Notice]:
        targets = list(step.notify) + (route.parallel if index == 0 else [])
        people = self.resolve(targets, now)
        out: list[Notice] = []
        if index > 0:
            names = "、".join(p.name for p in people) or labels.DUTY_TEXT["nobody"]
            minutes = round((now - max(page.raised_at, page.held_until)) / 60)
            note = labels.DUTY_TEXT["escalated_after"].format(minutes=minutes) + names
            out += self._update(page, ESCALATED, index, note)
        event = RAISED if index == 0 else ESCALATED
        for person in people:
            if person.id in page.notified:
                continue
            notice = self._notice(page, person, event, index, now, first=True)
            if notice is not None:
                page.notified[person.id] = now
                out.append(notice)
        return out

    def _update(self, page: Page, event: str, step: int, note: str) -> list[Notice]:
        now = self.clock()
        out = []
        for pid in page.notified:
            person = self.roster.people.get(pid)
            if person is None:
                continue
            notice = self._notice(page, person, event, step, now, first=False, note=note)
            if notice is not None:
                out.append(notice)
        return out

    def _notice(self, page: Page, person: Person, event: str, step: int, now: float, *,
                first: bool, note: str = "") -> Notice | None:
        key = (page.incident, person.id, event, step)
        if key in self.sent:
            return None
        self.sent.add(key)
        route = self.routes[page.route]
        title = (f"【{labels.label(labels.SEVERITY, page.severity)}·"
                 f"{labels.label(labels.DUTY_EVENT, event)}】{page.title}")
        lines = [title]
        if first:
            where = self.places.get(page.place, page.place)
            when = datetime.fromtimestamp(page.raised_at, CHINA)
            lines += [f"{labels.DUTY_TEXT['system']}：{labels.label(labels.FAMILY, page.family)}",
                      f"{labels.DUTY_TEXT['place']}：{where}",
                      f"{labels.DUTY_TEXT['time']}：{when:%Y-%m-%d %H:%M:%S}"]
            if page.text:
                lines.append(page.text)
        if note:
            lines.append(note)
        if page.open and self.link is not None:
            minutes = round(self.config.link_lifetime / 60)
            lines.append(labels.DUTY_TEXT["ack_prompt"].format(minutes=minutes)
                         + self.link(person.id, page.incident))
            if self.code is not None and person.contact("mobile"):
                lines.append(labels.DUTY_TEXT["reply_prompt"].format(
                    code=self.code(person.id, page.incident)))
        return Notice(incident=page.incident, person=person.id, event=event, step=step,
                      ts=now, title=title, text="\n".join(lines),
                      channels=tuple(route.channels), first=first)

    def resolve(self, targets: list[str], now: float) -> list[Person]:
        at = datetime.fromtimestamp(now, UTC)
        found: dict[str, Person] = {}
        for target in targets:
            kind, _, ref = target.partition(":")
            if kind == "on_duty":
                people = self.roster.on_duty(ref, at)
            elif kind == "leader":
                people = self.roster.leaders(ref)
            elif kind == "team":
                people = self.roster.members(ref)
            else:
                people = [self.roster.people[ref]] if ref in self.roster.people else []
            for p in people:
                found.setdefault(p.id, p)
        return list(found.values())


def _rank(severity: str) -> int:
    return SEVERITY_RANK.get(Severity(severity), 0)
