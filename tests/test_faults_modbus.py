"""Modbus faults created through a TCP proxy of our own in front of the simulated devices:
slow answers and lost replies keep every call bounded and the other devices on their
rate; the device goes offline and comes back by itself; a bollard command whose reply
is lost takes effect at most once."""

from __future__ import annotations

import time
import uuid
from contextlib import AsyncExitStack
from datetime import datetime
from zoneinfo import ZoneInfo

import pytest

from facility import messages as m
from facility import topics
from facility.messages import (
    Availability,
    Command,
    CommandResult,
    CommandStatus,
    DeviceStatus,
    Family,
    Quality,
    Reading,
)
from facility.settings import Settings
from facility.site import SiteConfig, load_site
from gateway.service import Gateway
from simulators.campus import Campus
from simulators.clock import SimClock
from tests.conftest import SITE_FILE, catalog
from tests.faults import TcpProxy
from tests.helpers import Collector, eventually, publish_all

pytestmark = pytest.mark.slow
SITE = "panyu-admin-centre"
NIGHT = datetime(2026, 11, 25, 2, 0, tzinfo=ZoneInfo("Asia/Shanghai")).timestamp()


def through_proxy(site: SiteConfig, host_port: tuple[str, int], proxy_port: int,
                  period: float, timeout: float) -> SiteConfig:
    """The site with the devices behind host_port reached through the proxy, polled fast."""
    devices = []
    for d in site.devices:
        if d.modbus is not None:
            endpoint = d.modbus.model_copy(update={"period": period, "timeout": timeout,
                                                   "offline_after": 2})
            if (d.modbus.host, d.modbus.port) == host_port:
                endpoint = endpoint.model_copy(update={"port": proxy_port})
            d = d.model_copy(update={"modbus": endpoint})
        devices.append(d)
    return site.model_copy(update={"devices": devices})


async def test_slow_and_lost_replies_stay_bounded(settings: Settings) -> None:
    site = load_site(SITE_FILE)
    clock = SimClock(scale=0)
    async with AsyncExitStack() as stack:
        campus = await stack.enter_async_context(Campus(
            site, settings.mqtt, clock=clock, seed=5, use_config_ports=False,
            families={Family.ENERGY}))
        main_room = next(d.modbus for d in campus.site.devices if d.id == "em-main-total")
        assert main_room is not None
        proxy = await stack.enter_async_context(TcpProxy(main_room.host, main_room.port))
        tuned = through_proxy(campus.site, (main_room.host, main_room.port), proxy.port,
                              period=0.25, timeout=0.3)
        readings = await stack.enter_async_context(
            Collector(settings.mqtt, topics.subscription(topics.Kind.TELEMETRY, SITE, "energy")))
        statuses = await stack.enter_async_context(
            Collector(settings.mqtt, topics.subscription(topics.Kind.STATUS, SITE, "energy")))
        gateway = await stack.enter_async_context(Gateway(settings, catalog(tuned), "gw-energy"))
        await gateway.wait_ready()
        meters = {d.id for d in tuned.devices_of("gw-energy")}
        behind = {d.id for d in tuned.devices_of("gw-energy") if d.modbus
                  and d.modbus.port == proxy.port}
        others = meters - behind

        def good(ids: set[str]) -> dict[str, int]:
            counts = dict.fromkeys(ids, 0)
            for r in readings.decoded(Reading):
                if r.device in counts and r.quality is Quality.GOOD:
                    counts[r.device] += 1
            return counts

        def state(device: str) -> Availability | None:
            seen = [s.state for s in statuses.decoded(DeviceStatus) if s.device == device]
            return seen[-1] if seen else None

        async def all_online() -> bool:
            return all(state(d) is Availability.ONLINE for d in behind | others)

        await eventually(all_online, bool, 20, "every meter online")

        # Slow answers, within the timeout: still good readings, a bit late.
        proxy.mode, proxy.delay = "delay", 0.1
        start = good(behind)
        await eventually(lambda: _at(good(behind)), lambda c: all(
            c[d] > start[d] + 2 for d in behind), 20, "good readings through a slow link")

        # Replies lost: each call ends at its timeout, the devices go offline, the other
        # hosts keep their rate.
        proxy.mode = "drop_replies"
        lost_at = time.monotonic()
        before = good(others)

        async def offline() -> bool:
            return all(state(d) is Availability.OFFLINE for d in behind)

        await eventually(offline, bool, 15, "the meters behind the proxy offline")
        took = time.monotonic() - lost_at
        others_after = good(others)
        window = time.monotonic() - lost_at
        rates = [(others_after[d] - before[d]) / window for d in others]
        assert min(rates) > 0.5 * (1 / 0.25), f"other hosts slowed down: {rates}"
        assert proxy.dropped_replies > 0

        # The link comes back: so do the devices, by themselves.
        proxy.mode = "pass"
        await eventually(all_online, bool, 30, "the meters back online")
    # offline_after=2 polls of 0.25 s, each bounded by its 0.3 s timeout: a few seconds at
    # most even with a reconnect in between.
    assert took < 8.0, took
    print(f"offline after {took:.1f}s of lost replies; other hosts kept {min(rates):.1f} polls/s")


