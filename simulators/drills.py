"""Drills (演练) on the running simulators, and the `facility drill` command that starts them.

A drill is a `Drill` message on facility/v1/{site}/drill/{id} (facility/drills.py plans it
from the site file). The simulated campus listens (`DrillDesk`, started by `Campus`, so it
runs inside `facility up` and `facility simulate`) and plays the scenario on its devices,
which then speak their vendors' protocols as in a real emergency; the gateways and the
rules engine do the rest, and the engine marks the drill's alerts, screens and PA with 演练:

- `fire --place P`: smoke and heat rise at P's detectors (PRE_ALARM, FIRE_ALARM, panel
  ALARM); at the end the fire is out and the detectors RESTORE.
- `rainstorm --place D`: heavy rain, the water at drain D rises (6 cm/min at the peak);
  the rain stops at the end.
- `gateway-loss --place G`: the Modbus devices behind gateway G stop answering (their
  servers close) until the end.
- `bollard-fault --place B`: bollard B faults (hydraulic pressure low) until a fault reset
  at the cabinet at the end.

A drill is played once per id (a redelivered message is not a second fire), and not at
all once its end has passed.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import time
import uuid
from typing import TYPE_CHECKING, Any

from facility import labels, topics
from facility import messages as m
from facility.drills import DEFAULTS, DrillError, bollard_number, plan
from facility.mqtt import Connection, run_connected
from facility.mqttlink import MqttLink, connector
from facility.service import Service
from facility.settings import MqttSettings
from facility.topics import Kind

if TYPE_CHECKING:
    from simulators.campus import Campus

log = logging.getLogger(__name__)


class DrillDesk(Service):
    """Takes drills for the campus's site from the broker and plays them."""

    def __init__(self, campus: Campus, mqtt: MqttSettings, site_id: str, *,
                 clock_ns: Any = time.time_ns) -> None:
        super().__init__()
        self.name = f"drills {site_id}"
        self.campus = campus
        self.mqtt = mqtt
        self.site_id = site_id
        self.clock_ns = clock_ns
        self.played: dict[str, m.Drill] = {}  # drill id -> drill, in the order taken
        self.started_at: dict[str, float] = {}  # drill id -> time.monotonic() when played
        self._ends: set[asyncio.Task[None]] = set()

    async def run(self) -> None:
        client_id = f"{self.mqtt.client_prefix}-drills-{uuid.uuid4().hex[:8]}"
        await run_connected(self.mqtt, connector(self.mqtt, client_id), self._session,
                            name=self.name, on_disconnect=self.ready.clear)

    async def close(self) -> None:
        for task in list(self._ends):
            task.cancel()
        await asyncio.gather(*self._ends, return_exceptions=True)

    async def _session(self, client: Connection) -> None:
        await client.subscribe([topics.subscription(Kind.DRILL, self.site_id)], qos=1)
        self.ready.set()
        while True:
            batch = await client.next_batch(10, None)
            for message in batch:
                try:
                    drill = m.decode(message.payload, m.Drill)
                except m.ContractError as exc:
                    log.warning("%s: a drill message that is not one (%s): %s", self.name,
                                message.topic, exc)
                    continue
                try:
                    self.play(drill)
                except (DrillError, KeyError, ValueError) as exc:
                    log.warning("%s: drill %s not played: %s", self.name, drill.id, exc)
            client.ack(batch)

    def play(self, drill: m.Drill) -> bool:
        """Start the drill's scenario now and its end at `ends_at`; False if it was played
        before or is over."""
        if drill.id in self.played or drill.site != self.site_id:
            return False
        remaining = (drill.ends_at - self.clock_ns()) / 1e9
        if remaining <= 0:
            return False
        self.played[drill.id] = drill
        self.started_at[drill.id] = time.monotonic()
        end = self._start(drill)
        log.warning("%s: %s %s at %s started by %s (until %.0f s from now)", self.name,
                    labels.DRILL["drill"], labels.DRILL.get(drill.scenario, drill.scenario),
                    drill.place, drill.by, remaining)
        task = asyncio.get_running_loop().create_task(self._end_after(remaining, end),
                                                      name=f"drill end {drill.id}")
        self._ends.add(task)
        task.add_done_callback(self._ends.discard)
        return True

    def _start(self, drill: m.Drill) -> Any:
        """Start the scenario; the callable (sync or async) that ends it."""
        campus, place = self.campus, drill.place
        scenario = drill.scenario
        if scenario is m.DrillScenario.FIRE:
            campus.fire(place)
            return lambda: campus.fire_out(place)
        if scenario is m.DrillScenario.RAINSTORM:
            params = {**DEFAULTS[scenario].params, **drill.params}
            campus.rainstorm(place, peak_mm_h=float(params["peak_mm_h"]),
                             rise_cm_per_min=float(params["rise_cm_per_min"]),
                             duration_s=float(params["storm_s"]))
            return lambda: None  # the storm ends by itself at its end
        if scenario is m.DrillScenario.GATEWAY_LOSS:
            servers = {id(campus.endpoint(d.id)): d.id for d in campus.site.devices_of(place)
                       if d.modbus is not None}
            if not servers:
                raise DrillError(f"no simulated Modbus device behind {place!r}")
            self._later(*(campus.modbus_server_down(d) for d in servers.values()))

            async def back() -> None:
                for device_id in servers.values():
                    await campus.modbus_server_up(device_id)
            return back
        plc_id, n = bollard_number(campus.site, place)
        plc = campus.plc(plc_id)
        plc.inject_fault(n, int(drill.params.get("fault_code", 1)))  # type: ignore[arg-type]  # an int code the PLC's enum checks
        return plc.reset_faults

    def _later(self, *coroutines: Any) -> None:
        async def run_all() -> None:
            for coroutine in coroutines:
                await coroutine
        task = asyncio.get_running_loop().create_task(run_all(), name="drill start")
        self._ends.add(task)
        task.add_done_callback(self._ends.discard)

    async def _end_after(self, seconds: float, end: Any) -> None:
        await asyncio.sleep(seconds)  # the drill's own length, not a wait for a condition
        result = end()
        if asyncio.iscoroutine(result):
            await result
        log.warning("%s: drill over", self.name)


