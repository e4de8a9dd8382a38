"""Storm: alarms through outages (a fire in a rainstorm with a gateway kill, the PLC lost, blips).

Three scenarios on the simulated campus (config/site.yaml, every device reporting normal
values at its own period), run on a private Mosquitto with the rules service and the
screens' player in this process and a manual clock the bench moves a second at a time, as
fast as the engine ticks:

1. fire+storm: a rainstorm at the west gate (wl-west-gate rising past 40 cm and falling),
   the west e-bike shed fire (fd-ebw-01/02 and the panel fp-ebike) ten minutes in, and the
   MQTT gateway gw-iot killed for two minutes a minute after the fire started: the fire
   is out during the outage, so its RESTOREs come with the backlog;
2. plc: the bollard PLC unreachable over Modbus (comm_failure readings every poll, OFFLINE
   after 3 polls) and, while it is, its gateway gw-plc-south killed for two minutes;
3. blips: gw-iot gone for 10 s, and later gw-plc-south for 10 s.

Outages as the real gateway makes them: the broker publishes the gateway's last will, a
DeviceStatus OFFLINE stamped when the gateway *connected*; while it is down its devices
publish nothing; back, it publishes ONLINE and replays its spool (readings) and its queue
(events) with their device times, readings first.

Figures come from what the system did: incidents from the store; annunciations, the worst
10 minutes and the alerts an operator saw by rules.health's definitions (what was shown);
acknowledgements needed = alerts whose history reached active_unack or rtn_unack;
chattering = alerts flagged chattering; first emergency = wall time (perf_counter) from
publishing the fire's first inputs to the engine taking the display-acks of the fire's
emergency from every screen and terminal and a PA zone; every all-clear broadcast the
player received, with its incident's state in the engine when the router made it.

BEFORE/AFTER: the same file runs on older code; where rules.health lacks the new
definitions, set STORM_HEALTH=<path to the new rules/health.py> to measure the same way.
"""

from __future__ import annotations

import asyncio
import contextlib
import importlib.util
import os
import shutil
import sys
import tempfile
import time
import uuid
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from pathlib import Path
from types import ModuleType
from typing import Any

from pydantic import SecretStr

from app import wiring
from bench.aioclient import make_client
from bench.campus_load import Readings, catalog_of
from bench.common import Figure, figure
from facility import messages as m
from facility import topics
from facility.localservers import MosquittoServer
from facility.settings import InfluxSettings, MqttSettings, Settings, load_settings
from facility.site import load_site, site_for
from facility.topology import Topology
from rules.clock import NS, ManualClock
from rules.service import RulesService
from simulators.display_player import DisplayPlayer

REPO = Path(__file__).resolve().parent.parent
SITE_FILE = REPO / "config" / "site.yaml"
T0 = 1_795_854_600 * NS  # 2026-11-28 16:30 Asia/Shanghai
WAIT = 60.0  # s of wall time for the engine to take a second's inputs or tick

PLC = "bollard-plc-south"
FIRE_DEVICES = ("fd-ebw-01", "fd-ebw-02", "fp-ebike")
# The rainstorm at the west gate, one reading a minute: rising slowly (warning from the
# rate), faster past 40 cm (critical), the pump catching up, bobbing at 15 cm, gone down.
STORM = ([5.0 + 1.2 * n for n in range(6)] + [11.0 + 3.5 * n for n in range(1, 11)]
         + [42.0, 36.0, 31.0, 27.0, 22.0, 18.0, 16.0]
         + [14.0, 16.0, 14.5, 15.5, 14.0, 16.0, 14.2, 15.8, 14.4, 15.1] + [10.0] * 12)


def health_module() -> ModuleType | None:
    """rules.health with the definitions of what an operator was shown, or None."""
    from rules import health
    if hasattr(health, "annunciations"):
        return health
    path = os.environ.get("STORM_HEALTH", "")
    if not path:
        return None
    spec = importlib.util.spec_from_file_location("storm_health", path)
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


