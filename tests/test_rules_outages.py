"""Alarms through outages of the data path itself (on the real broker, a clock the test
drives): a gateway's last will does not skip the offline hold."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from facility import messages as m
from facility import topics
from facility.deadletters import QUARANTINED
from facility.endpoints import load_endpoints
from facility.messages import (
    AlertAction,
    AlertState,
    Availability,
    DeviceStatus,
    Event,
    Family,
    Quality,
    Reading,
    Scalar,
)
from facility.settings import Settings
from facility.site import load_site
from facility.topology import Topology
from rules.clock import NS, ManualClock
from rules.config import load_rules, rule_files
from rules.engine import Engine
from rules.scope import Plan
from tests.conftest import REPO, SITE_FILE, catalog
from tests.helpers import Collector
from tests.test_rules_scenarios import START, Campus, running, until


def gateway_status(campus: Campus, state: Availability, ts: int, reason: str) -> DeviceStatus:
    return DeviceStatus(site=campus.site_id, family=Family.GATEWAY, device="gw-iot", ts=ts,
                        state=state, reason=reason, gateway="gw-iot")


async def test_a_last_will_waits_for_the_offline_hold(settings: Settings,
                                                      tmp_path: Path) -> None:
    """The will carries the time the gateway connected (long ago for a gateway that was
    up for hours); the offline time is when it arrives, so a 10-second blip raises
    nothing and a real outage raises after the rule's 60 s, not at once."""
    clock = ManualClock(START)
    campus = Campus(settings, tmp_path, clock)
    connected = START - 1 * NS  # the will is built just before the connection is made
    async with running(campus):
        await campus.send(gateway_status(campus, Availability.ONLINE, START, "running"))
        await campus.advance(3600)  # up for an hour
        await campus.send(gateway_status(campus, Availability.OFFLINE, connected,
                                         "connection lost"))
        await campus.advance(10)
        back = campus.now()
        await campus.send(gateway_status(campus, Availability.ONLINE, back, "running"))
        await campus.advance(120)
        assert campus.open_alerts("gateway-offline") == []
        # A real outage: nothing before the hold, the alert after it.
        reconnected = back - 1 * NS  # the new connection's will
        await campus.advance(3600)
        await campus.send(gateway_status(campus, Availability.OFFLINE, reconnected,
                                         "connection lost"))
        await campus.advance(59)
        assert campus.open_alerts("gateway-offline") == []
        await campus.advance(2)
        await until("the gateway alert", lambda: campus.open_alerts("gateway-offline"))


async def test_the_anti_flap_hold_applies_when_acknowledged(settings: Settings,
                                                            tmp_path: Path) -> None:
    """The operator acknowledged the fire; when it clears, the screens still hold the
    evacuation for incident_hold (30 s), as they do when nobody acknowledged."""
    clock = ManualClock(START)
    campus = Campus(settings, tmp_path, clock)
    async with running(campus):
        assert campus.rules is not None and campus.rules.engine is not None
        await campus.send(
            campus.event("fp-ebike", "fire_alarm", "火警 西门车棚"),
            campus.reading(Family.FIRE, "fp-ebike", state="alarm", alarm_count=1))
        await until("the evacuation on the west gate screen",
                    lambda: "疏散" in campus.screen("led-west-gate"))
        for alert in campus.open_alerts():
            if alert.state is AlertState.ACTIVE_UNACK:
                result = await campus.rules.operate(AlertAction.ACKNOWLEDGE, alert.id, "guard-1")
                assert result.ok, result
        await campus.send(
            campus.event("fp-ebike", "restore"),
            campus.reading(Family.FIRE, "fp-ebike", state="normal", alarm_count=0))
        await campus.advance(1)
        assert not any(a.active for a in campus.open_alerts())
        assert "疏散" in campus.screen("led-west-gate")  # held, acknowledged or not
        await campus.advance(20)
        assert "疏散" in campus.screen("led-west-gate")
        await campus.advance(11)  # past the hold
        await until("the west gate screen back to normal",
                    lambda: "疏散" not in campus.screen("led-west-gate"))
        assert [i for i in campus.rules.engine.book.incidents.values()
                if i.category == "fire"] == []  # closed after its hold


