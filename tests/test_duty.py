"""Duty (no servers): the roster and who is on duty, iCalendar in and out, acknowledge
links, the escalation chains on a fake clock, quiet hours, work orders."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from duty import ical
from duty.config import HOLIDAYS, DutyFile, load_duty
from duty.escalate import Escalator, Notice
from duty.links import LinkError, Signer
from duty.roster import CHINA, OVERRIDE, SWAP, Calendar, Roster, Shift
from duty.workorders import WorkOrderBook, WorkOrderRefused
from facility import messages as m

REPO = Path(__file__).resolve().parent.parent
# Sunday 6 December 2026, 03:00 in Guangzhou: a rest day, the night shift.
NIGHT = datetime(2026, 12, 6, 3, 0, tzinfo=CHINA)


class Clock:
    def __init__(self, start: datetime) -> None:
        self.now = start.timestamp()

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


@pytest.fixture(scope="module")
def config() -> DutyFile:
    return load_duty(REPO / "config" / "duty.yaml")


@pytest.fixture(scope="module")
def calendar() -> Calendar:
    return Calendar.load(HOLIDAYS)


def roster_for(config: DutyFile, calendar: Calendar) -> Roster:
    return config.roster(calendar, NIGHT - timedelta(days=3), NIGHT + timedelta(days=3))


def alert(clock: Clock, *, id: str = "fire-a1", incident: str = "inc-1", active: bool = True,
          acknowledged: bool = False, by: str = "", family: str = "fire",
          severity: m.Severity = m.Severity.CRITICAL, rule: str = "fire-detector-alarm",
          source: str = "smoke-ebike-west-1") -> m.AlertMessage:
    state = m.AlertState.ACTIVE_ACK if acknowledged else m.AlertState.ACTIVE_UNACK
    return m.AlertMessage(id=id, site="s", rule=rule, source=source, ts=int(clock() * 1e9),
                          state=state, active=active, acknowledged=acknowledged,
                          severity=severity, priority=1, transition="raised", family=family,
                          place="ebike-shed-west", incident=incident, by=by,
                          title="西门电动自行车停车棚火警")


# --- roster -------------------------------------------------------------------------------

def test_calendar_knows_rest_days_and_makeup_days(calendar: Calendar) -> None:
    assert calendar.is_rest_day(NIGHT.date())  # a Sunday
    assert calendar.is_rest_day(datetime(2026, 10, 2).date())  # 国庆节, a Friday
    assert not calendar.is_rest_day(datetime(2026, 2, 14).date())  # a Saturday made a workday
    assert not calendar.is_rest_day(datetime(2026, 12, 7).date())


def test_on_duty_follows_the_rota_with_overrides_and_swaps(config: DutyFile,
                                                           calendar: Calendar) -> None:
    roster = roster_for(config, calendar)
    night = [p.id for p in roster.on_duty("control_room", NIGHT)]
    day = [p.id for p in roster.on_duty("control_room", NIGHT + timedelta(hours=6))]
    assert len(night) == 1 and len(day) == 1 and night != day
    # 李建华 swaps with 赵磊 for the night; then an override puts the chief on alone.
    roster.shifts.append(Shift("swap-1", "control_room", "guard-zhao", NIGHT - timedelta(hours=1),
                               NIGHT + timedelta(hours=1), kind=SWAP, replaces=night[0]))
    assert [p.id for p in roster.on_duty("control_room", NIGHT)] == ["guard-zhao"]
    roster.shifts.append(Shift("ovr-1", "control_room", "chief-huang", NIGHT,
                               NIGHT + timedelta(minutes=30), kind=OVERRIDE))
    assert [p.id for p in roster.on_duty("control_room", NIGHT)] == ["chief-huang"]
    assert [p.id for p in roster.on_duty("control_room", NIGHT + timedelta(minutes=45))] \
        == ["guard-zhao"]
    assert [p.id for p in roster.leaders("control_room")] == ["chief-huang"]


def test_icalendar_round_trip_is_unchanged(config: DutyFile, calendar: Calendar) -> None:
    roster = roster_for(config, calendar)
    roster.shifts.append(Shift("swap-1", "control_room", "guard-zhao", NIGHT,
                               NIGHT + timedelta(hours=2), kind=SWAP, replaces="guard-li",
                               summary="换班：赵磊替李建华"))
    first = ical.export(roster.shifts, roster.people, roster.teams)
    back = ical.parse(first, roster.people)
    assert ical.export(back, roster.people, roster.teams) == first
    assert {s.uid: (s.person, s.team, s.start, s.end, s.kind, s.replaces) for s in back} == \
        {s.uid: (s.person, s.team, s.start, s.end, s.kind, s.replaces) for s in roster.shifts}
    assert "值班：李建华（安防监控中心）".encode() in first.replace(b"\r\n ", b"")


def test_icalendar_from_another_calendar(config: DutyFile, calendar: Calendar) -> None:
    """An office's own calendar: local times with TZID, the person as an ATTENDEE."""
    roster = roster_for(config, calendar)
    text = (b"BEGIN:VCALENDAR\r\nVERSION:2.0\r\nPRODID:-//Office//Roster//ZH\r\n"
            b"BEGIN:VEVENT\r\nUID:office-42@gov\r\nDTSTAMP:20261201T000000Z\r\n"
            b"DTSTART;TZID=Asia/Shanghai:20261206T200000\r\n"
            b"DTEND;TZID=Asia/Shanghai:20261207T080000\r\n"
            b"SUMMARY:\xe5\x80\xbc\xe7\x8f\xad\r\nCATEGORIES:control_room\r\n"
            b"ATTENDEE;CN=\xe7\x8e\x8b\xe4\xbc\x9f:mailto:WANG@campus.example\r\n"
            b"END:VEVENT\r\nEND:VCALENDAR\r\n")
    [shift] = ical.parse(text, roster.people)
    assert (shift.uid, shift.person, shift.team) == ("office-42@gov", "guard-wang", "control_room")
    assert shift.start == datetime(2026, 12, 6, 12, 0, tzinfo=UTC)
    with pytest.raises(ical.CalendarError, match="no person"):
        ical.parse(text.replace(b"WANG@", b"nobody@").replace(b"CN=\xe7\x8e\x8b\xe4\xbc\x9f",
                                                               b"CN=x"), roster.people)