# --- the campus's gateways, as a timeline of canonical messages ---------------------------

Item = m.Reading | m.Event | m.DeviceStatus


@dataclass
class Gateway:
    id: str
    connected: int  # when its current connection was made: what its will says
    down: bool = False
    spool: list[m.Reading] = field(default_factory=list)  # readings kept while down
    queue: list[Item] = field(default_factory=list)  # events and statuses kept while down


class Timeline:
    """What the gateways publish each second: every device's normal readings at its
    period, what a scenario changes, and the outages."""

    def __init__(self, site_id: str, topology: Topology) -> None:
        self.site_id = site_id
        self.topology = topology
        site = topology.site
        self.readings = Readings(site, topology)
        self.gateway_of = {s.id: s.gateway for s in topology.sources.values()}
        self.family_of = {s.id: s.family for s in topology.sources.values()}
        self.gateways = {s.id: Gateway(s.id, T0 - NS) for s in topology.sources.values()
                         if s.family == "gateway"}
        self.next_due: dict[str, int] = {}
        for n, d in enumerate(self.readings.devices):
            phase = round(n * 997 % 1000 / 1000 * d.period) * NS
            self.next_due[d.id] = T0 + phase
        self.period: dict[str, float] = {d.id: d.period for d in self.readings.devices}
        self.values: dict[str, Callable[[int], dict[str, m.Scalar] | None]] = {}
        self.plc_unreachable = False
        self.plc_failures = 0

    def reading(self, device: str, ts: int, values: dict[str, m.Scalar],
                quality: m.Quality = m.Quality.GOOD) -> m.Reading:
        return m.Reading(site=self.site_id, family=m.Family(self.family_of[device]),
                         device=device, ts=ts, values=values, quality=quality,
                         gateway=self.gateway_of[device])

    def event(self, device: str, ts: int, name: str, text: str = "") -> m.Event:
        return m.Event(site=self.site_id, family=m.Family(self.family_of[device]),
                       device=device, ts=ts, id=f"{device}-{name}-{uuid.uuid4().hex[:6]}",
                       name=name, text=text, gateway=self.gateway_of[device])

    def status(self, device: str, ts: int, state: m.Availability, reason: str) -> m.DeviceStatus:
        return m.DeviceStatus(site=self.site_id, family=m.Family(self.family_of[device]),
                              device=device, ts=ts, state=state, reason=reason,
                              gateway=self.gateway_of[device] or device)

    def start(self) -> list[Item]:
        return [self.status(g, T0, m.Availability.ONLINE, "running") for g in self.gateways]

    def second(self, now: int, extra: list[Item]) -> list[Item]:
        """Everything the devices produce at `now`, routed through their gateways."""
        made: list[Item] = []
        for d in self.readings.devices:
            if self.next_due[d.id] > now:
                continue
            self.next_due[d.id] = now + round(self.period[d.id] * NS)
            if self.plc_unreachable and d.id == PLC:
                made.append(self.reading(PLC, now, {}, m.Quality.COMM_FAILURE))
                self.plc_failures += 1
                if self.plc_failures == 3:  # offline_after: 3 polls without an answer
                    made.append(self.status(PLC, now, m.Availability.OFFLINE,
                                            "3 polls without an answer: no answer"))
                continue
            if self.plc_unreachable and d.kind == "bollard":
                continue  # in the PLC's registers: nothing without it
            override = self.values.get(d.id)
            values = override(now) if override is not None else None
            made.append(self.reading(d.id, now, values if values is not None
                                     else self.readings.values(d)))
        made.extend(extra)
        out: list[Item] = []
        for item in made:
            gateway = self.gateways.get(self.gateway_of.get(item.device, ""))
            if gateway is not None and gateway.down:
                if isinstance(item, m.Reading):
                    gateway.spool.append(item)
                else:
                    gateway.queue.append(item)
            else:
                out.append(item)
        return out

    def kill(self, gateway_id: str) -> list[Item]:
        """The broker publishes the gateway's last will: OFFLINE, stamped at its connect."""
        gateway = self.gateways[gateway_id]
        gateway.down = True
        return [m.DeviceStatus(site=self.site_id, family=m.Family.GATEWAY, device=gateway_id,
                               ts=gateway.connected, state=m.Availability.OFFLINE,
                               reason="connection lost", gateway=gateway_id)]

    def back(self, gateway_id: str, now: int) -> list[Item]:
        """Reconnected: ONLINE, then the spooled readings and the queued events."""
        gateway = self.gateways[gateway_id]
        gateway.down = False
        gateway.connected = now - 1  # the new connection's will
        out: list[Item] = [m.DeviceStatus(site=self.site_id, family=m.Family.GATEWAY,
                                          device=gateway_id, ts=now,
                                          state=m.Availability.ONLINE, reason="running",
                                          gateway=gateway_id)]
        out += gateway.spool + gateway.queue
        gateway.spool, gateway.queue = [], []
        return out

    def plc_lost(self) -> None:
        self.plc_unreachable, self.plc_failures = True, 0

    def plc_found(self, now: int) -> list[Item]:
        self.plc_unreachable = False
        self.next_due[PLC] = now
        for d in self.readings.devices:
            if d.kind == "bollard":
                self.next_due[d.id] = now
        return [self.status(PLC, now, m.Availability.ONLINE, "answering")]


