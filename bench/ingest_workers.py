"""Ingest workers killed mid-run, audited: the harness behind tests/test_ingest_workers.py
and `python -m bench ingest_workers`.

Three `python -m app ingest` processes share one MQTT v5 subscription, each in a worker
slot with a fixed client id (so a replacement takes over the slot's session at the
broker). A publisher sends numbered readings of one gateway at a steady rate, QoS 1, and
keeps the numbers the broker acknowledged. Mid-run one worker is killed with SIGKILL;
then either a process takes its slot again at once (`restart`), or none does until the
run is over (`gone`): then what the broker held for the dead slot is measured before a
replacement takes the slot. The audit reads every stored number back from InfluxDB.
"""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import time
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

from pydantic import SecretStr

from bench.procs import REPO, stop_process
from facility import messages as m
from facility import topics
from facility.influx import InfluxClient
from facility.localservers import free_port
from facility.mqttlink import MqttLink
from facility.settings import InfluxSettings, MqttSettings


@dataclass
class Servers:
    mqtt_url: str
    influx_url: str
    database: str
    state_url: str
    site: str
    folder: Path  # logs and spools


class Worker:
    """One worker slot: `python -m app ingest` with the slot's fixed client id."""

    def __init__(self, servers: Servers, slot: int, *, grace: float,
                 session_expiry: int | None = None, slot_ttl: float | None = None) -> None:
        self.servers = servers
        self.slot = slot
        self.grace = grace
        self.slot_ttl = slot_ttl  # None: the settings' default
        self.session_expiry = session_expiry  # None: the settings' default (7 days)
        self.proc: subprocess.Popen[bytes] | None = None
        self.starts = 0
        self.metrics_port = 0

    def env(self) -> dict[str, str]:
        s = self.servers
        return {**os.environ, "FACILITY_MQTT_URL": s.mqtt_url, "FACILITY_INFLUX_URL":
                s.influx_url, "FACILITY_INFLUX_DATABASE": s.database,
                "FACILITY_STATE_URL": s.state_url, "FACILITY_INGEST_SITE": s.site,
                "FACILITY_INGEST_SHARED_GROUP": f"g{s.site}",
                "FACILITY_INGEST_CLIENT_ID": f"ingest-{s.site}-{self.slot}",
                "FACILITY_INGEST_LOSS_GRACE": str(self.grace),
                "FACILITY_INGEST_BATCH_INTERVAL": "0.05",
                "FACILITY_SPOOL_DIR": str(s.folder / "spool"),
                **({} if self.session_expiry is None else
                   {"FACILITY_INGEST_SESSION_EXPIRY": str(self.session_expiry)}),
                **({} if self.slot_ttl is None else
                   {"FACILITY_INGEST_SLOT_TTL": str(self.slot_ttl)})}

    def start(self) -> None:
        self.starts += 1
        self.metrics_port = free_port()
        log = (self.servers.folder / f"worker-{self.slot}-{self.starts}.log").open("wb")
        with log:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "app", "ingest", "--metrics",
                 f"127.0.0.1:{self.metrics_port}"], env=self.env(), cwd=REPO,
                stdout=log, stderr=subprocess.STDOUT, start_new_session=True)

    async def ready(self, timeout: float = 30.0) -> None:
        """Until the worker's /healthz answers 200 (connected and subscribed)."""
        deadline = time.monotonic() + timeout
        while True:
            assert self.proc is not None
            if self.proc.poll() is not None:
                raise RuntimeError(f"worker {self.slot} exited ({self.proc.returncode}); "
                                   f"see {self.servers.folder}")
            if await asyncio.to_thread(self._healthy):
                return
            if time.monotonic() > deadline:
                raise TimeoutError(f"worker {self.slot} not ready in {timeout}s")
            await asyncio.sleep(0.1)

    def _healthy(self) -> bool:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{self.metrics_port}/healthz",
                                        timeout=1) as resp:
                return bool(resp.status == 200)
        except OSError:
            return False

    async def retire(self) -> str:
        """`python -m app ingest --retire` as this slot; its output."""
        done = await asyncio.to_thread(
            subprocess.run, [sys.executable, "-m", "app", "ingest", "--retire"],
            env=self.env(), cwd=REPO, capture_output=True, text=True, timeout=120)
        if done.returncode != 0:
            raise RuntimeError(f"retire failed: {done.stderr[-2000:]}")
        return done.stdout

    def kill9(self) -> None:
        assert self.proc is not None
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(10)

    def stop(self) -> None:
        stop_process(self.proc)


