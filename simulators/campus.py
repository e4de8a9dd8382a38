"""The simulated campus: every device of the site file, on real protocols.

    clock = SimClock(scale=60)            # an hour a minute
    async with Campus(site, settings.mqtt, clock=clock, seed=7) as campus:
        campus.fire("ebike-shed-west")
        ...

Modbus devices (the bollard PLC, the energy meters) are served by one Modbus TCP server
per distinct (host, port) of the site file, each with the unit ids configured there.
MQTT devices publish their vendor payloads through one client. Everything reads the same
`SimClock` and draws its randomness from the seed, so a run is reproducible.

Scenarios and faults return at once; their effects unfold with the clock.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import uuid
from collections import defaultdict
from types import TracebackType
from typing import Any, Literal, TypeVar

from facility.messages import Family
from facility.settings import MqttSettings
from facility.site import Device, Place, SiteConfig
from simulators.bollards import BollardPlc
from simulators.clock import SimClock
from simulators.drainage import (
    ChirpstackDevice,
    DrainageSystem,
    GasSensor,
    LevelSensor,
    RainGauge,
    SumpPump,
)
from simulators.drills import DrillDesk
from simulators.ev import Charger
from simulators.fire import AcrelMonitor, FireScenes, GstDetector, GstPanel
from simulators.meters import METER_MAPS, SINGLE_PHASE_PEAK_KW, Meter
from simulators.modbus_server import FaultKind, ModbusEndpoint
from simulators.mqtt_publisher import MqttDevice, Outgoing, Publisher, outgoing, run_device
from simulators.noise import Noise
from simulators.profiles import Load, LoadKind, building_loads
from simulators.registers import ModbusUnit
from simulators.weather import Calendar, Weather

log = logging.getLogger(__name__)

BOLLARD_MODEL = "bollard-plc-v1"
M = TypeVar("M")
HostPort = tuple[str, int]


class Campus:
    """Async context manager running the simulated devices; shutdown is cancellation."""

    def __init__(self, site: SiteConfig, mqtt: MqttSettings, *, clock: SimClock, seed: int = 1,
                 use_config_ports: bool = True, families: set[Family] | None = None,
                 min_interval: float = 1.0, topic_prefix: str = "",
                 drills: bool | None = None) -> None:
        """`drills`: take drills (演练) from the broker (simulators/drills.py); by default
        when MQTT devices are simulated (a broker is there)."""
        self.config_site = site
        self.site = site  # replaced by a copy with the bound ports once started
        self.mqtt = mqtt
        self.clock = clock
        self.seed = seed
        self.use_config_ports = use_config_ports
        self.families = set(families) if families is not None else set(Family)
        self.min_interval = min_interval
        self.topic_prefix = topic_prefix
        self.noise = Noise(seed)
        self.calendar = Calendar(site.site.timezone)
        self.weather = Weather(self.calendar, self.noise)
        self.fires = FireScenes()
        self.origin = clock.now()
        self.models: dict[str, Any] = {}
        self.endpoints: dict[HostPort, ModbusEndpoint] = {}  # by configured host and port
        self._endpoint_of: dict[str, tuple[ModbusEndpoint, int]] = {}
        self._mqtt_devices: list[MqttDevice] = []
        self._wakes: list[asyncio.Event] = []
        self._tasks: list[asyncio.Task[None]] = []
        self._stack: contextlib.AsyncExitStack | None = None
        self.publisher: Publisher | None = None
        self.drainage: DrainageSystem | None = None
        self.drills: DrillDesk | None = None
        self._build()
        if drills or (drills is None and self._mqtt_devices):
            self.drills = DrillDesk(self, mqtt, site.site.id)

    # Building the models from the site file.
    def _wanted(self, device: Device) -> bool:
        return device.family in self.families

    def _build(self) -> None:
        site = self.site
        modbus: list[tuple[Device, ModbusUnit]] = []
        for device in site.devices:
            if device.modbus is None or not self._wanted(device):
                continue
            if device.modbus.model == BOLLARD_MODEL:
                count = device.units.count if device.units else 42
                modbus.append((device, BollardPlc(device.id, device.modbus.unit, count,
                                                  self.clock, self.noise, self.calendar,
                                                  self.weather)))
        modbus += [(site.device(m.device_id), m) for m in self._build_meters()]
        units: dict[HostPort, list[tuple[str, ModbusUnit]]] = defaultdict(list)
        for device, unit in modbus:
            assert device.modbus is not None
            self.models[device.id] = unit
            units[(device.modbus.host, device.modbus.port)].append((device.id, unit))
        for where, served in units.items():
            ids = [u.unit for _, u in served]
            if len(ids) != len(set(ids)):
                raise ValueError(f"Modbus server {where[0]}:{where[1]}: unit ids {ids} repeat")
            port = where[1] if self.use_config_ports else 0
            endpoint = ModbusEndpoint(where[0], port, [u for _, u in served])
            self.endpoints[where] = endpoint
            for device_id, u in served:
                self._endpoint_of[device_id] = (endpoint, u.unit)
        self._build_mqtt()

    def _building_of(self, device: Device) -> Place:
        place = self.site.place(device.place)
        building_id = device.tags.get("building") or place.building
        if building_id is None:
            return place
        return self.site.place(building_id)

    def _build_meters(self) -> list[Meter]:
        meters = [d for d in self.site.devices
                  if d.modbus is not None and d.modbus.model != BOLLARD_MODEL and self._wanted(d)]
        for d in meters:
            assert d.modbus is not None
            if d.modbus.model not in METER_MAPS:
                raise ValueError(f"device {d.id!r}: field 'modbus.model': no simulator for "
                                 f"{d.modbus.model!r} (known: {sorted(METER_MAPS)})")
            load = d.tags.get("load", "total")
            if load != "total" and load not in LoadKind.__members__.values():
                raise ValueError(f"device {d.id!r}: tag 'load': unknown load {load!r}")
        # One set of loads per building, shared by its total and its sub-meters.
        by_building: dict[str, list[Device]] = defaultdict(list)
        for d in meters:
            by_building[self._building_of(d).id].append(d)
        built = []
        for building_id, devices in by_building.items():
            building = self.site.place(building_id)
            extra = {LoadKind(d.tags["load"]) for d in devices
                     if d.tags.get("load", "total") != "total"}
            loads = {spec.kind: Load(f"{building_id}/{spec.kind}", spec, self.calendar,
                                     self.weather, self.noise)
                     for spec in building_loads(self.site, building, extra)}
            for d in devices:
                assert d.modbus is not None
                meter_map = METER_MAPS[d.modbus.model]
                kind = d.tags.get("load", "total")
                chosen = list(loads.values()) if kind == "total" else [loads[LoadKind(kind)]]
                fraction = 1.0
                if meter_map.phases == 1:
                    # A single-phase meter carries one board of the load, not all of it.
                    peak = sum(load.spec.peak_kw for load in chosen)
                    fraction = min(1.0, SINGLE_PHASE_PEAK_KW / peak) if peak else 1.0
                built.append(Meter(d.id, d.modbus.unit, meter_map, chosen, fraction,
                                   self.clock, self.noise, self.origin))
        return built

    def _build_mqtt(self) -> None:
        site = self.site
        wanted = [d for d in site.devices if d.mqtt is not None and self._wanted(d)]
        drains = sorted({d.place for d in site.devices
                         if d.kind in ("water_level", "sump_pump")})
        pumped = {d.place for d in site.devices if d.kind == "sump_pump"}
        self.drainage = DrainageSystem(drains, pumped, self.origin, self.noise, self.calendar,
                                       self.weather)
        panels: dict[str, GstPanel] = {}
        for d in wanted:
            if d.kind == "fire_panel":
                panels[d.id] = GstPanel(d, self.noise, self.calendar)
        by_key = {p.key: p for p in panels.values()}
        for d in wanted:
            assert d.mqtt is not None
            place = site.place(d.place)
            vendor = d.mqtt.vendor
            model: MqttDevice
            if d.kind == "fire_panel":
                model = panels[d.id]
            elif vendor == "gst-fire":
                panel = panels.get(d.tags.get("panel", "")) or by_key.get(d.mqtt.key.split("/")[0])
                if panel is None:
                    panel = GstPanel(d, self.noise, self.calendar)  # a panel outside the set
                model = GstDetector(d, place, panel, self.fires, self.noise, self.calendar,
                                    self.weather)
                panel.detectors.append(model)
            elif vendor == "acrel-efm":
                model = AcrelMonitor(d, place, self.fires, self.noise, self.calendar,
                                     self.weather)
            elif vendor == "evcp":
                model = Charger(d, place, self.noise, self.calendar, self.weather)
            elif vendor == "chirpstack":
                model = self._chirpstack(d, place)
            else:
                raise ValueError(f"device {d.id!r}: field 'mqtt.vendor': no simulator for "
                                 f"{vendor!r}")
            self.models[d.id] = model
            self._mqtt_devices.append(model)

    def _chirpstack(self, device: Device, place: Place) -> ChirpstackDevice:
        kinds: dict[str, type[ChirpstackDevice]] = {
            "water_level": LevelSensor, "rain_gauge": RainGauge, "sump_pump": SumpPump,
            "gas_sensor": GasSensor,
        }
        cls = kinds.get(device.kind)
        if cls is None:
            raise ValueError(f"device {device.id!r}: field 'kind': no ChirpStack simulator "
                             f"for {device.kind!r} (known: {sorted(kinds)})")
        assert self.drainage is not None
        return cls(device, place, self.site.site.id, self.drainage, self.noise)

    # Running.
    async def __aenter__(self) -> Campus:
        stack = contextlib.AsyncExitStack()
        await stack.__aenter__()
        try:
            stack.push_async_callback(self._stop_servers)
            for endpoint in self.endpoints.values():
                await endpoint.start()
            self.site = self._site_with_bound_ports()
            self.clock.add_listener(self._wake_all)
            stack.callback(self.clock.remove_listener, self._wake_all)
            if self.drills is not None:  # listening before the devices speak
                await stack.enter_async_context(self.drills)
            group = await stack.enter_async_context(asyncio.TaskGroup())
            if self._mqtt_devices:
                client_id = f"{self.mqtt.client_prefix}-simulators-{uuid.uuid4().hex[:8]}"
                self.publisher = Publisher(self.mqtt, client_id, topic_prefix=self.topic_prefix)
                self._tasks.append(group.create_task(self.publisher.run(), name="sim-mqtt"))
                for device in self._mqtt_devices:
                    wake = asyncio.Event()
                    self._wakes.append(wake)
                    self._tasks.append(group.create_task(
                        run_device(device, self.clock, self.publisher, wake, self.min_interval),
                        name=f"sim-{device.device_id}"))
        except BaseException:
            await stack.aclose()
            raise
        self._stack = stack
        log.info("simulators: %d Modbus servers, %d MQTT devices", len(self.endpoints),
                 len(self._mqtt_devices))
        return self

    async def __aexit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                        tb: TracebackType | None) -> None:
        for task in self._tasks:
            task.cancel()
        self._tasks.clear()
        self._wakes.clear()
        stack, self._stack = self._stack, None
        if stack is not None:
            await stack.__aexit__(exc_type, exc, tb)

    async def _stop_servers(self) -> None:
        for endpoint in self.endpoints.values():
            await endpoint.stop()

    def _site_with_bound_ports(self) -> SiteConfig:
        devices = []
        for d in self.config_site.devices:
            if d.modbus is not None and d.id in self._endpoint_of:
                endpoint, _ = self._endpoint_of[d.id]
                d = d.model_copy(update={"modbus": d.modbus.model_copy(
                    update={"port": endpoint.port})})
            devices.append(d)
        return self.config_site.model_copy(update={"devices": devices})

    def _wake_all(self) -> None:
        for wake in self._wakes:
            wake.set()

    # Access to the models.
    def model(self, device_id: str) -> Any:
        try:
            return self.models[device_id]
        except KeyError:
            raise KeyError(f"no simulated device {device_id!r}") from None

    def plc(self, device_id: str | None = None) -> BollardPlc:
        if device_id is None:
            device_id = next((k for k, m in self.models.items() if isinstance(m, BollardPlc)),
                             "")
        return self._typed(device_id, BollardPlc)

    def meter(self, device_id: str) -> Meter:
        return self._typed(device_id, Meter)

    def charger(self, device_id: str) -> Charger:
        return self._typed(device_id, Charger)

    def _typed(self, device_id: str, cls: type[M]) -> M:
        model = self.model(device_id)
        if not isinstance(model, cls):
            raise TypeError(f"device {device_id!r} is a {type(model).__name__}, "
                            f"not a {cls.__name__}")
        return model

    def endpoint(self, where: str | HostPort) -> ModbusEndpoint:
        """The server of a device id, or of a (host, port) as configured or as bound."""
        if isinstance(where, str):
            if where not in self._endpoint_of:
                raise KeyError(f"{where!r} is not a simulated Modbus device")
            return self._endpoint_of[where][0]
        host, port = where
        for configured, endpoint in self.endpoints.items():
            if configured == (host, port) or (endpoint.host, endpoint.port) == (host, port):
                return endpoint
        raise KeyError(f"no simulated Modbus server at {host}:{port}")

    # Faults and scenarios.
    def modbus_fault(self, device_id: str,
                     kind: Literal["silent", "slow", "exception", "none"],
                     delay: float = 0.0) -> None:
        """silent: never answers; slow: answers after `delay` wall seconds; exception:
        answers exception 04 (server device failure); none: back to normal."""
        endpoint, unit = self._endpoint_of.get(device_id, (None, 0))
        if endpoint is None:
            raise KeyError(f"{device_id!r} is not a simulated Modbus device")
        fault: FaultKind = kind
        endpoint.set_fault(unit, fault, delay)

    async def modbus_server_down(self, host_port: str | HostPort) -> None:
        """Close the listener and its connections: connection refused until it is up."""
        await self.endpoint(host_port).stop()

    async def modbus_server_up(self, host_port: str | HostPort) -> None:
        await self.endpoint(host_port).start()

    def rainstorm(self, place: str = "west-gate-drain", peak_mm_h: float = 80,
                  rise_cm_per_min: float = 3.0, duration_s: float = 3600) -> None:
        """Heavy rain from now: the gauge counts it, the water at `place` rises about
        `rise_cm_per_min` at the peak (less what its pump removes), pumps start, and
        everything recedes after the rain."""
        assert self.drainage is not None
        storm = self.weather.add_storm(self.clock.now(), duration_s, peak_mm_h)
        self.drainage.add_surge(place, storm, rise_cm_per_min)
        self._wake_all()

    def fire(self, place: str = "ebike-shed-west") -> None:
        """Smoke and heat rise at the detectors of `place`: PRE_ALARM then FIRE_ALARM
        events, panel ALARM; the electrical-fire monitors there alarm too."""
        self._check_place(place)
        self.fires.start(place, self.clock.now())
        self._wake_all()

    def fire_out(self, place: str = "ebike-shed-west") -> None:
        """The fire is out: values fall back and the detectors RESTORE."""
        self._check_place(place)
        self.fires.put_out(place, self.clock.now())
        self._wake_all()

    def _check_place(self, place: str) -> None:
        if all(p.id != place for p in self.site.places):
            raise KeyError(f"place {place!r} is not in the site file")

    def bollard_stuck(self, n: int, stuck: bool = True) -> None:
        """Bollard n of the PLC jams: commanded moves go nowhere and fault after 10 s."""
        self.plc().set_stuck(n, stuck)

    def charger_fault(self, device_id: str, error: str = "HighTemperature") -> None:
        self.charger(device_id).fault(self.clock.now(), error)
        self._wake_all()

    def charger_clear(self, device_id: str) -> None:
        self.charger(device_id).clear(self.clock.now())
        self._wake_all()

    def meter_reset(self, device_id: str) -> None:
        """The meter was replaced: its energy counters start again from 0."""
        self.meter(device_id).reset()

    def publish_raw(self, topic: str, payload: bytes | str | dict[str, Any]) -> None:
        """Publish anything through the simulators' client (QoS 1, topic prefix applied),
        e.g. a malformed vendor message for a gateway's dead-letter test."""
        if self.publisher is None:
            raise RuntimeError("no MQTT devices are simulated, so there is no client")
        if isinstance(payload, dict):
            self.publisher.submit([outgoing(topic, payload)])
        else:
            data = payload.encode() if isinstance(payload, str) else payload
            self.publisher.submit([Outgoing(topic, data)])


async def run(site: SiteConfig, mqtt: MqttSettings, *, seed: int = 1, scale: float = 1.0,
              start: float | None = None, use_config_ports: bool = True) -> None:
    """Run the whole campus until cancelled (the `facility simulate` command)."""
    clock = SimClock(start=start, scale=scale)
    async with Campus(site, mqtt, clock=clock, seed=seed, use_config_ports=use_config_ports):
        await asyncio.Event().wait()