def topic_of(item: Item) -> str:
    if isinstance(item, m.Reading):
        return topics.telemetry(item.site, item.family, item.device)
    if isinstance(item, m.Event):
        return topics.event(item.site, item.family, item.device)
    return topics.status(item.site, item.family, item.device)


# --- the campus running: rules service, screens, publisher --------------------------------

@dataclass
class AllClear:
    zone: str
    incident: str
    sent_at: int  # the engine's time
    state: str  # the incident's when the router made it: active / held / over / closed
    severity: str
    category: str


@dataclass
class Outcome:
    name: str
    title: str
    incidents: list[str] = field(default_factory=list)
    annunciated: int | None = None
    worst_10_min: int | None = None
    not_annunciated: int | None = None
    saw: int | None = None  # distinct alerts an operator was shown
    acks_needed: int = 0
    chattering: list[str] = field(default_factory=list)
    emergency_s: float | None = None  # None: no emergency in the scenario
    emergency_note: str = ""
    all_clears: list[AllClear] = field(default_factory=list)
    inputs: int = 0
    simulated_s: int = 0
    wall_s: float = 0.0
    shown: list[str] = field(default_factory=list)


class Run:
    def __init__(self, settings: Settings, folder: Path, name: str) -> None:
        self.settings = settings
        self.site_id = f"storm-{name}-{uuid.uuid4().hex[:6]}"
        site = site_for(load_site(SITE_FILE), self.site_id)
        self.clock = ManualClock(T0)
        self.rules = RulesService(settings, catalog_of(site), clock=self.clock,
                                  state_url=f"sqlite:///{folder / f'{name}.sqlite'}",
                                  client_id=f"rules-{self.site_id}")
        self.topology = self.rules.topology
        self.timeline = Timeline(self.site_id, self.topology)
        self.player = DisplayPlayer.from_config(settings.mqtt, self.site_id,
                                                self.rules.endpoints,
                                                clock_ns=self.clock.now_ns)
        self.screens = [e.id for e in self.rules.endpoints.endpoints if not e.is_pa]
        self.sent: dict[str, int] = {}
        self.inputs = 0
        self.all_clears: list[AllClear] = []
        self._made: dict[str, AllClear] = {}  # broadcast id -> state when made
        self.emergency: dict[str, str] = {}  # message id -> endpoint, of fire emergencies
        self.acked: dict[str, float] = {}  # endpoint -> perf_counter of its first such ack
        self.fire_started = 0.0
        self.client: Any = None

    # hooks on the running engine and player: what was sent, shown and confirmed

    def _hook(self) -> None:
        engine = self.rules.engine
        assert engine is not None
        book, router = engine.book, engine.router
        make = router._broadcast

        def broadcast(endpoint: Any, kind: m.DisplayKind, priority: int, text: str,
                      repeat: int, incident: str, alert: str, now: int,
                      drill: str = "") -> None:
            if kind is m.DisplayKind.ALL_CLEAR:
                found = book.incidents.get(incident)
                if found is None or found.closed_at:
                    state, severity, category = "closed", "", found.category if found else ""
                else:
                    state = "active" if found.active else (
                        "held" if book.showing(found, now) else "over")
                    severity, category = found.severity.value, found.category
                self._made[f"{endpoint.id}:{incident}:{now}"] = AllClear(
                    endpoint.id, incident, now, state, severity, category)
            make(endpoint, kind, priority, text, repeat, incident, alert, now, drill)
        router._broadcast = broadcast  # type: ignore[method-assign]  # not a library's: the bench wraps this live instance's method to time it

        take_ack = engine.display_ack

        def display_ack(ack: m.DisplayAck, now: int) -> None:
            endpoint = self.emergency.get(ack.message)
            if endpoint is not None and endpoint not in self.acked:
                self.acked[endpoint] = time.perf_counter()
            take_ack(ack, now)
        engine.display_ack = display_ack  # type: ignore[method-assign]  # not a library's: the bench wraps this live instance's method to time it

        take = self.player.take

        def shown(name: str, msg: m.DisplayMessage | m.Broadcast) -> m.DisplayAck | None:
            if msg.kind is m.DisplayKind.EMERGENCY and msg.incident:
                found = book.incidents.get(msg.incident)
                if found is not None and found.category == "fire":
                    self.emergency.setdefault(msg.id, name)
            if isinstance(msg, m.Broadcast) and msg.kind is m.DisplayKind.ALL_CLEAR:
                made = self._made.get(f"{name}:{msg.incident}:{msg.ts}")
                self.all_clears.append(made or AllClear(name, msg.incident, msg.ts,
                                                        "unknown", "", ""))
            return take(name, msg)
        self.player.take = shown  # type: ignore[method-assign,assignment]  # not a library's: the bench wraps this live instance's method to time it

    @contextlib.asynccontextmanager
    async def running(self) -> AsyncIterator[Run]:
        async with self.player:
            await self.player.wait_ready()
            async with self.rules:
                await self.rules.wait_ready()
                wiring.freeze()  # as `facility up` and `facility rules run` do
                self._hook()
                try:
                    async with make_client(self.settings.mqtt,
                                           f"storm-gateways-{self.site_id}",
                                           max_inflight=1000) as client:
                        self.client = client
                        yield self
                        self.client = None
                finally:
                    wiring.thaw()

    async def until(self, what: str, done: Callable[[], bool], timeout: float = WAIT) -> None:
        deadline = time.monotonic() + timeout
        while not done():
            if time.monotonic() > deadline:
                raise TimeoutError(f"{self.site_id}: no {what} within {timeout:.0f} s")
            await asyncio.sleep(0.001)

    async def publish(self, items: list[Item]) -> None:
        """Publish as the gateways do and wait until the rules service has taken them."""
        if not items:
            return
        out = [(topic_of(i), m.encode(i)) for i in items]
        for topic, _ in out:
            self.sent[topic] = self.sent.get(topic, 0) + 1
        for at in range(0, len(out), 500):  # within the client's in-flight window
            await asyncio.gather(*(self.client.publish(t, p, qos=1)
                                   for t, p in out[at:at + 500]))
        self.inputs += len(out)
        taken = self.rules.taken_topics
        wanted = {t: self.sent[t] for t, _ in out}
        await self.until("inputs taken", lambda: all(taken[t] >= n for t, n in wanted.items()))

    async def advance(self) -> None:
        """One second on; wait until the engine has ticked at the new time."""
        engine = self.rules.engine
        assert engine is not None
        before = self.rules.committed_ticks
        target = await self.clock.advance(1)
        await self.until("tick", lambda: engine.last_tick >= target
                         and self.rules.committed_ticks > before)

    async def emergency_out(self, timeout: float = 10.0) -> bool:
        """Wait (the clock standing still) until every screen and a PA zone confirmed."""
        wanted = set(self.screens)

        def done() -> bool:
            acked = set(self.acked)
            return wanted <= acked and any(e not in wanted for e in acked)
        with contextlib.suppress(TimeoutError):
            await self.until("emergency on every screen and the PA", done, timeout)
        return done()


