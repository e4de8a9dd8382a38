"""Drills (演练) end to end on the real broker: `facility drill ...` (or the same message from
Python) reaches the simulators, the simulated devices report the emergency in their vendors'
protocols, the real gateways turn it into canonical readings and events, the rules engine
raises alerts marked as the drill's and drives the simulated screens and PA, whose every
word says 演练. Each test measures the time from the drill command to the first screen and
to the PA (printed; `pytest -s` shows them).

The simulated clock runs fast (the fire's detectors take 5-40 simulated seconds to alarm,
the rainstorm minutes to flood a drain), the rules engine on the real clock.
"""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys
import time
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from zoneinfo import ZoneInfo

import aiomqtt
import pytest

from facility import labels, topics
from facility import messages as m
from facility.drills import plan
from facility.messages import Family
from facility.settings import Settings
from facility.site import SiteConfig, load_site, site_for
from gateway.service import Gateway
from rules.service import RulesService
from simulators.campus import Campus
from simulators.clock import SimClock
from simulators.display_player import DisplayPlayer
from simulators.drills import publish
from tests.conftest import REPO, SITE_FILE, catalog
from tests.helpers import Collector, eventually

pytestmark = pytest.mark.servers

# 02:00 on a weekday night: no vehicles at the south gate, no cooking in the canteen.
NIGHT = datetime(2026, 11, 25, 2, 0, tzinfo=ZoneInfo("Asia/Shanghai")).timestamp()
MQTT_FAMILIES = {Family.FIRE, Family.EV_CHARGER, Family.DRAINAGE, Family.GAS}


class TimedPlayer(DisplayPlayer):
    """The simulated screens and PA, noting when the first drill message of each came."""

    def __init__(self, *args: object, **kwargs: object) -> None:
        super().__init__(*args, **kwargs)  # type: ignore[arg-type]  # DisplayPlayer's own
        self.first: dict[str, int] = {}  # "screen" / "pa" -> time.time_ns() on arrival

    def take(self, endpoint_id: str, msg: m.DisplayMessage | m.Broadcast) -> m.DisplayAck | None:
        if msg.drill:
            self.first.setdefault("pa" if isinstance(msg, m.Broadcast) else "screen",
                                  time.time_ns())
        return super().take(endpoint_id, msg)

    def drill_screens(self) -> dict[str, str]:
        return {s.id: s.current.text for s in self.screens.values()
                if s.current is not None and s.current.drill}

    def drill_announcements(self) -> list[m.Broadcast]:
        return [b for s in self.screens.values() for b in s.announced if b.drill]


class Stamped(Collector):
    """A collector that notes when each message arrived (time.time_ns())."""

    def __init__(self, *args: object, **kwargs: object) -> None:
        super().__init__(*args, **kwargs)  # type: ignore[arg-type]  # Collector's own
        self.at: list[int] = []

    def _keep(self, message: aiomqtt.Message) -> None:
        super()._keep(message)
        self.at.append(time.time_ns())


@dataclass
class Rig:
    settings: Settings
    site: SiteConfig
    campus: Campus
    rules: RulesService
    player: TimedPlayer
    alerts: Collector
    tmp_path: Path
    timings: dict[str, float] = field(default_factory=dict)

    @property
    def site_id(self) -> str:
        return self.site.site.id

    def drill_alerts(self, drill_id: str) -> list[m.AlertMessage]:
        out = []
        for _, payload in list(self.alerts.messages):
            alert = m.decode(payload, m.AlertMessage)
            if alert.drill == drill_id:
                out.append(alert)
        return out

    def note(self, drill: m.Drill, what: str) -> None:
        """The time from the drill command to the first screen and PA, in seconds."""
        for kind in ("screen", "pa"):
            if kind in self.player.first:
                self.timings[kind] = (self.player.first[kind] - drill.ts) / 1e9
        print(f"\n{what}: " + ", ".join(f"command -> first {k}: {v:.2f} s"
                                       for k, v in self.timings.items()))


