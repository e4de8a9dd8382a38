"""The district benchmark's parts, kept short: the synthetic sites validate as a sites
folder with the campus's rules (bollard rules left out), and the district load (its own
process, as `python -m bench district` starts it) publishes canonical readings on a real
Mosquitto, each gateway's numbers without a gap, at the profile's rate."""

from __future__ import annotations

import asyncio
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Awaitable, Callable
from pathlib import Path

from bench.bench_district import rules_commands, rules_folder
from bench.district_load import CYCLE, readings_of, schedule
from facility import messages as m
from facility.catalog import load_district
from facility.localservers import MosquittoServer
from facility.settings import load_settings
from facility.site import load_site
from facility.topics import Kind, subscription
from facility.topology import Topology
from rules.config import load_rules, rule_files
from simulators.site_profile import PROFILE, write_site, write_sites
from tests.helpers import Collector, eventually

REPO = Path(__file__).resolve().parent.parent


def test_the_synthetic_sites_are_a_valid_district_with_the_campus_rules(tmp_path: Path) -> None:
    ids = write_sites(tmp_path / "sites", 3)
    settings = load_settings(REPO / "config" / "facility.yaml",
                             sites_dir=tmp_path / "sites")
    district = load_district(settings)
    assert list(district) == ids == ["site-01", "site-02", "site-03"]
    one = district["site-02"]
    assert {g.id for g in one.site.gateways} >= {"site-02-gw-energy", "site-02-gw-iot"}
    kinds = Counter(d.kind for d in one.site.devices)
    assert all(kinds[kind] >= count for kind, count in PROFILE.items())
    assert "bollard" not in {d.family for d in one.site.devices}
    rules = load_rules(rule_files(rules_folder(tmp_path)), Topology(one), one.endpoints)
    assert "fire-detector-alarm" in rules.rules
    assert not any(rule_id.startswith("bollard") for rule_id in rules.rules)
    # The lease workers: each offered every site, the leases deal them out.
    argv = rules_commands(tmp_path / "facility.yaml", ids, 2)
    assert [a[0][a[0].index("--sites") + 1] for a in argv] == [",".join(ids)] * 2
    assert all(a[0][-4:-2] == ["rules", "workers"] for a in argv)


async def test_the_district_load_numbers_each_gateway_and_keeps_the_rate(
        tmp_path: Path, mosquitto_server: MosquittoServer) -> None:
    site_file = write_site(tmp_path / "site.yaml")
    devices = readings_of(load_site(site_file), "x").devices
    speed = 200.0  # two sites: about 2,000 readings/s
    rate = len(schedule(devices)) / CYCLE * 2 * speed
    mqtt = load_settings(REPO / "config" / "facility.yaml",
                         mqtt={"url": mosquitto_server.url}).mqtt
    sites = ["load-a", "load-b"]
    async with Collector(mqtt, *(subscription(Kind.TELEMETRY, s) for s in sites)) as got:
        load = subprocess.Popen(  # noqa: ASYNC220 (the load runs beside the test's loop)
            [sys.executable, "-m", "bench.district_load", "steady", str(site_file), "--url",
             mosquitto_server.url, "--sites", ",".join(sites), "--speed", str(speed),
             "--status", str(tmp_path / "status")], cwd=REPO)
        try:
            started = time.monotonic()
            await eventually(lambda: asyncio.sleep(0, len(got.messages)),
                             lambda n: n >= rate * 2, 30, "two seconds of readings")
            elapsed = time.monotonic() - started
        finally:
            load.terminate()
            load.wait(10)
        # What the broker still had on its way to the collector comes in before it is read.
        await eventually(_settled(got), bool, 10, "the last readings to arrive")
    readings = [m.decode(payload, m.Reading) for _, payload in got.messages]
    assert {r.site for r in readings} == set(sites)
    numbers: dict[str, list[int]] = {}
    for r in readings:
        assert r.gateway == f"{r.site}-gw-{'energy' if r.family.value == 'energy' else 'iot'}"
        numbers.setdefault(r.gateway, []).append(r.seq)
    for gateway, seqs in numbers.items():
        assert sorted(seqs) == list(range(1, len(seqs) + 1)), \
            (gateway, len(seqs), [s for i, s in enumerate(sorted(seqs)) if s != i + 1][:10])
    # Not faster than asked (the start-up is in `elapsed`, so only an upper bound holds).
    assert len(readings) <= rate * elapsed * 1.1 + 200


def _settled(got: Collector) -> Callable[[], Awaitable[bool]]:
    """A probe: true once no message arrived since the previous probe (0.1 s apart)."""
    seen = [-1]

    async def probe() -> bool:
        count, seen[0] = seen[0], len(got.messages)
        return count == seen[0]
    return probe