async def test_no_all_clear_while_the_flood_goes_on(settings: Settings, tmp_path: Path) -> None:
    """The flood falls from critical to warning: the west PA says no all-clear while the
    screen still warns; it says it once, when the incident has ended."""
    clock = ManualClock(START)
    campus = Campus(settings, tmp_path, clock)
    async with running(campus):
        assert campus.player is not None
        pa = campus.player.screens["pa-west"]
        for level in (26.0, 46.0):
            await campus.send(campus.reading(Family.DRAINAGE, "wl-west-gate", water_level=level))
            await campus.advance(60)
        await until("the PA in the west zone", lambda: pa.announced)
        assert "紧急" in campus.screen("led-west-gate")
        for level in [28.0] * 12:  # below the critical clear level, above the warning's
            await campus.send(campus.reading(Family.DRAINAGE, "wl-west-gate", water_level=level))
            await campus.advance(60)
        [alert] = campus.open_alerts("waterlogging")
        assert alert.active and alert.severity.value == "warning"
        await until("the warning on the west-gate screen",
                    lambda: "预警" in campus.screen("led-west-gate"))
        assert [b.kind.value for b in pa.announced] == ["emergency"]  # no all-clear yet
        for level in [10.0] * 12:  # the flood is over: 10 quiet minutes and the hold
            await campus.send(campus.reading(Family.DRAINAGE, "wl-west-gate", water_level=level))
            await campus.advance(60)
        await until("the all-clear in the west PA zone", lambda: len(pa.announced) == 2)
        assert pa.announced[-1].kind.value == "all_clear" and "恢复" in pa.announced[-1].text
        assert "积水" not in campus.screen("led-west-gate")


# --- the backlog in device-time order ------------------------------------------------------

def _engine() -> tuple[Engine, Topology]:
    site = load_site(SITE_FILE)
    topology = Topology(catalog(site))
    endpoints = load_endpoints(REPO / "config" / "endpoints.yaml", site)
    rules = load_rules(rule_files(REPO / "config" / "rules"), topology, endpoints)
    return Engine(topology, rules, endpoints, now=START), topology


def test_an_older_reading_is_history_for_every_family() -> None:
    """For every source of every family: a reading older than the newest one taken (it
    came late, over the other connection or from a backlog) changes nothing."""
    engine, topology = _engine()
    ev = engine.evaluator
    now = START + 60 * NS
    families = set()
    for source in topology.sources.values():
        names = sorted(engine.evaluator.plans.get(source.id, Plan()).reads)
        if not names:
            continue
        families.add(source.family)
        newest: dict[str, Scalar] = {name: 2.0 for name in names}
        engine.reading(Reading(site=topology.site_id, family=Family(source.family),
                               device=source.id, ts=now, values=newest), now)
        engine.reading(Reading(site=topology.site_id, family=Family(source.family),
                               device=source.id, ts=now - NS, values={n: 1.0 for n in names}),
                       now + NS)
        assert {n: ev.data[source.id].values[n] for n in names} == newest, source.id
    assert families >= {"bollard", "energy", "fire", "ev_charger", "drainage", "gas"}
    assert ev.history > 0


async def test_a_late_normal_reading_does_not_clear_a_newer_fire(settings: Settings,
                                                               tmp_path: Path) -> None:
    """The panel's FIRE_ALARM event (newer) is taken before its NORMAL status reading
    (older, held up on the telemetry connection): one alert, never cleared and raised
    again; the same for a detector."""
    clock = ManualClock(START)
    campus = Campus(settings, tmp_path, clock)
    async with running(campus):
        assert campus.rules is not None and campus.rules.store is not None
        await campus.advance(5)
        older = campus.now() - 3 * NS
        await campus.send(campus.event("fp-ebike", "fire_alarm", "火警 西门车棚"),
                          campus.event("fd-ebw-01", "fire_alarm", "西门车棚烟感1 火警"))
        await campus.send(
            Reading(site=campus.site_id, family=Family.FIRE, device="fp-ebike", ts=older,
                    values={"state": "normal", "alarm_count": 0}),
            Reading(site=campus.site_id, family=Family.FIRE, device="fd-ebw-01", ts=older,
                    values={"state": "normal", "smoke": 0.02, "temperature": 26.0}))
        await campus.advance(1)
        for rule, source in (("fire-panel-alarm", "fp-ebike"),
                             ("fire-detector-alarm", "fd-ebw-01")):
            records = await campus.rules.store.alerts(campus.site_id, rule=rule)
            assert [r.source for r in records] == [source], rule
            actions = [h["action"] for h in await campus.rules.store.history(records[0].id)]
            assert "cleared" not in actions and "re_raised" not in actions, actions


# --- suppression through the end of an outage ----------------------------------------------

PLC = "bollard-plc-south"
BOLLARDS = [f"bollard-s{n:02d}" for n in range(1, 43)]


