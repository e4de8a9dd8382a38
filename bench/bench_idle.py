"""Idle cost: CPU per reading and % of a core of each service at the campus's real rate (the
demo's `facility up` load: the simulated campus, its gateways, ingest, rules, API, duty and
the OCPP central system), each service in a process of its own.

`facility up` runs everything in one process; here each service is its own `python -m app
...` command (as on the campus), against one private Mosquitto and InfluxDB, with the demo's
simulators publishing: the campus (Modbus servers and vendor MQTT devices, the soak
benchmark's simulator process), the simulated screens and PA zones, and the simulated OCPP
charge points (a process of this module, with passwords whose hashes the central system
reads from its ocpp.yaml). After a warm-up, each process's CPU (from /proc, children
included) is read over the measured window; readings are the canonical telemetry messages
a subscriber on the broker counted in the same window. Not included: `facility up`'s
35 days of history written at start and its status monitor.
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import contextlib
import json
import secrets
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bench.bench_peers import tree_cpu_seconds
from bench.campus_load import CONFIG_DIR, RULES_DIR, SITE_FILE, write_yaml
from bench.common import Figure, figure
from bench.procs import REPO, stop_process
from facility import topics
from facility.configfile import read_yaml
from facility.localservers import InfluxServer, MosquittoServer, free_port
from facility.settings import load_settings
from facility.site import GatewayKind, load_site
from facility.topics import Kind

WARM_UP = 30.0  # s after the last service is up, before the window


def write_config(folder: Path, mqtt_url: str, influx_url: str) -> tuple[Path, dict[str, str]]:
    """Settings, the campus's site file with its Modbus servers on free ports, and an
    ocpp.yaml with the hashes of the simulated charge points' passwords (returned)."""
    from csms.config import hash_password

    site: dict[str, Any] = read_yaml(SITE_FILE)
    ports: dict[tuple[str, int], int] = {}
    passwords: dict[str, str] = {}
    for device in site["devices"]:
        modbus = device.get("modbus")
        if modbus:
            where = (modbus["host"], modbus["port"])
            ports.setdefault(where, free_port())
            modbus["host"] = "127.0.0.1"
            modbus["port"] = ports[where]
        if device.get("ocpp"):
            passwords[device["ocpp"]["id"]] = secrets.token_urlsafe(24)
    write_yaml(folder / "site.yaml", site)
    ocpp = read_yaml(CONFIG_DIR / "ocpp.yaml")
    ocpp["charge_points"] = {cp: {"password_hash": hash_password(pw, random_token=True)}
                             for cp, pw in passwords.items()}
    write_yaml(folder / "ocpp.yaml", ocpp)
    config = write_yaml(folder / "facility.yaml", {
        "site_file": str(folder / "site.yaml"),
        "mqtt": {"url": mqtt_url, "client_prefix": "idle"},
        "influx": {"url": influx_url, "database": "facility"},
        "state": {"url": f"sqlite:///{folder / 'state.sqlite'}"},
        "config_dir": str(CONFIG_DIR),  # the shipped maps, mappings, endpoints and rules
        "spool": {"dir": str(folder / "spool")},
        "rules": {"rules_dir": str(RULES_DIR)},
        "api": {"port": free_port()},
        "ocpp": {"port": free_port(), "config_file": str(folder / "ocpp.yaml")}})
    (folder / "passwords.json").write_text(json.dumps(passwords))
    return config, passwords


@dataclass
class Proc:
    name: str
    argv: list[str]
    log: Path
    platform: bool = True  # a service of the platform (else a simulator)
    metrics_port: int = 0
    env: dict[str, str] = field(default_factory=dict)
    proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        import os

        with self.log.open("ab") as log:
            self.proc = subprocess.Popen([sys.executable, *self.argv], cwd=REPO, stdout=log,
                                         stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                         env={**os.environ, **self.env})

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def wait_http(self, url: str, timeout: float = 90) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if not self.alive():
                raise RuntimeError(f"{self.name} exited; see {self.log}")
            try:
                with urllib.request.urlopen(url, timeout=1) as resp:
                    if resp.status < 500:
                        return
            except urllib.error.HTTPError as exc:
                if exc.code < 500:
                    return
            except OSError:
                pass
            time.sleep(0.2)
        raise TimeoutError(f"{self.name} not ready in {timeout:.0f} s; see {self.log}")

    def wait_ready(self) -> None:
        if self.metrics_port:
            self.wait_http(f"http://127.0.0.1:{self.metrics_port}/healthz")

    def cpu(self) -> float:
        assert self.proc is not None
        return tree_cpu_seconds(self.proc.pid)

    def stop(self) -> None:
        stop_process(self.proc)


