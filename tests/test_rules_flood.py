"""A flood of bad messages on every topic the rules engine reads: malformed JSON, payloads
over the size limit, infinite numbers, wrong types, devices the site does not know,
payloads on another device's topic, ids that are no ids. Each is counted by reason, the
ones only the rules engine reads are dead-lettered (up to the rate limit, the rest
counted as dropped), the service keeps running, and fires during the flood still reach
the screens: the test measures that latency and prints it.

The flood comes from a process of its own (this module's `flood`, run with `python -c`),
publishing as fast as a QoS 1 window allows; every bad message carries a marker, so the
dead letters are matched one by one, not counted by eye."""

from __future__ import annotations

import asyncio
import base64
import json
import re
import statistics
import sys
import time
import uuid
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from pydantic import SecretStr

from bench.aioclient import make_client
from facility import messages as m
from facility import topics
from facility.deadletters import QUARANTINED
from facility.localservers import MosquittoServer
from facility.messages import Family
from facility.mqttlink import MqttLink
from facility.settings import MqttSettings
from facility.topics import Kind
from rules.clock import SystemClock
from tests.conftest import REPO, make_settings
from tests.helpers import Collector
from tests.test_rules_scenarios import Campus, rules_only, until

FLOOD = 12_000  # bad messages
FLOOD_RATE = 2_000  # a second
BUILDING_DETECTORS = ["fd-ct-01", "fd-ct-02", "fd-mb-01"]  # fires here involve no correlation


def bad_messages(site: str, count: int) -> tuple[list[tuple[str, bytes]], Counter[str], int]:
    """The flood: (topic, payload) pairs, the refusals each reason must count, and how
    many must be dead-lettered (the rest of those: dropped by the rate limit)."""
    now = time.time_ns()
    reading = {"site": site, "family": "fire", "device": "fd-ebw-02", "ts": now,
               "values": {"smoke": 0.01, "state": "normal"}}
    fire = topics.telemetry(site, "fire", "fd-ebw-02")
    kinds: list[tuple[str, str, bool, Any]] = [
        # (topic, reason, lettered, payload(marker))
        (fire, "contract", False, lambda k: b'{"marker": "' + k + b'", "values": {'),
        (fire, "oversized", False, lambda k: b'{"marker": "' + k + b'", "pad": "'
         + b"x" * 70_000 + b'"}'),
        (fire, "contract", False, lambda k: json.dumps(
            {**reading, "values": {"smoke": 1, "note": k.decode()}}).encode().replace(
                b'"smoke": 1', b'"smoke": 1e999')),
        (fire, "contract", False, lambda k: json.dumps(
            {**reading, "values": {"smoke": [k.decode()]}}).encode()),
        (topics.telemetry(site, "fire", "ghost-1"), "unknown_device", False,
         lambda k: json.dumps({**reading, "device": "ghost-1",
                               "values": {"state": k.decode()}}).encode()),
        (topics.telemetry(site, "fire", "fd-ebw-03"), "mismatch", False,
         lambda k: json.dumps({**reading, "values": {"state": k.decode()}}).encode()),
        (f"{topics.PREFIX}/{site}/telemetry/fire/bad$id", "topic", False,
         lambda k: k),
        (topics.event(site, "fire", "fd-ebw-02"), "contract", False,
         lambda k: b'{"name": "fire_alarm", "marker": "' + k + b'"}'),
        (topics.status(site, "fire", "fd-ebw-02"), "contract", False,
         lambda k: json.dumps({"state": ["offline", k.decode()]}).encode()),
        (topics.display_ack(site, "led-west-gate"), "contract", True,
         lambda k: b"\xff\xfe" + k),
        (topics.display_ack(site, "led-west-gate"), "contract", True,
         lambda k: json.dumps({"site": site, "endpoint": "led-west-gate", "message": 5,
                               "ts": now, "note": k.decode()}).encode()),
        (topics.command(site, "bollard", "bollard-plc-south"), "contract", True,
         lambda k: b'{"action": "raise_all", "marker": "' + k + b'"}'),
        (topics.command(site, "alert", "al-x"), "contract", True,
         lambda k: b'{"action": "acknowledge", "marker": "' + k + b'"}'),
        (topics.command(site, "alert", "al-x"), "mismatch", True,
         lambda k: json.dumps({"id": "op-1", "site": "elsewhere", "action": "acknowledge",
                               "target": "al-x", "by": k.decode(), "ts": now}).encode()),
        (topics.command_result(site, "bollard", "bollard-plc-south"), "contract", True,
         lambda k: b'[' + k + b']'),
    ]
    out = []
    reasons: Counter[str] = Counter()
    letters = 0
    for n in range(count):
        topic, reason, lettered, payload = kinds[n % len(kinds)]
        if reason == "oversized" and n % (len(kinds) * 20) >= len(kinds):
            topic, reason, lettered, payload = kinds[0]  # one in 20 rounds: 20 MB is plenty
        out.append((topic, payload(f"flood-{n}".encode())))
        reasons[reason] += 1
        letters += lettered
    return out, reasons, letters