# --- `facility drill ...` ---------------------------------------------------------------------

HELP = {m.DrillScenario.FIRE: "a fire: smoke and heat at a place's detectors (--place, "
                              "default ebike-shed-west)",
        m.DrillScenario.RAINSTORM: "heavy rain: a drain floods (--place, default "
                                   "west-gate-drain)",
        m.DrillScenario.GATEWAY_LOSS: "a Modbus gateway loses its devices (--place GATEWAY, "
                                      "default gw-plc-south)",
        m.DrillScenario.BOLLARD_FAULT: "a south-gate bollard faults (--place BOLLARD, "
                                       "default bollard-s20)"}


def register(sub: Any) -> None:
    p = sub.add_parser(
        "drill", help="start a drill (演练) on the running simulators: fire, rainstorm, "
                      "gateway-loss, bollard-fault",
        description="Start a scripted emergency on the simulated campus of a running "
                    "`facility up` (or `facility simulate`): the devices report it as they "
                    "would a real one, and the rules engine marks its alerts, screens and PA "
                    "announcements with 演练.")
    ds = p.add_subparsers(dest="scenario", required=True, metavar="SCENARIO")
    for scenario in m.DrillScenario:
        d = ds.add_parser(scenario.value, help=HELP[scenario])
        d.add_argument("--place", default="",
                       help=f"where (default {DEFAULTS[scenario].place})")
        d.add_argument("--duration", type=float, default=None,
                       help=f"seconds until it stops (default {DEFAULTS[scenario].duration_s:g})")
        d.add_argument("--by", default="cli", help="who starts it (recorded)")
        d.set_defaults(func=cmd_drill)


async def cmd_drill(args: argparse.Namespace, settings: Any, catalog: Any) -> int:
    site = catalog.site
    try:
        drill = plan(site, args.scenario, by=args.by, place=args.place,
                     duration_s=args.duration)
    except DrillError as exc:
        print(f"{labels.DRILL['drill']}未开始：{exc}")
        return 2
    await publish(settings.mqtt, drill)
    print(f"{labels.DRILL['started']}：{labels.DRILL[drill.scenario]} {drill.id} "
          f"（{drill.place}，{(drill.ends_at - drill.ts) / 1e9:.0f}秒）", flush=True)
    return 0


async def publish(mqtt: MqttSettings, drill: m.Drill) -> None:
    """Send a drill to the simulators and the rules engine (QoS 1: the broker has it)."""
    client_id = f"{mqtt.client_prefix}-drill-{uuid.uuid4().hex[:8]}"
    link = await MqttLink.open(mqtt, client_id)
    async with link:
        await link.publish(topics.drill(drill.site, drill.id), m.encode(drill), qos=1)