def reading(site: str, seq: int, start_ns: int) -> tuple[str, bytes]:
    """Number `seq` of gateway gw-audit: its own timestamp, so every number is one point."""
    r = m.Reading(site=site, family=m.Family.DRAINAGE, device="wl-audit",
                  ts=start_ns + seq * 1_000_000, seq=seq, gateway="gw-audit",
                  values={"n": float(seq)})
    return topics.telemetry(site, "drainage", "wl-audit"), m.encode(r)


@dataclass
class Publisher:
    """Numbered readings at `rate` per second; `acked` are those the broker confirmed."""

    mqtt_url: str
    site: str
    count: int
    rate: float
    start_ns: int = field(default_factory=lambda: time.time_ns() - 3600 * 10**9)
    acked: list[int] = field(default_factory=list)

    async def run(self, at: dict[int, asyncio.Event] | None = None, first: int = 1) -> None:
        """Publish first..count; set at[n] once n is confirmed (the moments to kill)."""
        settings = MqttSettings(url=SecretStr(self.mqtt_url))
        link = await MqttLink.open(settings, f"pub-{self.site}")
        loop = asyncio.get_running_loop()
        async with link:
            began = loop.time()
            for seq in range(first, self.count + 1):
                due = began + (seq - first) / self.rate
                if due > loop.time():
                    await asyncio.sleep(due - loop.time())
                topic, payload = reading(self.site, seq, self.start_ns)
                await link.publish(topic, payload, qos=1)
                self.acked.append(seq)
                if at and seq in at:
                    at[seq].set()


async def stored_numbers(servers: Servers) -> list[int]:
    """Every number of gw-audit in InfluxDB (one point each; a redelivery overwrites)."""
    async with InfluxClient(InfluxSettings(url=servers.influx_url,
                                           database=servers.database)) as influx:
        result = await influx.query(
            f"SELECT \"n\" FROM \"drainage\" WHERE site = '{servers.site}'", epoch="ns")
    return sorted(int(row[1]) for s in (result[0] if result else []) for row in s.values)




@dataclass
class Outcome:
    published: int  # numbers the broker confirmed
    killed_at: int  # the last number confirmed when the worker was killed
    missing: list[int]  # confirmed, never stored (the audit)
    stored: int
    held: int = 0  # `gone`: numbers not stored while the slot had no process
    held_before_kill: int = 0  # of those, confirmed before the kill
    held_after_kill: int = 0
    drain_seconds: float = 0.0  # the slot taken again (`adopt`: the run over) -> all stored
    after_retire: int = 0  # `retire`: numbers published after, all to the survivors
    lost_counted: int = 0  # the shared loss check's count for gw-audit
    late_counted: int = 0
    seconds: float = 0.0


async def settle(servers: Servers, want: int, timeout: float, *, still: bool = True
                 ) -> list[int]:
    """The stored numbers once they reach `want`, or (`still`) once they stop growing
    for 1.5 s, or at the timeout."""
    deadline = time.monotonic() + timeout
    last: list[int] = []
    unchanged = 0
    while time.monotonic() < deadline:
        now = await stored_numbers(servers)
        if len(now) >= want:
            return now
        unchanged = unchanged + 1 if len(now) == len(last) else 0
        if still and unchanged >= 6:
            return now
        last = now
        await asyncio.sleep(0.25)
    return last