def flood(url: str, site: str, count: int, rate: float) -> None:
    """Run in a process of its own: publish the flood at `rate` a second, QoS 1."""
    async def main() -> None:
        messages, _, _ = bad_messages(site, count)
        step = 100
        async with await MqttLink.open(MqttSettings(url=SecretStr(url)),
                                       f"flood-{uuid.uuid4().hex[:6]}") as link:
            started = time.monotonic()
            for start in range(0, len(messages), step):
                await asyncio.gather(*(link.publish(t, p, qos=1)
                                       for t, p in messages[start:start + step]))
                ahead = started + (start + step) / rate - time.monotonic()
                if ahead > 0:
                    await asyncio.sleep(ahead)
        print("flood sent", flush=True)
    asyncio.run(main())


async def fire_latency(campus: Campus, mqtt: MqttSettings, device: str) -> float:
    """Publish a detector's ALARM reading; seconds until every screen shows the evacuation.
    Then the detector is normal again and the alert acknowledged; screens back to normal."""
    assert campus.rules is not None and campus.rules.engine is not None
    site = campus.site_id
    shown: dict[str, float] = {}
    started = 0.0

    async def watch(client: Any) -> None:
        async for message in client.messages:
            display = m.decode(message.payload, m.DisplayMessage)
            if started and display.kind is m.DisplayKind.EMERGENCY:
                shown.setdefault(display.display, time.perf_counter())

    async with make_client(mqtt, f"probe-{uuid.uuid4().hex[:6]}") as client:
        await client.subscribe(topics.subscription(Kind.DISPLAY, site), qos=1)
        watcher = asyncio.create_task(watch(client))
        try:
            await asyncio.sleep(0.1)  # the retained normal contents go by
            reading = m.Reading(site=site, family=Family.FIRE, device=device,
                                ts=time.time_ns(), values={"state": "alarm", "smoke": 0.3})
            started = time.perf_counter()
            await client.publish(topics.telemetry(site, "fire", device), m.encode(reading),
                                 qos=1)
            await until("the evacuation on every screen", lambda: len(shown) == 13)
            latency = max(shown.values()) - started
            normal = m.Reading(site=site, family=Family.FIRE, device=device,
                               ts=time.time_ns(), values={"state": "normal", "smoke": 0.01})
            await client.publish(topics.telemetry(site, "fire", device), m.encode(normal),
                                 qos=1)
        finally:
            watcher.cancel()
            await asyncio.gather(watcher, return_exceptions=True)
    rules = campus.rules
    await until("the fire alert cleared", lambda: not any(
        a.active for a in campus.open_alerts("fire-detector-alarm") if a.source == device))
    for alert in campus.open_alerts("fire-detector-alarm"):
        await rules.operate(m.AlertAction.ACKNOWLEDGE, alert.id, "值班员")
    await until("no fire alert left", lambda: not campus.open_alerts("fire-detector-alarm"))
    return latency


