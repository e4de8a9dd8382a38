"""The district's devices, in a process of their own: canonical readings of N synthetic
sites (simulators/site_profile.py), each device at its own period.

Two modes:

- `steady`: every device of every site at its report period divided by `--speed` (a meter
  every 10 s, a detector every 60 s, ... at speed 1), fresh time and sequence number in
  each message, QoS 1, until stopped; writes 'sent acked seconds' to a status file every
  second (as the alert-latency load does).
- `burst`: `--count` readings of the sites' devices round robin, encoded first, published
  as fast as the broker takes them (bench/loadgen.py's publisher), for the 1 -> 2 worker
  runs; prints one JSON line of figures.

    python -m bench.district_load steady CONFIG --sites site-01,site-02 --speed 30 --status F
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import signal
import sys
import time
import uuid
from pathlib import Path

import mqtt5
import msgspec
from pydantic import SecretStr

from bench.bench_alert_latency import CountingLink, report
from bench.campus_load import Device, Readings, catalog_of
from bench.loadgen import publish
from facility import topics
from facility.settings import MqttSettings
from facility.site import SiteConfig, load_site, site_for
from facility.topology import Topology

CYCLE = 300.0  # s: the longest report period; every device reports a whole number of times


def gateway_of(site_id: str, device: Device) -> str:
    """The synthetic site's gateway of a device (simulators/site_profile.py names them)."""
    return f"{site_id}-gw-energy" if device.family == "energy" else f"{site_id}-gw-iot"


def readings_of(site: SiteConfig, site_id: str, seed: int = 7) -> Readings:
    one = site_for(site, site_id)
    return Readings(one, Topology(catalog_of(one)), seed=seed)


def schedule(devices: list[Device]) -> list[tuple[float, int]]:
    """One cycle of CYCLE seconds: (offset, device index) for every report, in time order;
    each device's reports are spread evenly from a phase of its own."""
    out = []
    for n, device in enumerate(devices):
        period = min(device.period, CYCLE)
        phase = (n * 0.6180339887 % 1.0) * period
        reports = round(CYCLE / period)
        out += [((phase + k * period) % CYCLE, n) for k in range(reports)]
    return sorted(out)


def rate_of(site: SiteConfig, sites: int, speed: float,
            skip: frozenset[str] = frozenset()) -> float:
    """Messages/s the steady load offers."""
    devices = [d for d in readings_of(site, "x").devices if d.id not in skip]
    return len(schedule(devices)) / CYCLE * sites * speed