@contextlib.asynccontextmanager
async def rig(settings: Settings, tmp_path: Path, families: set[Family], *,
              scale: float) -> AsyncIterator[Rig]:
    site = site_for(load_site(SITE_FILE), f"t-{uuid.uuid4().hex[:10]}")
    async with contextlib.AsyncExitStack() as stack:
        alerts = await stack.enter_async_context(
            Collector(settings.mqtt, topics.subscription(topics.Kind.ALERT, site.site.id)))
        if families & MQTT_FAMILIES:  # listening before the simulated devices speak
            iot = await stack.enter_async_context(Gateway(settings, catalog(site), "gw-iot"))
            await iot.wait_ready()
        rules = RulesService(settings, catalog(site), client_id=f"rules-{site.site.id}",
                             state_url=f"sqlite:///{tmp_path / 'state.sqlite'}")
        player = TimedPlayer.from_config(settings.mqtt, site.site.id, rules.endpoints,
                                         data_dir=tmp_path / "player")
        assert isinstance(player, TimedPlayer)
        await stack.enter_async_context(player)
        await stack.enter_async_context(rules)
        await player.wait_ready()
        await rules.wait_ready()
        campus = await stack.enter_async_context(Campus(
            site, settings.mqtt, clock=SimClock(start=NIGHT, scale=scale), seed=3,
            use_config_ports=False, families=families, min_interval=0.05, drills=True))
        assert campus.drills is not None
        await campus.drills.wait_ready()
        if Family.BOLLARD in families:
            plc = await stack.enter_async_context(
                Gateway(settings, catalog(campus.site), "gw-plc-south"))
            await plc.wait_ready()
        yield Rig(settings, site, campus, rules, player, alerts, tmp_path)


def facility(args: list[str], settings: Settings, site_file: Path) -> str:
    """`facility ...` in a new process, as a person at the console runs it."""
    main = "import sys; from app.cli import main; sys.exit(main())"
    env = {**os.environ, "FACILITY_MQTT_URL": settings.mqtt.url.get_secret_value(),
           "FACILITY_SITE_FILE": str(site_file)}
    done = subprocess.run([sys.executable, "-c", main, *args], capture_output=True, text=True,
                          env=env, cwd=REPO, timeout=60)
    assert done.returncode == 0, done.stderr[-2000:] + done.stdout
    return done.stdout


def site_file(tmp_path: Path, site_id: str) -> Path:
    text = SITE_FILE.read_text(encoding="utf-8").replace("id: panyu-admin-centre",
                                                          f"id: {site_id}", 1)
    path = tmp_path / "site.yaml"
    path.write_text(text, encoding="utf-8")
    return path


async def played(r: Rig) -> m.Drill:
    desk = r.campus.drills
    assert desk is not None

    async def probe() -> list[m.Drill]:
        return list(desk.played.values())
    return (await eventually(probe, bool, 20, "the simulators took the drill"))[0]


# --- fire -------------------------------------------------------------------------------------

async def test_fire_drill_from_the_command_line_reaches_screens_and_pa_as_a_drill(
        settings: Settings, tmp_path: Path) -> None:
    vendor = Stamped(settings.mqtt, "gst/#")
    async with rig(settings, tmp_path, {Family.FIRE}, scale=20) as r, vendor:
        out = facility(["drill", "fire", "--place", "ebike-shed-west", "--by", "张三",
                        "--duration", "120"], settings, site_file(tmp_path, r.site_id))
        assert out.startswith(labels.DRILL["started"]) and "火警演练" in out
        drill = await played(r)
        assert (drill.scenario, drill.place, drill.by) == (m.DrillScenario.FIRE,
                                                           "ebike-shed-west", "张三")
        assert {"fd-ebw-01", "fp-ebike"} <= set(drill.sources)

        async def outputs() -> tuple[dict[str, str], list[m.Broadcast]]:
            return r.player.drill_screens(), r.player.drill_announcements()
        screens, spoken = await eventually(
            outputs, lambda o: len(o[0]) == 13 and len(o[1]) == 5, 30,
            "every screen and PA zone taking the drill's evacuation")
        r.note(drill, "fire drill")
        # Of which the chain's part: the panel's FIRE_ALARM (vendor MQTT) to the first screen.
        fire_alarm = next(at for (_, payload), at in zip(vendor.messages, vendor.at, strict=False)
                          if b"FIRE_ALARM" in payload)
        print(f"fire drill: first FIRE_ALARM from a simulated device -> first screen: "
              f"{(r.player.first['screen'] - fire_alarm) / 1e9:.3f} s, -> PA: "
              f"{(r.player.first['pa'] - fire_alarm) / 1e9:.3f} s")
        # Every word of it says 演练: each screen, each PA zone.
        assert all(text.startswith(labels.DRILL_PREFIX) for text in screens.values()), screens
        assert all(b.text.startswith(labels.DRILL_SPEECH_PREFIX) and b.drill == drill.id
                   for b in spoken)
        # The alerts are the drill's, on the wire and in the store; the CAP is an Exercise.
        raised = await eventually(lambda: _alerts(r, drill.id),
                                  lambda a: "fire-panel-alarm" in {x.rule for x in a}, 10,
                                  "the panel's alarm, as the drill's")
        assert all(a.source in drill.sources or a.place in drill.places for a in raised)
        store = r.rules.store
        assert store is not None
        stored = [a for a in await store.alerts(r.site_id) if a.drill == drill.id]
        assert stored and all(a.source in drill.sources or a.place in drill.places
                              for a in stored)
        incident = next(a.incident for a in stored if a.rule == "fire-panel-alarm")
        caps = await store.cap_documents(incident)
        assert caps and "<status>Exercise</status>" in caps[0]
        # The PA said it in Mandarin: its audio is kept per zone.
        await r.player.wait_spoken()
        zone = spoken[0].zone
        assert (tmp_path / "player" / "pa" / zone / "last.wav").stat().st_size > 10_000
        assert r.timings["screen"] < 15 and r.timings["pa"] < 15