def plc_reading(campus: Campus) -> Reading:
    return Reading(site=campus.site_id, family=Family.BOLLARD, device=PLC, ts=campus.now(),
                   values={"mode": "auto", "power": "mains", "supply_pressure": 120.0,
                           "bollards_fault": 0})


def bollard_reading(campus: Campus, device: str) -> Reading:
    return Reading(site=campus.site_id, family=Family.BOLLARD, device=device, ts=campus.now(),
                   values={"state": "down", "position": 0.0, "hydraulic_pressure": 60.0,
                           "fault_code": "none", "target": "none"})


def annunciated(history: list[dict[str, object]]) -> bool:
    """Whether the operator was ever shown it: raised unsuppressed, or unsuppressed later."""
    return any(h["action"] == "unsuppressed" for h in history) or \
        (bool(history) and history[0]["action"] == "raised"
         and not any(h["action"] == "suppressed" and h["ts"] == history[0]["ts"]
                     for h in history))


async def test_a_plc_comms_loss_is_one_alarm_and_no_acknowledgement_flood(
        settings: Settings, tmp_path: Path) -> None:
    """The PLC unreachable over Modbus for two minutes: the gateway keeps publishing
    `comm_failure` readings for it. The PLC's own no-data alarm comes first and the 42
    bollards' are suppressed as they are raised; when the PLC is back they stay suppressed
    until their fresh data clears them, and none of them asks for an acknowledgement."""
    clock = ManualClock(START)
    campus = Campus(settings, tmp_path, clock)
    async with running(campus):
        assert campus.rules is not None and campus.rules.store is not None
        await campus.send(plc_reading(campus), *(bollard_reading(campus, b) for b in BOLLARDS))
        for _ in range(120):  # two minutes without an answer
            await campus.send(Reading(site=campus.site_id, family=Family.BOLLARD, device=PLC,
                                      ts=campus.now(), values={},
                                      quality=Quality.COMM_FAILURE))
            await campus.advance(1)
        plc = [a for a in campus.open_alerts("device-no-data") if a.source == PLC]
        assert len(plc) == 1 and plc[0].annunciated
        under = [a for a in campus.open_alerts() if a.source in BOLLARDS]
        assert {a.source for a in under} == set(BOLLARDS)
        assert all(a.suppressed_by for a in under)
        # The PLC answers again: it first, then its bollards within their poll period.
        await campus.send(plc_reading(campus))
        await campus.advance(1)
        await campus.send(*(bollard_reading(campus, b) for b in BOLLARDS))
        await campus.advance(1)
        assert not [a for a in campus.open_alerts() if a.source in BOLLARDS]
        store = campus.rules.store
        shown = []
        for record in await store.alerts(campus.site_id):
            if record.source in BOLLARDS:
                history = await store.history(record.id)
                if annunciated(history):
                    shown.append(record.source)
        assert shown == []  # nothing an operator saw, nothing to acknowledge
        needing_ack = [a for a in campus.open_alerts() if a.annunciated and not a.acknowledged
                       and a.source in [PLC, *BOLLARDS]]
        assert {a.source for a in needing_ack} == {PLC}


async def test_a_detector_restored_just_after_its_panel_needs_no_acknowledgement(
        settings: Settings, tmp_path: Path) -> None:
    """The panel's RESTORE comes a moment before the detector's own: the detector's alarm
    is not unsuppressed in between (it would be shown, cleared 5 ms later and need an
    acknowledgement); it closes quietly, as it was never shown."""
    clock = ManualClock(START)
    campus = Campus(settings, tmp_path, clock)
    async with running(campus):
        assert campus.rules is not None and campus.rules.store is not None
        await campus.send(campus.event("fp-ebike", "fire_alarm", "火警 西门车棚"))
        await campus.send(campus.event("fd-ebw-01", "fire_alarm", "西门车棚烟感1 火警"))
        [detector] = campus.open_alerts("fire-detector-alarm")
        assert detector.suppressed_by
        await campus.send(campus.event("fp-ebike", "restore"))
        await campus.send(campus.event("fd-ebw-01", "restore"))
        await campus.advance(10)  # past the grace
        assert campus.open_alerts("fire-detector-alarm") == []
        history = await campus.rules.store.history(detector.id)
        assert "unsuppressed" not in [h["action"] for h in history]