def marker(letter: m.DeadLetter) -> str:
    text = base64.b64decode(letter.payload).decode("utf-8", "replace") \
        if letter.payload_encoding == "base64" else letter.payload
    found = re.search(r"flood-\d+", text)
    return found.group(0) if found else ""


@pytest.fixture
def nodelay_broker(tmp_path: Path) -> Iterator[MosquittoServer]:
    """A broker as the campus runs it: set_tcp_nodelay, or a burst of 13 display messages
    to one client waits 40 ms for a delayed TCP acknowledgement (measured)."""
    server = MosquittoServer(tmp_path / "mosquitto", extra_config="max_queued_messages 100000\n"
                             "set_tcp_nodelay true\n")
    server.start()
    yield server
    server.stop()


@pytest.mark.servers
async def test_flood_of_bad_messages(tmp_path: Path, nodelay_broker: MosquittoServer) -> None:
    # Fires one after another: no anti-flap hold between them (it would keep the last
    # evacuation up, and the next fire would join its incident instead of being timed).
    settings = make_settings(tmp_path, nodelay_broker.url, "http://127.0.0.1:9", "unused",
                             rules={"incident_hold": 0.0})
    campus = Campus(settings, tmp_path, SystemClock())
    _, reasons, letters = bad_messages(campus.site_id, FLOOD)
    async with rules_only(campus), Collector(
            settings.mqtt, topics.deadletter(campus.site_id, "rules")) as dead:
        assert campus.rules is not None
        rules = campus.rules
        calm = [await fire_latency(campus, settings.mqtt, d) for d in BUILDING_DETECTORS]
        publisher = await asyncio.create_subprocess_exec(
            sys.executable, "-c", "import sys; from tests.test_rules_flood import flood; "
            "flood(sys.argv[1], sys.argv[2], int(sys.argv[3]), float(sys.argv[4]))",
            settings.mqtt.url.get_secret_value(), campus.site_id, str(FLOOD), str(FLOOD_RATE),
            stdout=asyncio.subprocess.PIPE, cwd=str(REPO))
        during: list[float] = []
        try:
            await until("the flood under way", lambda: sum(rules.intake.refused.values()) > 100)
            n = 0
            while sum(rules.intake.refused.values()) < FLOOD * 0.8 and n < 30:
                during.append(await fire_latency(campus, settings.mqtt,
                                                 BUILDING_DETECTORS[n % 3]))
                n += 1
            assert publisher.stdout is not None
            assert b"flood sent" in await asyncio.wait_for(publisher.stdout.read(), 120)
        finally:
            if publisher.returncode is None:
                publisher.kill()
            await publisher.wait()
        await until("every bad message counted",
                    lambda: sum(rules.intake.refused.values()) >= FLOOD, timeout=60)
        assert dict(rules.intake.refused) == dict(reasons)
        await until("every dead letter published", lambda: len(dead.messages)
                    + rules.intake.dropped >= letters, timeout=30)
        got = dead.decoded(m.DeadLetter)
        lettered = [marker(d) for d in got]
        assert len(got) + rules.intake.dropped == letters
        assert len(set(lettered)) == len(got) and "" not in lettered  # each once, all ours
        assert all(d.source == "rules" and d.reason for d in got)
        assert rules.failed is None and rules.intake.refused["failed"] == 0
        assert rules.letters.of_kind(QUARANTINED) == 0  # no bug met on any of them
        after = await fire_latency(campus, settings.mqtt, BUILDING_DETECTORS[0])
    assert during, "no fire was timed during the flood"
    print(f"\nfire -> 13 screens: calm {statistics.median(calm) * 1000:.0f} ms (median of "
          f"{len(calm)}); during a flood of {FLOOD} bad messages at {FLOOD_RATE}/s: median "
          f"{statistics.median(during) * 1000:.0f} ms, max {max(during) * 1000:.0f} ms "
          f"({len(during)} fires); after: {after * 1000:.0f} ms; refused {dict(reasons)}; "
          f"dead letters {len(got)}, held back by the rate limit {rules.intake.dropped}")
    assert max(during) < 2.0  # generous: the flood shares the machine's two cores