# --- links --------------------------------------------------------------------------------

def test_links_are_signed_and_expire() -> None:
    signer = Signer(b"k" * 32, lifetime=600)
    token = signer.token("guard-li", "inc.1", 1000.0)
    claim = signer.check(token, 1500.0)
    assert (claim.person, claim.incident) == ("guard-li", "inc.1")
    with pytest.raises(LinkError, match="expired"):
        signer.check(token, 1600.0)
    forged = token.replace("guard-li", "chief-huang")
    with pytest.raises(LinkError, match="invalid"):
        signer.check(forged, 1500.0)
    with pytest.raises(LinkError, match="invalid"):
        Signer(b"x" * 32).check(token, 1500.0)


# --- escalation ---------------------------------------------------------------------------

def run_chain(config: DutyFile, calendar: Calendar, ack_at: float | None,
              ack_by: str = "李建华") -> list[tuple[float, Notice]]:
    clock = Clock(NIGHT)
    start = clock()
    esc = Escalator(config, roster_for(config, calendar), calendar, clock,
                    link=lambda p, i: f"https://duty/ack/{p}")
    log: list[tuple[float, Notice]] = []
    log += [(clock() - start, n) for n in esc.take(alert(clock))]
    # The same alert again (a QoS 1 redelivery) and its detector's partner in the incident.
    log += [(clock() - start, n) for n in esc.take(alert(clock))]
    log += [(clock() - start, n) for n in esc.take(alert(clock, id="fire-a2"))]
    while clock() - start < 900:
        clock.advance(1)
        if ack_at is not None and clock() - start == ack_at:
            log += [(clock() - start, n) for n in esc.take(
                alert(clock, acknowledged=True, by=ack_by))]
        log += [(clock() - start, n) for n in esc.tick()]
    return log


def test_escalation_until_someone_answers(config: DutyFile, calendar: Calendar) -> None:
    log = run_chain(config, calendar, ack_at=None)
    firsts = [(t, n.person, n.event) for t, n in log if n.first]
    assert firsts == [(0, "guard-li", "raised"), (0, "standby-liu", "raised"),
                      (180, "chief-huang", "escalated"), (360, "leader-lin", "escalated")]
    keys = [n.key for _, n in log]
    assert len(keys) == len(set(keys)), "nobody is told the same thing twice"
    updates = [(t, n.person, n.step) for t, n in log if not n.first]
    assert (180, "guard-li", 1) in updates and (360, "chief-huang", 2) in updates
    assert all("https://duty/ack/" in n.text for _, n in log)
    assert all("【紧急" in n.title for _, n in log)


def test_an_acknowledgement_stops_the_chain(config: DutyFile, calendar: Calendar) -> None:
    log = run_chain(config, calendar, ack_at=120)
    assert {n.person for _, n in log if n.first} == {"guard-li", "standby-liu"}
    acks = [(t, n.person) for t, n in log if n.event == "acknowledged"]
    assert acks == [(120, "guard-li"), (120, "standby-liu")]
    assert all("已由李建华确认" in n.text and "ack" not in n.text.split("确认")[-1]
               for _, n in log if n.event == "acknowledged")