async def test_screens_follow_the_reading_while_the_level_holds(settings: Settings,
                                                                tmp_path: Path) -> None:
    """The flood holds at critical while the water moves: the west-gate screen shows the
    latest reading within the refresh interval (30 s), not the value at the last severity
    change; the alert keeps the text it was raised with."""
    clock = ManualClock(START)
    campus = Campus(settings, tmp_path, clock)
    async with running(campus):
        await campus.send(campus.reading(Family.DRAINAGE, "wl-west-gate", water_level=46.0))
        await campus.advance(1)
        await until("the critical message", lambda: "46厘米" in campus.screen("led-west-gate"))
        [alert] = campus.open_alerts("waterlogging")
        raised_text = alert.text
        for level in (44.0, 41.0, 43.0):
            # The new level within the refresh interval, then again (unchanged) after it.
            await campus.send(campus.reading(Family.DRAINAGE, "wl-west-gate",
                                             water_level=level))
            await campus.advance(31)
            await campus.send(campus.reading(Family.DRAINAGE, "wl-west-gate",
                                             water_level=level))
            await until(f"the screen at {level:.0f} cm", lambda v=level: f"积水{v:.0f}厘米"
                        in campus.screen("led-west-gate"))
        assert alert.text == raised_text and alert.severity.value == "critical"
        assert campus.rules is not None and campus.rules.store is not None
        actions = [h["action"] for h in await campus.rules.store.history(alert.id)]
        assert "updated" not in actions  # values move on without history rows


async def test_a_late_input_marks_its_alert_late(settings: Settings, tmp_path: Path) -> None:
    """An alarm event that arrives 67 s after the device stamped it (the gateway was
    away) raises its alert marked late, for the page to say so; one on time is not."""
    clock = ManualClock(START)
    campus = Campus(settings, tmp_path, clock)
    async with running(campus):
        await campus.advance(100)
        late = Event(site=campus.site_id, family=Family.FIRE, device="fp-main",
                     ts=campus.now() - 67 * NS, id="fp-main-late-1", name="fire_alarm",
                     text="火警 主楼设备房")
        await campus.send(late, campus.event("fp-ebike", "fire_alarm", "火警 西门车棚"))
        alerts = {a.source: a for a in campus.open_alerts("fire-panel-alarm")}
        assert alerts["fp-main"].late_s == 67 and alerts["fp-ebike"].late_s == 0
        assert alerts["fp-main"].message("raised", campus.now()).late_s == 67


def test_a_device_clock_ahead_does_not_order_what_follows() -> None:
    """A device 100 s ahead, then the gateway's receive time once the skew grew too large:
    the later reading is news, not history (a time ahead counts as its arrival)."""
    engine, topology = _engine()
    now = START + 60 * NS
    device = "wl-west-gate"

    def level(value: float, ts: int, at: int) -> None:
        engine.reading(Reading(site=topology.site_id, family=Family.DRAINAGE, device=device,
                               ts=ts, values={"water_level": value}), at)

    level(10.0, now + 100 * NS, now)
    level(12.0, now + 5 * NS, now + 5 * NS)  # stamped on arrival
    assert engine.evaluator.data[device].values["water_level"] == 12.0
    level(11.0, now + 2 * NS, now + 6 * NS)  # older than the last: history
    assert engine.evaluator.data[device].values["water_level"] == 12.0


async def test_a_short_blip_of_the_plc_gateway_raises_nothing(settings: Settings,
                                                              tmp_path: Path) -> None:
    """The PLC is polled every second, so its no-data limit (10 s) is shorter than its
    gateway's offline hold (60 s): while the gateway is known to be away, the silence is
    the gateway's, and a 10-second blip raises nothing at all."""
    clock = ManualClock(START)
    campus = Campus(settings, tmp_path, clock)
    async with running(campus):
        def gw(state: Availability, ts: int) -> DeviceStatus:
            return DeviceStatus(site=campus.site_id, family=Family.GATEWAY,
                                device="gw-plc-south", ts=ts, state=state, reason="",
                                gateway="gw-plc-south")

        connected = campus.now()
        await campus.send(gw(Availability.ONLINE, connected),
                          plc_reading(campus), *(bollard_reading(campus, b) for b in BOLLARDS))
        await campus.advance(5)
        await campus.send(gw(Availability.OFFLINE, connected - NS))  # its will
        for _ in range(12):
            await campus.advance(1)
        await campus.send(gw(Availability.ONLINE, campus.now()), plc_reading(campus),
                          *(bollard_reading(campus, b) for b in BOLLARDS))
        await campus.advance(2)
        assert [a for a in campus.open_alerts() if a.source in [PLC, *BOLLARDS, "gw-plc-south"]
                and a.annunciated] == []