# --- the scenarios ------------------------------------------------------------------------

# second -> what happens then: (published at once, as the broker or a reconnected gateway
# does; made by devices, through their gateway)
Step = tuple[list[Item], list[Item]]
Script = dict[int, Callable[[Run, int], Step]]


def fire_and_storm() -> tuple[int, Script, Callable[[Timeline], None]]:
    fire, restore, kill, back = 600, 720, 660, 780

    def setup(tl: Timeline) -> None:
        storm_from = T0

        def level(now: int) -> dict[str, m.Scalar]:
            minute = min(len(STORM) - 1, (now - storm_from) // (60 * NS))
            return {"water_level": STORM[minute], "battery": 3.6, "rssi": -95, "snr": 7.5}
        tl.values["wl-west-gate"] = level
        tl.period["wl-west-gate"] = 60.0  # the sensor reports each minute in a storm
        tl.next_due["wl-west-gate"] = T0

        def fire_state(device: str) -> Callable[[int], dict[str, m.Scalar] | None]:
            def values(now: int) -> dict[str, m.Scalar] | None:
                burning = T0 + fire * NS <= now < T0 + restore * NS
                if device == "fp-ebike":
                    return {"state": "alarm" if burning else "normal",
                            "alarm_count": 2 if burning else 0} if burning else None
                return {"smoke": 0.21, "temperature": 31.0, "state": "alarm"} \
                    if burning else None
            return values
        for device in FIRE_DEVICES:
            tl.values[device] = fire_state(device)

    def start_fire(run: Run, now: int) -> Step:
        tl = run.timeline
        run.fire_started = time.perf_counter()
        return [], [tl.event("fd-ebw-01", now, "fire_alarm", "西门车棚烟感1 火警"),
                tl.reading("fd-ebw-01", now, {"smoke": 0.21, "temperature": 31.0,
                                              "state": "alarm"}),
                tl.event("fd-ebw-02", now, "fire_alarm", "西门车棚烟感2 火警"),
                tl.reading("fd-ebw-02", now, {"smoke": 0.18, "temperature": 30.2,
                                              "state": "alarm"}),
                tl.event("fp-ebike", now, "fire_alarm", "火警 西门车棚"),
                tl.reading("fp-ebike", now, {"state": "alarm", "alarm_count": 2})]

    def fire_out(run: Run, now: int) -> Step:
        tl = run.timeline
        out: list[Item] = [tl.event(d, now, "restore") for d in FIRE_DEVICES]
        out += [tl.reading(d, now, {"smoke": 0.02, "temperature": 27.0, "state": "normal"})
                for d in FIRE_DEVICES[:2]]
        out.append(tl.reading("fp-ebike", now, {"state": "normal", "alarm_count": 0}))
        return [], out

    script: Script = {fire: start_fire, restore: fire_out,
                      kill: lambda run, now: (run.timeline.kill("gw-iot"), []),
                      back: lambda run, now: (run.timeline.back("gw-iot", now), [])}
    return 55 * 60, script, setup


def plc_lost() -> tuple[int, Script, Callable[[Timeline], None]]:
    def lose(run: Run, now: int) -> Step:
        run.timeline.plc_lost()
        return [], []

    script: Script = {120: lose,
                      240: lambda run, now: (run.timeline.kill("gw-plc-south"), []),
                      360: lambda run, now: (run.timeline.back("gw-plc-south", now), []),
                      480: lambda run, now: ([], run.timeline.plc_found(now))}
    return 20 * 60, script, lambda tl: None


def blips() -> tuple[int, Script, Callable[[Timeline], None]]:
    script: Script = {120: lambda run, now: (run.timeline.kill("gw-iot"), []),
                      130: lambda run, now: (run.timeline.back("gw-iot", now), []),
                      480: lambda run, now: (run.timeline.kill("gw-plc-south"), []),
                      490: lambda run, now: (run.timeline.back("gw-plc-south", now), [])}
    return 15 * 60, script, lambda tl: None


SCENARIOS = {
    "fire+storm": ("the shed fire in a rainstorm, gw-iot killed for 2 min", fire_and_storm),
    "plc": ("the PLC unreachable over Modbus, its gateway killed for 2 min meanwhile",
            plc_lost),
    "blips": ("gw-iot gone for 10 s, later gw-plc-south for 10 s", blips),
}


async def scenario(settings: Settings, folder: Path, name: str) -> Outcome:
    title, make = SCENARIOS[name]
    seconds, script, setup = make()
    run = Run(settings, folder, name.replace("+", "-"))
    setup(run.timeline)
    outcome = Outcome(name, title)
    started = time.monotonic()
    async with run.running():
        await run.publish(run.timeline.start())
        for s in range(seconds):
            now = run.clock.now_ns()
            direct, made = script[s](run, now) if s in script else ([], [])
            await run.publish(direct)  # a will, or a return with its backlog: first
            await run.publish(run.timeline.second(now, made))
            if run.fire_started and outcome.emergency_s is None and not outcome.emergency_note:
                if await run.emergency_out():
                    outcome.emergency_s = max(run.acked.values()) - run.fire_started
                else:
                    outcome.emergency_note = (f"{len(run.acked)} of {len(run.screens)} "
                                              "screens + a PA zone confirmed within 10 s")
            await run.advance()
        outcome.wall_s = time.monotonic() - started
        outcome.inputs, outcome.simulated_s = run.inputs, seconds
        await asyncio.sleep(0.5)  # the last all-clears reach the player
        await measure(run, outcome)
    return outcome


async def measure(run: Run, outcome: Outcome) -> None:
    store = run.rules.store
    assert store is not None
    site, start, end = run.site_id, T0 - 10 * NS, run.clock.now_ns() + 1
    incidents = await store.incidents(site, limit=10_000)
    outcome.incidents = sorted(f"{i.category}:{i.key}" for i in incidents)
    alerts = {a.id: a for a in await store.alerts(site, limit=100_000)}
    history = await store.history(site=site, since=start, until=end)
    by_alert: dict[str, list[dict[str, Any]]] = {}
    for h in history:
        by_alert.setdefault(h["alert"], []).append(h)
    outcome.acks_needed = sum(1 for rows in by_alert.values() if needed_ack(rows))
    outcome.chattering = sorted(f"{a.rule}:{a.source}" for a in alerts.values() if a.chattering)
    health = health_module()
    if health is not None:
        figures = await health.alarm_health(store, site, start, end)
        outcome.annunciated = figures.annunciated
        outcome.worst_10_min = figures.per_10_min_max
        outcome.not_annunciated = figures.not_annunciated
        shown = []
        for alert_id, rows in by_alert.items():
            a = alerts.get(alert_id)
            if a is not None and a.category == "alarm" and health.annunciations(rows, start)[0]:
                shown.append(f"{a.rule}:{a.source}")
        outcome.saw = len(shown)
        outcome.shown = sorted(shown)
    outcome.all_clears = run.all_clears


def needed_ack(rows: list[dict[str, Any]]) -> bool:
    """Whether an alert's history (oldest first) left it needing acknowledgement after some
    moment: its transitions with one ts are one engine step, and what counts is the state
    after the step (raised and suppressed in one step never asked anything)."""
    after: dict[int, str] = {}
    for h in rows:
        after[h["ts"]] = h["to_state"]
    return any(state in ("active_unack", "rtn_unack") for state in after.values())


def figures_of(o: Outcome) -> list[Figure]:
    p = f"{o.name}:"
    na = "n/a (rules.health has no 'what was shown' definitions in this version)"
    out = [figure(f"{p} incidents", len(o.incidents), "", at_most=5,
                  note=", ".join(o.incidents))]
    if o.annunciated is None or o.worst_10_min is None or o.saw is None:
        out.append(Figure(f"{p} alarms annunciated", float("nan"), "", note=na))
    else:
        out.append(figure(f"{p} alarms annunciated", o.annunciated, "",
                          note=f"{o.not_annunciated} activations never shown"))
        out.append(figure(f"{p} worst 10 minutes", o.worst_10_min, "", at_most=10))
    saw = o.saw
    out.append(Figure(f"{p} acknowledgements needed", o.acks_needed, "",
                      f"<= {saw} seen" if saw is not None else "",
                      None if saw is None else o.acks_needed <= saw,
                      "" if saw is not None else na))
    out.append(figure(f"{p} chattering alerts", len(o.chattering), "", at_most=0,
                      note=", ".join(o.chattering)))
    if o.emergency_s is not None:
        out.append(figure(f"{p} first emergency to screens and PA", o.emergency_s * 1000,
                          "ms", at_most=1000))
    elif o.emergency_note:
        out.append(Figure(f"{p} first emergency to screens and PA", float("nan"), "ms",
                          "<= 1,000", False, o.emergency_note))
    false = [c for c in o.all_clears if c.state == "active"]
    out.append(figure(f"{p} false all-clears (incident still active)", len(false), "",
                      at_most=0))
    return out


def report(o: Outcome) -> None:
    print(f"  -- {o.name}: {o.title}; {o.simulated_s // 60} simulated min, {o.inputs:,} "
          f"inputs, {o.wall_s:.0f} s ({o.simulated_s / o.wall_s:.0f}x)", flush=True)
    if o.saw is not None:
        print(f"     alerts an operator saw ({o.saw}): {', '.join(o.shown) or '-'}")
    if o.emergency_s is None and not o.emergency_note:
        print("     first emergency: none in this scenario")
    if not o.all_clears:
        print("     all-clears: none")
    for c in o.all_clears:
        at = (c.sent_at - T0) / NS
        print(f"     all-clear to {c.zone} at +{at:.0f} s for {c.category or '?'} incident "
              f"{c.incident}: incident {c.state}"
              + (f", severity {c.severity}" if c.severity else ""), flush=True)


async def run(quick: bool) -> list[Figure]:
    names = ["blips"] if quick else list(SCENARIOS)
    folder = Path(tempfile.mkdtemp(prefix="facility-bench-storm-"))
    broker = MosquittoServer(folder / "mosquitto",
                             extra_config="max_queued_messages 1000000\n")
    broker.start()
    out: list[Figure] = []
    try:
        settings = load_settings(
            REPO / "config" / "facility.yaml", site_file=str(SITE_FILE),
            mqtt=MqttSettings(url=SecretStr(broker.url)),
            influx=InfluxSettings(url="http://127.0.0.1:9", database="unused"))
        for name in names:
            outcome = await scenario(settings, folder, name)
            report(outcome)
            out += figures_of(outcome)
    finally:
        broker.stop()
        shutil.rmtree(folder, ignore_errors=True)
    return out