class Counter:
    """Canonical telemetry and events seen on the broker (mosquitto_sub, QoS 0)."""

    def __init__(self, broker: MosquittoServer) -> None:
        self.readings = 0
        self.events = 0
        self.families: collections.Counter[str] = collections.Counter()
        self.proc = subprocess.Popen(
            ["mosquitto_sub", "-h", broker.host, "-p", str(broker.port), "-q", "0", "-F", "%t",
             "-t", topics.subscription(Kind.TELEMETRY), "-t", topics.subscription(Kind.EVENT)],
            stdout=subprocess.PIPE, text=True, bufsize=1)
        self.thread = threading.Thread(target=self._read, daemon=True)
        self.thread.start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            topic = line.strip()
            if topics.is_kind(topic, Kind.TELEMETRY):
                self.readings += 1
                with contextlib.suppress(topics.TopicError):
                    self.families[topics.parse(topic).family or "?"] += 1
            else:
                self.events += 1

    def stop(self) -> None:
        self.proc.terminate()
        self.proc.wait(10)


async def run(quick: bool = False, minutes: float | None = None) -> list[Figure]:
    return await asyncio.to_thread(_run, quick, minutes)


def _run(quick: bool, minutes: float | None) -> list[Figure]:
    seconds = 60.0 * (minutes if minutes is not None else (0.75 if quick else 3.0))
    folder = Path(tempfile.mkdtemp(prefix="facility-idle-"))
    # The demo's broker configuration, as `facility up --start-servers` starts it.
    broker = MosquittoServer(folder / "mosquitto", extra_config=(
        CONFIG_DIR / "mosquitto" / "demo.conf").read_text(encoding="utf-8"))
    influx = InfluxServer(folder / "influxdb")
    procs: list[Proc] = []
    counter: Counter | None = None
    try:
        broker.start()
        influx.start()
        config, _ = write_config(folder, broker.url, influx.url)
        settings = load_settings(config)
        site = load_site(settings.site_path)
        base = ["-m", "app", "--config", str(config), "--log-level", "WARNING"]

        def add(name: str, argv: list[str], *, platform: bool = True, metrics: bool = False,
                env: dict[str, str] | None = None) -> Proc:
            port = free_port() if metrics else 0
            extra = ["--metrics", f"127.0.0.1:{port}"] if metrics else []
            p = Proc(name, argv + extra, folder / f"{name}.log", platform, port, env or {})
            procs.append(p)
            return p

        def up(*ps: Proc) -> None:
            for p in ps:
                p.start()
            for p in ps:
                p.wait_ready()

        counter = Counter(broker)
        # The order of `facility up`: listeners first, the devices last.
        up(add("ingest", [*base, "ingest"], metrics=True))
        up(add("rules", [*base, "rules", "run"], metrics=True),
           add("screens+PA (sim)", ["-m", "simulators.display_player", "--config",
                                    str(config)], platform=False))
        api = add("api", [*base, "api"])
        api.start()
        api.wait_http(f"http://127.0.0.1:{settings.api.port}/api/labels")
        duty_port = free_port()
        duty = add("duty", [*base, "duty", "run"],
                   env={"FACILITY_DUTY_FILE": str(CONFIG_DIR / "duty.yaml"),
                        "FACILITY_DUTY_PORT": str(duty_port)})
        duty.start()
        duty.wait_http(f"http://127.0.0.1:{duty_port}/")
        mqtt_gateways = [g.id for g in site.gateways if g.kind is GatewayKind.MQTT]
        modbus_gateways = [g.id for g in site.gateways if g.kind is GatewayKind.MODBUS]
        up(*[add(f"gateway {g}", [*base, "gateway", "--id", g], metrics=True)
             for g in mqtt_gateways])
        if any(g.kind is GatewayKind.OCPP for g in site.gateways):
            csms = add("ocpp central system", [*base, "ocpp", "run"], metrics=True)
            up(csms)
            up(add("chargers (sim)", ["-m", "bench.bench_idle", "fleet", str(config),
                                      str(folder / "passwords.json")], platform=False))
        modbus_host = next(f"127.0.0.1:{d.modbus.port}" for d in site.devices
                           if d.modbus is not None)
        up(add("campus (sim)", ["-m", "bench.bench_soak", "sim", str(config), modbus_host],
               platform=False))
        up(*[add(f"gateway {g}", [*base, "gateway", "--id", g], metrics=True)
             for g in modbus_gateways])
        print(f"  {len(procs)} processes up; warm-up {WARM_UP:.0f} s, then {seconds:.0f} s "
              "measured", flush=True)
        time.sleep(WARM_UP)  # a set duration: the benchmark's warm-up, not a condition
        servers = {"mosquitto": broker.pid, "influxd": influx.pid}
        before = {p.name: p.cpu() for p in procs}
        before_servers = {k: tree_cpu_seconds(pid) for k, pid in servers.items()}
        readings0, events0 = counter.readings, counter.events
        families0 = collections.Counter(counter.families)
        t0 = time.monotonic()
        time.sleep(seconds)  # the measured window
        wall = time.monotonic() - t0
        readings, events = counter.readings - readings0, counter.events - events0
        families = collections.Counter(counter.families)
        families.subtract(families0)
        dead = [p.name for p in procs if not p.alive()]
        used = {p.name: p.cpu() - before[p.name] for p in procs}
        used_servers = {k: tree_cpu_seconds(pid) - before_servers[k]
                        for k, pid in servers.items()}
    finally:
        if counter is not None:
            counter.stop()
        for p in reversed(procs):
            p.stop()
        influx.stop()
        broker.stop()
        shutil.rmtree(folder, ignore_errors=True)
    per_s = readings / wall
    figures = [figure("canonical readings on the broker", per_s, "/s",
                      note=f"{readings:,} in {wall:.0f} s ("
                           + ", ".join(f"{k} {v / wall:.2f}/s"
                                       for k, v in sorted(families.items()))
                           + f"); events {events:,}"),
               figure("processes that exited during the run", len(dead), "",
                      at_most=0, note=", ".join(dead) or "none")]
    platform = 0.0
    for p in procs:
        cpu = used[p.name]
        if p.platform:
            platform += cpu
        figures.append(_share(p.name if p.platform else f"({p.name})", cpu, wall, readings))
    for name, cpu in used_servers.items():
        figures.append(_share(f"({name})", cpu, wall, readings))
    figures.append(_share("the platform's services together", platform, wall, readings,
                          "without Mosquitto, InfluxDB and the simulators"))
    return figures