async def steady(urls: list[str], site_file: Path, sites: list[str], speed: float,
                 skip: set[str], status: Path) -> None:
    """`urls`: the broker of each site (its own, bridged to the centre), or one for all."""
    site = load_site(site_file)
    feeds = [readings_of(site, s) for s in sites]
    devices = [d for d in feeds[0].devices if d.id not in skip]
    plan = schedule(devices)
    # A few sets of normal values per device and site (values change from one reading to
    # the next, as they do); time and sequence number are fresh in every message.
    pools = [[[f.values(f.by_id[d.id]) for _ in range(4)] for d in devices] for f in feeds]
    # Each reading from its site's gateway, numbered per gateway as a gateway numbers
    # them (ingest's loss count judges the numbers of each gateway).
    gateways = [[gateway_of(f.site_id, d) for d in devices] for f in feeds]
    envelopes = [[{"site": f.site_id, "family": d.family, "device": d.id, "tags": d.tags,
                   "gateway": gateways[k][n], "v": 1} for n, d in enumerate(devices)]
                 for k, f in enumerate(feeds)]
    numbers: dict[str, int] = {}
    topic = [[topics.telemetry(f.site_id, d.family, d.id) for d in devices] for f in feeds]
    encode = msgspec.json.Encoder().encode
    opened: dict[str, CountingLink] = {}
    for url in dict.fromkeys(urls):
        link = await CountingLink.open(MqttSettings(url=SecretStr(url)),
                                       f"district-load-{uuid.uuid4().hex[:6]}")
        assert isinstance(link, CountingLink)
        assert link.transport is not None
        opened[url] = link
    links = [opened[urls[k] if len(urls) > 1 else urls[0]] for k in range(len(sites))]
    per_cycle = len(plan) * len(sites)
    rate = per_cycle / CYCLE * speed
    seq = [[0] * len(devices) for _ in sites]
    sent = packet_id = 0
    started = last_report = time.monotonic()
    while True:
        due = int((time.monotonic() - started) * rate)
        now = time.time_ns()
        chunks: dict[int, list[bytes]] = {}
        while sent < due:
            step = sent % per_cycle
            s, n = step % len(sites), plan[step // len(sites)][1]
            seq[s][n] += 1
            gateway = gateways[s][n]
            numbers[gateway] = number = numbers.get(gateway, 0) + 1
            body = dict(envelopes[s][n], ts=now, seq=number,
                        values=pools[s][n][seq[s][n] % 4])
            packet_id = packet_id % 65535 + 1
            chunks.setdefault(id(links[s]), []).append(mqtt5.PublishPacket(
                topic=topic[s][n], payload=encode(body), qos=mqtt5.QoS.AT_LEAST_ONCE,
                packet_id=packet_id).write())
            sent += 1
        for link in opened.values():
            if id(link) in chunks:
                assert link.transport is not None
                link.transport.write(b"".join(chunks[id(link)]))
            if link.closed.done():
                raise RuntimeError("the broker closed the district load's connection")
        if time.monotonic() - last_report >= 1:
            last_report = time.monotonic()
            acked = sum(link.acked for link in opened.values())
            report(status, f"{sent} {acked} {last_report - started:.3f}")
        await asyncio.sleep(0.01)


def burst_packets(site_file: Path, sites: list[str], count: int,
                  marker: bool = False) -> list[bytes]:
    """`count` readings, the sites' devices round robin, encoded; with `marker`, a smoke
    detector's alarm of each site after them."""
    site = load_site(site_file)
    feeds = [readings_of(site, s) for s in sites]
    devices = feeds[0].devices
    encode = msgspec.json.Encoder().encode
    start = time.time_ns()
    out = []
    numbers: dict[str, int] = {}
    for i in range(count):
        f = feeds[i % len(feeds)]
        d = devices[(i // len(feeds)) % len(devices)]
        gateway = gateway_of(f.site_id, d)
        numbers[gateway] = numbers.get(gateway, 0) + 1
        body = {"site": f.site_id, "family": d.family, "device": d.id, "tags": d.tags,
                "gateway": gateway, "v": 1, "ts": start + i * 1000, "seq": numbers[gateway],
                "values": f.values(f.by_id[d.id])}
        out.append(mqtt5.PublishPacket(topic=f.topics[d.id], payload=encode(body),
                                       qos=mqtt5.QoS.AT_LEAST_ONCE,
                                       packet_id=i % 65535 + 1).write())
    if marker:
        # Last, a smoke detector's alarm per site: its alert says the site's worker has
        # taken everything before it (one connection, in order).
        detector = next(d for d in devices if d.kind == "smoke_detector")
        for k, f in enumerate(feeds):
            gateway = gateway_of(f.site_id, detector)
            numbers[gateway] = numbers.get(gateway, 0) + 1
            body = {"site": f.site_id, "family": "fire", "device": detector.id,
                    "tags": detector.tags, "gateway": gateway, "v": 1, "ts": time.time_ns(),
                    "seq": numbers[gateway],
                    "values": {"state": "alarm", "smoke": 0.25, "temperature": 27.0}}
            out.append(mqtt5.PublishPacket(topic=f.topics[detector.id], payload=encode(body),
                                           qos=mqtt5.QoS.AT_LEAST_ONCE,
                                           packet_id=(count + k) % 65535 + 1).write())
    return out


def main() -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.district_load")
    parser.add_argument("mode", choices=["steady", "burst"])
    parser.add_argument("site_file", type=Path)
    parser.add_argument("--url", required=True,
                        help="the broker; steady: one per site, comma-separated, or one")
    parser.add_argument("--sites", required=True, help="comma-separated site ids")
    parser.add_argument("--speed", type=float, default=1.0)
    parser.add_argument("--skip", default="", help="device ids left out (probes)")
    parser.add_argument("--status", type=Path)
    parser.add_argument("--count", type=int, default=100_000)
    parser.add_argument("--marker", action="store_true",
                        help="burst: end with a smoke detector's alarm of each site")
    args = parser.parse_args()
    sites = args.sites.split(",")
    if args.mode == "burst":
        data = burst_packets(args.site_file, sites, args.count, args.marker)
        print(json.dumps(asyncio.run(publish(args.url, data, 1, 20_000, 0.0))), flush=True)
        return 0
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    with contextlib.suppress(KeyboardInterrupt, asyncio.CancelledError):
        asyncio.run(steady(args.url.split(","), args.site_file, sites, args.speed,
                           set(filter(None, args.skip.split(","))), args.status))
    return 0


if __name__ == "__main__":
    sys.exit(main())
