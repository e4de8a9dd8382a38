"""Edge to centre: the campus's broker bridged to a central broker, the link cut for 10
minutes at the campus's normal rate (`python -m bench bridge --cut-minutes 10`).

Two real Mosquitto processes, the site's with exactly what `facility broker bridge`
generates (production settings: keepalive 30 s, reconnects 5-60 s, a queue of 2 h of the
site's rate) and the centre's, with a TCP proxy between them (bench/bridge_rig.py). The
campus's 119 devices publish at their report periods (45.5 readings/s) to the site broker,
each with its own sequence numbers; at the centre run the rules engine (the shipped rules,
the simulated screens confirming) and a subscriber that keeps every reading. The cut is a
link that goes quiet (packets dropped, nothing closed), as a WAN fails: the brokers find
out by their keepalives. Checked: every sequence number arrived, each device's in order;
the centre saw the link 1, 0, 1; one site-unreachable alert, raised and cleared, and no
other alert. Reported: how long the centre took to notice, the site broker's memory
during the cut, how long the link took to come back and the backlog to arrive.
"""

from __future__ import annotations

import asyncio
import dataclasses
import shutil
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

from bench.bridge_rig import Listener, Publisher, Rig, audit, link_states
from bench.campus_load import CONFIG_DIR, RULES_DIR
from bench.common import Figure, figure
from bench.procs import rss_mb
from bench.tcpproxy import Mode
from facility import topics
from facility.bridge import site_rate
from facility.catalog import load_catalog
from facility.settings import load_settings
from facility.topics import Kind
from rules.clock import SystemClock
from rules.service import RulesService
from simulators.display_player import DisplayPlayer

SETTLE = 30.0  # s of normal traffic before the cut and after the backlog
MODES: dict[Mode, str] = {
    "close": "refused (connections reset, new ones refused: both brokers see it at once)",
    "blackhole": "gone quiet (nothing passes, nothing closes: the keepalives find out)"}


async def _until(check: Callable[[], bool], timeout: float, what: str) -> float:
    """Wait for check() with a bound; the seconds it took."""
    started = time.monotonic()
    while not check():
        if time.monotonic() - started > timeout:
            raise RuntimeError(f"timed out after {timeout:.0f} s waiting for {what}")
        await asyncio.sleep(0.1)
    return time.monotonic() - started


async def run(quick: bool = False, cut_minutes: float | None = None) -> list[Figure]:
    cut_s = 60 * (cut_minutes if cut_minutes is not None else (1.5 if quick else 10.0))
    folder = Path(tempfile.mkdtemp(prefix="facility-bench-bridge-"))
    figures: list[Figure] = []
    try:
        for mode in MODES:
            print(f"  -- the link {MODES[mode]}", flush=True)
            figures += await _run(folder / mode, cut_s, mode)
    finally:
        shutil.rmtree(folder, ignore_errors=True)
    return figures