def _share(name: str, cpu: float, wall: float, readings: int, more: str = "") -> Figure:
    """CPU of one process over the window: millicores (1000 = one core busy), with the
    % of a core and the CPU per reading of the whole campus."""
    return figure(f"{name}: CPU", cpu / wall * 1000, "mcores",
                  note=f"{cpu / wall * 100:.2f} % of a core; "
                       f"{cpu / max(readings, 1) * 1e6:,.0f} us CPU per reading"
                       + (f"; {more}" if more else ""))


# ---------------------------------------------------------------- the chargers' process

async def run_fleet(config: Path, passwords: dict[str, str]) -> None:
    """The site's OCPP charge points simulated as `facility up` does (app/wiring.ocpp)."""
    from simulators.ocpp_chargers import Fleet, SimChargePoint
    from simulators.ocpp_chargers import Settings as SimSettings

    settings = load_settings(config)
    site = load_site(settings.site_path)
    url = f"ws://{settings.ocpp.host}:{settings.ocpp.port}/ocpp"
    points = [SimChargePoint(d.ocpp.id, SimSettings(url, passwords[d.ocpp.id],
                                                    power_w=float(d.tags.get("rated_kw", "7"))
                                                    * 1000), d.ocpp.connectors)
              for d in site.devices if d.ocpp is not None]
    async with Fleet(points, session_every=120.0, session_length=1500.0):
        stop = asyncio.Event()
        asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, stop.set)
        await stop.wait()


def main() -> None:
    parser = argparse.ArgumentParser(description="the idle benchmark's charger process")
    parser.add_argument("role", choices=["fleet"])
    parser.add_argument("config", type=Path)
    parser.add_argument("passwords", type=Path)
    args = parser.parse_args()
    import logging

    logging.basicConfig(level=logging.WARNING)
    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(run_fleet(args.config, json.loads(args.passwords.read_text())))


if __name__ == "__main__":
    main()
