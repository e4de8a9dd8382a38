"""Drills (演练) in the rules engine, in process on a driven clock (no servers): a drill under
way makes the alerts of its sources and places its own, their screens say 【演练】 and the PA
演练，演练。 (the all-clear too), the CAP is an Exercise; an input that says it is a drill's is
marked as well; after its end an alert is real again. And what a drill cannot be, in words."""

from __future__ import annotations

from pathlib import Path

import msgspec
import pytest

from facility import labels
from facility import messages as m
from facility.drills import DrillError, plan
from facility.endpoints import load_endpoints
from facility.messages import Event, Family, Reading
from facility.site import load_site
from facility.topology import Topology
from rules.clock import NS
from rules.config import load_rules, rule_files
from rules.engine import Engine
from rules.health import alarm_health
from rules.store import AlertStore
from tests.conftest import REPO, SITE_FILE, catalog

START = 1_795_500_000 * NS  # 2026-11-24 (a Tuesday) 14:00 Asia/Shanghai


def _engine() -> Engine:
    site = load_site(SITE_FILE)
    topology = Topology(catalog(site))
    endpoints = load_endpoints(REPO / "config" / "endpoints.yaml", site)
    return Engine(topology, load_rules(rule_files(REPO / "config" / "rules"), topology,
                                       endpoints), endpoints, now=START)


def _water(engine: Engine, level: float, now: int, drill: str = "") -> None:
    engine.reading(Reading(site=engine.site, family=Family.DRAINAGE, device="wl-west-gate",
                           ts=now, values={"water_level": level}, units={"water_level": "cm"},
                           drill=drill), now)
    engine.tick(now)


def _flood(engine: Engine) -> list[m.AlertMessage]:
    return [a.message("x", START) for a in engine.book.open.values()
            if a.rule == "waterlogging"]


def test_a_drills_flood_says_so_on_every_screen_and_the_pa_to_its_all_clear() -> None:
    engine = _engine()
    site = load_site(SITE_FILE)
    drill = plan(site, "rainstorm", by="李四", duration_s=3600, now=START)
    engine.drill(drill, START)
    now = START + NS
    _water(engine, 46.0, now)
    [alert] = _flood(engine)
    assert alert.drill == drill.id and alert.severity is m.Severity.CRITICAL
    effects = engine.take()
    screens = [d.message for d in effects.deliveries if isinstance(d.message, m.DisplayMessage)
               and d.message.kind is not m.DisplayKind.NORMAL]
    spoken = [d.message for d in effects.deliveries if isinstance(d.message, m.Broadcast)]
    assert [s.display for s in screens] == ["led-west-gate"] and spoken
    assert all(s.drill == drill.id and s.text.startswith(labels.DRILL_PREFIX)
               and s.title.startswith(labels.DRILL_PREFIX) for s in screens)
    assert all(b.drill == drill.id and b.text.startswith(labels.DRILL_SPEECH_PREFIX)
               for b in spoken)
    assert all("<status>Exercise</status>" in xml for _, _, _, xml in effects.caps)
    # The water falls: cleared after 10 minutes, the incident's hold, then the all-clear.
    for _ in range(16):
        now += 60 * NS
        _water(engine, 5.0, now)
    clear = [d.message for d in engine.take().deliveries
             if d.message.kind is m.DisplayKind.ALL_CLEAR]
    assert clear and all(b.drill == drill.id and b.text.startswith(labels.DRILL_SPEECH_PREFIX)
                         for b in clear)


def test_after_its_end_an_alert_is_real_and_an_input_may_say_it_is_a_drills() -> None:
    engine = _engine()
    drill = plan(load_site(SITE_FILE), "rainstorm", by="x", duration_s=60, now=START)
    engine.drill(drill, START)
    now = START + 120 * NS  # the drill is over
    _water(engine, 46.0, now)
    [alert] = _flood(engine)
    assert alert.drill == ""
    screens = [d.message for d in engine.take().deliveries if d.kind == "display"]
    assert screens and not any(s.drill or labels.DRILL_PREFIX in s.text for s in screens)

    other = _engine()  # no drill message: a gateway that knows says so on the reading
    _water(other, 46.0, START, drill="drill-at-the-sensor")
    [marked] = _flood(other)
    assert marked.drill == "drill-at-the-sensor"


def test_a_drill_names_what_it_cannot_do() -> None:
    site = load_site(SITE_FILE)
    for scenario, place, words in (("fire", "main-lobby", "没有火灾探测器"),
                                   ("rainstorm", "canteen", "没有水位传感器"),
                                   ("gateway-loss", "gw-iot", "不是Modbus网关"),
                                   ("bollard-fault", "bollard-s99", "不是升降柱")):
        with pytest.raises(DrillError, match=words):
            plan(site, scenario, place=place, by="x")
    drill = plan(site, "bollard-fault", by="x")
    assert drill.sources == ["bollard-plc-south", "bollard-s20"]
    again = msgspec.json.decode(m.encode(drill))
    assert again["scenario"] == "bollard-fault" and again["v"] == 1
    with pytest.raises(m.ContractError):
        m.Drill(id="d", site="s", scenario=m.DrillScenario.FIRE, ts=START, ends_at=START,
                by="x")
    # A v1 reader ignores fields it does not know, and one from before drills reads "".
    sent = msgspec.json.decode(m.encode(m.Broadcast(
        id="b", site="s", zone="z", ts=START, kind=m.DisplayKind.ALERT, priority=3,
        text="演练", drill="d")))
    assert m.decode(msgspec.json.encode({**sent, "later_field": 1}), m.Broadcast).drill == "d"
    del sent["drill"]
    assert m.decode(msgspec.json.encode(sent), m.Broadcast).drill == ""


async def test_a_drills_alarms_are_not_the_alarm_systems_figures(tmp_path: Path) -> None:
    """ISA-18.2 figures measure the alarm system in real use: a drill's alarms are left out."""
    engine = _engine()
    store = await AlertStore.open(f"sqlite:///{tmp_path / 'state.sqlite'}")
    try:
        engine.restore(await store.load(engine.site), START)
        drill = plan(load_site(SITE_FILE), "rainstorm", by="x", duration_s=600, now=START)
        engine.drill(drill, START)
        now = START + NS
        _water(engine, 46.0, now)  # the drill's flood
        engine.event(Event(site=engine.site, family=Family.FIRE, device="fd-ebw-01", ts=now,
                           id="real-1", name="fire_alarm", text="火警"), now)  # not a drill
        await store.apply(engine.site, engine.take(), now)
        stored = await store.alerts(engine.site)
        health = await alarm_health(store, engine.site, START, now + NS)
    finally:
        await store.close()
    assert {a.rule for a in stored if a.drill} == {"waterlogging"}
    real = [a for a in stored if not a.drill and a.category == "alarm" and a.annunciated]
    assert real and health.annunciated == len(real)
    assert all(t["rule"] != "waterlogging" for t in health.top)