async def _run(folder: Path, cut_s: float, mode: Mode) -> list[Figure]:
    settings = load_settings(CONFIG_DIR / "facility.yaml", config_dir=str(CONFIG_DIR),
                             bridge={"tls": False},  # loopback; everything else as shipped
                             state={"url": f"sqlite:///{folder / 'state.sqlite'}"},
                             spool={"dir": str(folder / "spool")})
    catalog = load_catalog(settings)
    site = catalog.site.site.id
    async with Rig(folder / "rig", catalog, settings) as rig:
        assert rig.proxy is not None
        assert rig.site is not None
        centre_settings = settings.model_copy(update={"mqtt": rig.centre_mqtt})
        rules = RulesService(centre_settings, catalog, clock=SystemClock(),
                             rules_dir=RULES_DIR, client_id=f"rules-{site}")
        player = DisplayPlayer.from_config(rig.centre_mqtt, site, rules.endpoints,
                                           speech=False)
        async with Listener(rig.centre_mqtt, topics.subscription(Kind.TELEMETRY, site),
                            topics.link(site, "centre")) as centre, player, rules:
            await player.wait_ready()
            await rules.wait_ready()

            def states() -> list[str]:
                return link_states(centre.messages, site, "centre")
            await _until(lambda: states() == ["1"], 60, "the link up")
            stop = asyncio.Event()
            publisher = Publisher(rig.site_mqtt, catalog)
            task = asyncio.create_task(publisher.run(stop), name="site-publisher")
            try:
                print(f"  {cut_s / 60:g} min cut at {site_rate(catalog):.1f} readings/s; "
                      f"normal traffic for {SETTLE:.0f} s first", flush=True)
                await asyncio.sleep(SETTLE)  # the workload: the campus at its rate
                await rig.proxy.cut(mode)
                cut_at = time.monotonic()
                sent_at_cut = publisher.total
                noticed = await _until(lambda: states() == ["1", "0"], 300,
                                       "the link down at the centre")
                print(f"  the centre heard the link down after {noticed:.1f} s", flush=True)
                peak_rss = rss_mb(rig.site.pid)
                while time.monotonic() - cut_at < cut_s:  # the cut goes on
                    await asyncio.sleep(min(5.0, max(0.0, cut_s - time.monotonic() + cut_at)))
                    peak_rss = max(peak_rss, rss_mb(rig.site.pid))
                queued = publisher.total - sent_at_cut
                engine = rules.engine
                assert engine is not None
                during = [(a.rule, a.active) for a in engine.book.open.values()]
                await rig.proxy.restore()
                back = await _until(lambda: states() == ["1", "0", "1"], 300, "the link up again")
                print(f"  the link was back {back:.1f} s after the restore", flush=True)
                backlog_s = await _until(
                    lambda: audit(publisher.sent, centre.messages).lost == 0, 600,
                    "the backlog at the centre")
                await asyncio.sleep(SETTLE)  # normal traffic again: no stale alarm after
            finally:
                stop.set()
                await task
            await _until(lambda: audit(publisher.sent, centre.messages).lost == 0, 60,
                         "the last readings")
            result = audit(publisher.sent, centre.messages)
            alerts = await rules.store.alerts(site) if rules.store is not None else []
            site_alerts = [a for a in alerts if a.rule == "site-unreachable"]
            others = [f"{a.rule}:{a.source}" for a in alerts if a.rule != "site-unreachable"]
            if result.disorder:
                print(f"  out of order (device:seq<newest before@index): {result.disorder}")
            print(f"  link states at the centre: {states()}; alerts: "
                  f"{[(a.rule, a.source, a.active) for a in alerts]}; open during the cut: "
                  f"{during}", flush=True)
    attempts = _attempts(folder / "rig" / "site" / "mosquitto.log")
    figures = [
        figure("readings sent", result.sent, "msgs"),
        figure("readings queued at the site during the cut", queued, "msgs"),
        figure("readings lost", result.lost, "msgs", at_most=0),
        figure("readings out of order (per device)", result.out_of_order, "msgs",
               at_most=0 if mode == "close" else attempts,
               note="" if mode == "close" else "at most one per reconnection that hung"),
        figure("reconnection attempts of the bridge during the cut", attempts, "tries"),
        figure("readings delivered twice (QoS 1 redelivery)", result.duplicates, "msgs"),
        figure("link states at the centre are 1, 0, 1", float(states() == ["1", "0", "1"]),
               "yes", at_least=1),
        figure("centre heard the link down after", noticed, "s",
               note="keepalive 30 s: 1.5 x, checked every few s"),
        figure("link back after the restore", back, "s", note="reconnect backoff 5-60 s"),
        figure("backlog in at the centre after the link was back", backlog_s, "s"),
        figure("site broker peak RSS during the cut", peak_rss, "MB"),
        figure("site-unreachable alerts raised", len(site_alerts), "alerts", at_least=1),
        figure("site-unreachable alerts beyond the one", max(0, len(site_alerts) - 1),
               "alerts", at_most=0),
        figure("site-unreachable alerts still active", sum(a.active for a in site_alerts),
               "alerts", at_most=0),
        figure("other alerts raised (per device, stale)", len(others), "alerts", at_most=0,
               note=", ".join(others[:5])),
    ]
    return [dataclasses.replace(f, name=f"[{mode}] {f.name}") for f in figures]



def _attempts(log: Path) -> int:
    """The bridge's connection attempts after its first (Mosquitto's log)."""
    lines = log.read_text(errors="replace").splitlines()
    return max(0, sum("Connecting bridge (step 1)" in line for line in lines) - 1)