async def run_kill(servers: Servers, *, count: int, rate: float, restart: bool,
                   grace: float = 10.0, kill_at: int | None = None,
                   session_expiry: int | None = None, retire: bool = False,
                   slot_ttl: float | None = 0.0, adopt: bool = False) -> Outcome:
    """Three worker slots, a numbered run, a SIGKILL of slot 2 at `kill_at` (default a
    third of the way); `restart`: slot 2 is started again at once, else only after the
    run, once what the broker held for it has been measured: by a worker that takes the
    slot, or (`retire`) by `ingest --retire`, after which a tenth more numbers are sent
    and must reach the two survivors. `adopt`: nobody acts; the live workers retire the
    dead slot once its lease (`slot_ttl`) runs out, then a tenth more are sent. A
    `slot_ttl` of 0 (the default here) keeps the survivors from retiring it, so what the
    broker holds for a dead slot can be measured."""
    started = time.monotonic()
    kill_at = kill_at or count // 3
    workers = [Worker(servers, slot, grace=grace, session_expiry=session_expiry,
                      slot_ttl=slot_ttl) for slot in (1, 2, 3)]
    try:
        for w in workers:
            w.start()
        await asyncio.gather(*(w.ready() for w in workers))
        publisher = Publisher(servers.mqtt_url, servers.site, count, rate)
        moment = asyncio.Event()
        run = asyncio.create_task(publisher.run({kill_at: moment}))
        await moment.wait()
        victim = workers[1]
        victim.kill9()
        if restart:
            victim.start()
        await run
        outcome = Outcome(published=len(publisher.acked), killed_at=kill_at, missing=[],
                          stored=0)
        if adopt:
            over = time.monotonic()
            await settle(servers, len(publisher.acked), 60, still=False)
            outcome.drain_seconds = time.monotonic() - over
            publisher = await _more(publisher, outcome, servers, count, rate)
        elif not restart:
            stored = await settle(servers, len(publisher.acked), 30)
            have = set(stored)
            held = [n for n in publisher.acked if n not in have]
            outcome.held = len(held)
            outcome.held_before_kill = sum(1 for n in held if n <= kill_at)
            outcome.held_after_kill = outcome.held - outcome.held_before_kill
            taken = time.monotonic()
            if retire:
                await victim.retire()
                publisher = await _more(publisher, outcome, servers, count, rate)
            else:
                victim.start()
                await victim.ready()
        stored = await settle(servers, len(publisher.acked), 60, still=False)
        if not restart and not adopt:
            outcome.drain_seconds = time.monotonic() - taken
        have = set(stored)
        outcome.missing = [n for n in publisher.acked if n not in have]
        outcome.stored = len(stored)
        outcome.lost_counted, outcome.late_counted = await _loss_count(
            servers, len(publisher.acked), grace)
        outcome.seconds = time.monotonic() - started
        return outcome
    finally:
        for w in workers:
            w.stop()


async def _more(publisher: Publisher, outcome: Outcome, servers: Servers, count: int,
                rate: float) -> Publisher:
    """A tenth more numbers after the dead slot is retired: the survivors take them all."""
    more = Publisher(servers.mqtt_url, servers.site, count + count // 10, rate,
                     start_ns=publisher.start_ns)
    more.acked = list(publisher.acked)
    await more.run(first=count + 1)
    outcome.after_retire = count // 10
    outcome.published = len(more.acked)
    return more


async def _loss_count(servers: Servers, count: int, grace: float) -> tuple[int, int]:
    """(lost, late) of gw-audit once the checker has judged every number (or 3 graces)."""
    from ingest.ledger import SequenceLedger

    deadline = time.monotonic() + 3 * grace + 10
    async with SequenceLedger(servers.state_url, "audit") as ledger:
        while True:
            judged = await ledger.cursor("gw-audit")
            if judged > count or time.monotonic() > deadline:
                lost, late, _ = (await ledger.totals()).get("gw-audit", (0, 0, 0))
                return lost, late
            await asyncio.sleep(0.25)
