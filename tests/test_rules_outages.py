"""Alarms through outages of the data path itself (on the real broker, a clock the test
drives): a gateway's last will does not skip the offline hold."""

from __future__ import annotations

from pathlib import Path

from facility.messages import Availability, DeviceStatus, Family
from facility.settings import Settings
from rules.clock import NS, ManualClock
from tests.test_rules_scenarios import START, Campus, running, until


def gateway_status(campus: Campus, state: Availability, ts: int, reason: str) -> DeviceStatus:
    return DeviceStatus(site=campus.site_id, family=Family.GATEWAY, device="gw-iot", ts=ts,
                        state=state, reason=reason, gateway="gw-iot")


async def test_a_last_will_waits_for_the_offline_hold(settings: Settings,
                                                      tmp_path: Path) -> None:
    """The will carries the time the gateway connected (long ago for a gateway that was
    up for hours); the offline time is when it arrives, so a 10-second blip raises
    nothing and a real outage raises after the rule's 60 s, not at once."""
    clock = ManualClock(START)
    campus = Campus(settings, tmp_path, clock)
    connected = START - 1 * NS  # the will is built just before the connection is made
    async with running(campus):
        await campus.send(gateway_status(campus, Availability.ONLINE, START, "running"))
        await campus.advance(3600)  # up for an hour
        await campus.send(gateway_status(campus, Availability.OFFLINE, connected,
                                         "connection lost"))
        await campus.advance(10)
        back = campus.now()
        await campus.send(gateway_status(campus, Availability.ONLINE, back, "running"))
        await campus.advance(120)
        assert campus.open_alerts("gateway-offline") == []
        # A real outage: nothing before the hold, the alert after it.
        reconnected = back - 1 * NS  # the new connection's will
        await campus.advance(3600)
        await campus.send(gateway_status(campus, Availability.OFFLINE, reconnected,
                                         "connection lost"))
        await campus.advance(59)
        assert campus.open_alerts("gateway-offline") == []
        await campus.advance(2)
        await until("the gateway alert", lambda: campus.open_alerts("gateway-offline"))