async def test_a_flood_never_talks_over_an_evacuation(settings: Settings, tmp_path: Path) -> None:
    """A flood at the west gate during a fire evacuation: the west PA zone says the
    evacuation only; the flood is announced there once the fire is over. The flood's
    screens and PA reach its own zone (west gate): the same area for both."""
    clock = ManualClock(START)
    campus = Campus(settings, tmp_path, clock)
    async with running(campus):
        assert campus.player is not None
        west = campus.player.screens["pa-west"]
        await campus.send(campus.event("fp-ebike", "fire_alarm", "火警 西门车棚"),
                          campus.reading(Family.FIRE, "fp-ebike", state="alarm",
                                         alarm_count=1))
        await until("the evacuation in the west PA zone", lambda: west.announced)
        await campus.send(campus.reading(Family.DRAINAGE, "wl-west-gate", water_level=46.0))
        await campus.advance(1)
        assert [b.kind.value for b in west.announced] == ["emergency"]  # the fire only
        assert "疏散" in campus.screen("led-west-gate")  # the higher one on the screen too
        await campus.send(campus.event("fp-ebike", "restore"),
                          campus.reading(Family.FIRE, "fp-ebike", state="normal",
                                         alarm_count=0))
        await campus.advance(31)  # the fire's hold is over
        await until("the fire's all-clear, then the flood", lambda: len(west.announced) >= 3)
        kinds = [(b.kind.value, "积水" in b.text) for b in west.announced]
        assert kinds[:3] == [("emergency", False), ("all_clear", False), ("emergency", True)]
        # The flood's area: the west gate's screen and the PA zone covering it, no other.
        assert "积水" in campus.screen("led-west-gate")
        assert "积水" not in campus.screen("led-south-gate")
        others = ("pa-main", "pa-east", "pa-south", "pa-north")
        assert not any("积水" in b.text for p in others
                       for b in campus.player.screens[p].announced)


async def test_one_device_one_fault_one_alarm(settings: Settings, tmp_path: Path) -> None:
    """The PLC goes silent (its no-data alarm is shown) and, two minutes after the gateway
    marked it offline, its offline alarm comes: the same fault, so it is consequential to
    the alarm already shown, not a second one to acknowledge."""
    clock = ManualClock(START)
    campus = Campus(settings, tmp_path, clock)
    async with running(campus):
        await campus.send(plc_reading(campus), *(bollard_reading(campus, b) for b in BOLLARDS))
        for _ in range(15):
            await campus.advance(1)
        [silent] = [a for a in campus.open_alerts("device-no-data") if a.source == PLC]
        assert silent.annunciated
        await campus.send(DeviceStatus(site=campus.site_id, family=Family.BOLLARD, device=PLC,
                                       ts=campus.now(), state=Availability.OFFLINE,
                                       reason="3 polls without an answer",
                                       gateway="gw-plc-south"))
        for _ in range(130):
            await campus.advance(1)
        [offline] = [a for a in campus.open_alerts("device-offline") if a.source == PLC]
        assert offline.suppressed_by == silent.id and silent.annunciated
        # What the operator reads is Chinese: the rule's text and what the engine adds.
        assert "秒无数据" in silent.text and "通信中断" in offline.text
        assert not re.search("[A-Za-z]", silent.text + offline.text), (silent.text, offline.text)


async def test_a_bug_met_on_a_message_is_quarantined_and_the_engine_goes_on(
        settings: Settings, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The engine raises on one reading (a bug): the service's guard dead-letters it with
    the class, the text and the place, and the next reading is taken as usual."""
    original = Engine.reading

    def reading(self: Engine, item: Reading, now: int) -> None:
        if item.values.get("water_level") == 13.0:
            raise ZeroDivisionError("a bug met on this reading")
        original(self, item, now)

    monkeypatch.setattr(Engine, "reading", reading)
    clock = ManualClock(START)
    campus = Campus(settings, tmp_path, clock)
    async with running(campus), Collector(
            settings.mqtt, topics.deadletter(campus.site_id, "rules")) as dead:
        assert campus.rules is not None
        await campus.send(campus.reading(Family.DRAINAGE, "wl-west-gate", water_level=13.0),
                          wait=False)
        [(_, raw)] = await dead.wait_for(1)
        letter = m.decode(raw, m.DeadLetter)
        assert letter.reason.startswith("ZeroDivisionError: a bug met on this reading (at "
                                        "tests/test_rules_outages.py:")
        assert campus.rules.letters.of_kind(QUARANTINED) == 1
        await campus.send(campus.reading(Family.DRAINAGE, "wl-west-gate", water_level=46.0))
        await campus.advance(1)
        assert campus.open_alerts("waterlogging") and campus.rules.failed is None