async def _alerts(r: Rig, drill_id: str) -> list[m.AlertMessage]:
    return r.drill_alerts(drill_id)


# --- rainstorm --------------------------------------------------------------------------------

async def test_rainstorm_drill_floods_the_west_gate_as_a_drill(settings: Settings,
                                                              tmp_path: Path) -> None:
    async with rig(settings, tmp_path, {Family.DRAINAGE, Family.GAS}, scale=60) as r:
        drill = plan(r.site, "rainstorm", by="李四", duration_s=600)
        await publish(settings.mqtt, drill)

        async def pa() -> list[m.Broadcast]:
            return r.player.drill_announcements()
        spoken = await eventually(pa, bool, 45, "the PA announcing the drill's flood")
        r.note(drill, "rainstorm drill")
        screens = r.player.drill_screens()
        assert screens and all(t.startswith(labels.DRILL_PREFIX) for t in screens.values())
        assert "led-west-gate" in screens, screens
        assert all(b.text.startswith(labels.DRILL_SPEECH_PREFIX) for b in spoken)
        flood = [a for a in r.drill_alerts(drill.id) if a.rule == "waterlogging"]
        assert flood and flood[-1].severity is m.Severity.CRITICAL


# --- gateway loss and a bollard fault: the control room's alarms, no screens or PA ----------

async def test_gateway_loss_drill_cuts_the_plc_link_and_brings_it_back(
        settings: Settings, tmp_path: Path) -> None:
    async with rig(settings, tmp_path, {Family.BOLLARD}, scale=1) as r:
        drill = plan(r.site, "gateway-loss", by="王五", duration_s=14)
        await publish(settings.mqtt, drill)
        lost = await eventually(lambda: _alerts(r, drill.id),
                                lambda a: any(x.source == "bollard-plc-south" for x in a), 30,
                                "the PLC's alarm, as the drill's")
        seconds = (time.time_ns() - drill.ts) / 1e9
        print(f"\ngateway-loss drill: command -> the drill's alarm: {seconds:.2f} s")
        plc = next(a for a in lost if a.source == "bollard-plc-south")
        assert plc.rule in ("device-no-data", "device-offline"), plc
        # Its 42 bollards' alarms are the drill's too, suppressed under the PLC's.
        assert all(a.source in drill.sources for a in lost)
        assert r.player.drill_screens() == {}  # a comms alarm is the control room's only

        async def answering() -> bool:
            endpoint = r.campus.endpoint("bollard-plc-south")
            return endpoint.port > 0 and endpoint.running
        await eventually(answering, bool, 30, "the PLC answering again after the drill")
        await eventually(lambda: _alerts(r, drill.id), lambda a: any(not x.active for x in a),
                         30, "the drill's alarm clearing")


async def test_bollard_fault_drill(settings: Settings, tmp_path: Path) -> None:
    async with rig(settings, tmp_path, {Family.BOLLARD}, scale=1) as r:
        drill = plan(r.site, "bollard-fault", place="bollard-s07", by="王五", duration_s=5)
        await publish(settings.mqtt, drill)
        fault = await eventually(lambda: _alerts(r, drill.id), bool, 20,
                                 "the bollard's fault alarm, as the drill's")
        seconds = (time.time_ns() - drill.ts) / 1e9
        print(f"\nbollard-fault drill: command -> the drill's alarm: {seconds:.2f} s")
        assert (fault[0].rule, fault[0].source) == ("bollard-fault", "bollard-s07")
        # The reset at its end: the bollard is up again and the alarm clears.
        await eventually(lambda: _alerts(r, drill.id), lambda a: any(not x.active for x in a),
                         20, "the alarm clearing after the fault reset")
        assert r.campus.plc().snapshot()["units"][7]["state"] == "up"