def test_quiet_hours_hold_a_minor_incident_not_an_emergency(config: DutyFile,
                                                            calendar: Calendar) -> None:
    clock = Clock(NIGHT)
    esc = Escalator(config, roster_for(config, calendar), calendar, clock)
    minor = alert(clock, id="pump-1", incident="inc-2", family="energy",
                  severity=m.Severity.MINOR, rule="energy-off-hours")
    assert esc.take(minor) == []
    clock.advance(4 * 3600 - 1)  # 06:59:59
    assert esc.tick() == []
    clock.advance(1)  # 07:00: quiet hours are over
    assert [n.person for n in esc.tick()] == ["guard-li"]  # the chain starts now
    clock.advance(899)
    assert esc.tick() == []
    clock.advance(1)  # 07:15: then the chief
    assert [n.person for n in esc.tick() if n.first] == ["chief-huang"]
    clock.advance(-3 * 3600)
    assert esc.take(alert(clock, id="fire-9", incident="inc-3"))  # a fire: at once


def test_a_cleared_incident_stops_and_says_so(config: DutyFile, calendar: Calendar) -> None:
    clock = Clock(NIGHT)
    esc = Escalator(config, roster_for(config, calendar), calendar, clock)
    esc.take(alert(clock))
    clock.advance(60)
    out = esc.take(alert(clock, active=False))
    assert {(n.person, n.event) for n in out} == {("guard-li", "cleared"),
                                                   ("standby-liu", "cleared")}
    clock.advance(600)
    assert esc.tick() == []


# --- work orders --------------------------------------------------------------------------

def test_work_order_lifecycle(config: DutyFile) -> None:
    clock = Clock(NIGHT)
    ids = iter(f"wo-{n}" for n in range(1, 10))
    book = WorkOrderBook(config.workorders, clock, lambda: next(ids))
    charger = alert(clock, id="ev-1", incident="inc-ev", family="ev_charger",
                    rule="ev-charger-faulted", source="ev-p2-07", severity=m.Severity.MAJOR)
    book.take(charger)
    clock.advance(599)
    assert book.tick() == ([], [])  # not yet 10 minutes
    clock.advance(1)
    [order], _ = book.tick()
    assert (order.device, order.team, order.priority, order.state) == \
        ("ev-p2-07", "repair", 3, "open")
    assert book.tick() == ([], [])
    # The same fault again links to the open order instead of a second one.
    book.take(alert(clock, id="ev-2", incident="inc-ev2", family="ev_charger",
                    rule="ev-charger-faulted", source="ev-p2-07"))
    assert order.alerts == ["ev-1", "ev-2"] and len(book.orders) == 1
    with pytest.raises(WorkOrderRefused, match="不能改为"):
        book.move(order.id, "resolved", "repair-xu")
    book.move(order.id, "assigned", "repair-xu", assignee="repair-sun")
    book.move(order.id, "in_progress", "repair-sun")
    with pytest.raises(WorkOrderRefused, match="设备仍处于故障状态"):
        book.move(order.id, "resolved", "repair-sun")
    book.take(alert(clock, id="ev-2", active=False, family="ev_charger",
                    rule="ev-charger-faulted", source="ev-p2-07"))
    book.move(order.id, "resolved", "repair-sun")
    clock.advance(599)
    book.tick()
    assert order.state == "resolved"
    clock.advance(1)
    book.tick()
    assert order.state == "verified"
    # A relapse within a week reopens it.
    book.take(alert(clock, id="ev-3", family="ev_charger", rule="ev-charger-faulted",
                    source="ev-p2-07"))
    clock.advance(600)
    [again], _ = book.tick()
    assert again is order and order.state == "open" and len(book.orders) == 1
    assert [e["action"] for e in order.timeline] == [
        "opened", "linked", "assigned", "in_progress", "resolved", "verified", "reopened"]


def test_hotline_ticket_and_sla(config: DutyFile) -> None:
    clock = Clock(NIGHT)
    book = WorkOrderBook(config.workorders, clock, lambda: "wo-h1")
    order = book.open(kind="hotline", device="", place="west-gate", family="drainage",
                      fault="西门积水", priority=1, team="repair", by="guard-li",
                      number="12345-20261206-0042")
    clock.advance(4 * 3600)
    _, missed = book.tick()
    assert missed == [order] and order.sla_breached
    assert book.tick() == ([], [])  # missed once, paged once


def test_a_missed_sla_pages_through_the_work_order_chain(config: DutyFile,
                                                         calendar: Calendar) -> None:
    from duty.config import RouteSpec

    clock = Clock(NIGHT)
    esc = Escalator(config, roster_for(config, calendar), calendar, clock)
    esc.routes["@workorder"] = RouteSpec(name="@workorder", chain="workorder")
    first = esc.page_chain("wo-1-sla", "workorder", "维修工单wo-1已超过处理时限（4.0小时）未解决")
    assert {n.person for n in first} == {"repair-sun", "repair-xu"}
    assert esc.page_chain("wo-1-sla", "workorder", "again") == []  # paged once
    clock.advance(3600)
    assert [n.person for n in esc.tick() if n.first] == ["leader-lin"]