async def _at(value: dict[str, int]) -> dict[str, int]:
    return value


async def test_command_whose_reply_is_lost_acts_once(settings: Settings) -> None:
    """The write reaches the PLC but its reply is lost: the gateway reads the sequence
    back instead of writing again, and the bollard moves exactly once."""
    site = load_site(SITE_FILE)
    clock = SimClock(start=NIGHT, scale=4.0)
    async with AsyncExitStack() as stack:
        campus = await stack.enter_async_context(Campus(
            site, settings.mqtt, clock=clock, seed=3, use_config_ports=False,
            families={Family.BOLLARD}))
        plc_endpoint = next(d.modbus for d in campus.site.devices if d.id == "bollard-plc-south")
        assert plc_endpoint is not None
        proxy = await stack.enter_async_context(TcpProxy(plc_endpoint.host, plc_endpoint.port))
        tuned = through_proxy(campus.site, (plc_endpoint.host, plc_endpoint.port), proxy.port,
                              period=1.0, timeout=0.5)
        results = await stack.enter_async_context(
            Collector(settings.mqtt, topics.subscription(topics.Kind.COMMAND_RESULT, SITE)))
        gateway = await stack.enter_async_context(Gateway(settings, catalog(tuned), "gw-plc-south"))
        await gateway.wait_ready()
        plc = campus.plc()
        cycles_before = plc.snapshot()["units"][20]["cycle_count"]
        # Lower it first, normally.
        await _command(settings, "lower", "bollard-s20", results)
        assert plc.snapshot()["units"][20]["state"] == "down"
        # Now lose the replies to writes (function 16) and nothing else: the PLC acts on
        # the write, the gateway never hears that it did.
        writes_seen = plc.cmd_seq
        proxy.reply_filter = lambda frame: len(frame) > 7 and frame[7] == 0x10
        proxy.mode = "drop_replies"
        command_id = uuid.uuid4().hex
        await _send(settings, "raise", "bollard-s20", command_id)
        await eventually(lambda: _at({"seq": plc.cmd_seq}), lambda v: v["seq"] != writes_seen,
                         10, "the PLC to receive the write")
        outcome = await _outcome(results, command_id)
        dropped = proxy.dropped_replies
    assert dropped == 1, "exactly one write, whose reply was lost: no blind retry"
    assert [r.status for r in outcome][-1] is CommandStatus.DONE
    assert plc.snapshot()["units"][20]["state"] == "up"
    # Lowered once and raised once: exactly one more completed raise cycle.
    assert plc.snapshot()["units"][20]["cycle_count"] == cycles_before + 1


async def _send(settings: Settings, action: str, device: str, command_id: str) -> None:
    now = time.time_ns()
    command = Command(id=command_id, site=SITE, family=Family.BOLLARD, device=device,
                      action=action, issued_at=now, expires_at=now + 60 * 10**9,
                      issued_by="test-supervisor", reason="故障演练")
    await publish_all(settings.mqtt, [(topics.command(SITE, "bollard", device),
                                       m.encode(command))])


async def _outcome(results: Collector, command_id: str) -> list[CommandResult]:
    final = {s for s in CommandStatus if s is not CommandStatus.ACCEPTED}

    async def mine() -> list[CommandResult]:
        return [r for r in results.decoded(CommandResult) if r.id == command_id]

    return await eventually(mine, lambda rs: any(r.status in final for r in rs), 40,
                            f"the outcome of {command_id}")


async def _command(settings: Settings, action: str, device: str,
                   results: Collector) -> list[CommandResult]:
    command_id = uuid.uuid4().hex
    await _send(settings, action, device, command_id)
    return await _outcome(results, command_id)
