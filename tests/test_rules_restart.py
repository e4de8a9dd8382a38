"""Restarts: the broker restarted while the rules engine is down loses nothing queued for
it (persistent sessions, sized queue); the engine restarted goes on with its devices'
last-seen times and its rate()/avg() windows instead of starting them afresh."""

from __future__ import annotations

from pathlib import Path

from facility import messages as m
from facility import topics
from facility.localservers import MosquittoServer
from facility.messages import Family
from facility.settings import Settings
from rules.clock import NS, ManualClock
from tests.conftest import make_settings
from tests.helpers import publish_all
from tests.test_rules_scenarios import START, Campus, rules_only, until

QUEUED = 5000  # readings published while the engine is down (Mosquitto's default keeps 1000)


async def test_broker_restart_while_rules_is_down_loses_nothing(
        tmp_path: Path, own_mosquitto: MosquittoServer) -> None:
    settings = make_settings(tmp_path, own_mosquitto.url, "http://127.0.0.1:9", "unused")
    campus = Campus(settings, tmp_path, ManualClock(START))
    async with rules_only(campus):
        pass  # its two persistent sessions now exist at the broker
    # While it is down: the bollards report (numbered), a detector's data report says
    # ALARM, and the fire panel reports a fire in the canteen.
    site = campus.site_id
    bollards = [f"bollard-s{n:02d}" for n in range(1, 43)]
    readings = []
    for seq in range(1, QUEUED + 1):
        device = bollards[seq % len(bollards)]
        reading = m.Reading(site=site, family=Family.BOLLARD, device=device,
                            ts=START + seq * 1000, seq=seq, gateway="gw-plc-south",
                            values={"state": "up", "hydraulic_pressure": 62.0,
                                    "fault_code": "none"})
        readings.append((topics.telemetry(site, "bollard", device), m.encode(reading)))
    alarm = campus.reading(Family.FIRE, "fd-ebw-01", state="alarm", smoke=0.3)
    event = campus.event("fd-ct-01", "fire_alarm", "饭堂餐厅烟感 火警")
    await publish_all(settings.mqtt, [*readings,
                                      (topics.telemetry(site, "fire", "fd-ebw-01"),
                                       m.encode(alarm)),
                                      (topics.event(site, "fire", "fd-ct-01"), m.encode(event))])
    own_mosquitto.restart()  # a clean stop saves the sessions and their queues
    async with rules_only(campus):
        assert campus.rules is not None
        rules = campus.rules
        wanted = {t for t, _ in readings}
        await until("every queued reading taken in", lambda: sum(
            rules.taken_topics[t] for t in wanted) >= QUEUED, timeout=60)
        assert sum(rules.taken_topics[t] for t in wanted) == QUEUED  # each once
        await until("the alarms raised from what was queued", lambda: {
            a.source for a in campus.open_alerts("fire-detector-alarm")} >= {
            "fd-ebw-01", "fd-ct-01"})
        [from_reading] = [a for a in campus.open_alerts("fire-detector-alarm")
                          if a.source == "fd-ebw-01"]
        history = await campus.store.history(from_reading.id)
        assert history[0]["action"] == "raised" and history[0]["detail"]["reading"] is True
        assert rules.intake.refused == {}


async def test_no_data_timer_goes_on_across_a_restart(settings: Settings, tmp_path: Path) -> None:
    clock = ManualClock(START)
    campus = Campus(settings, tmp_path, clock)
    async with rules_only(campus):
        await campus.advance(600)
        await campus.send(campus.reading(Family.GAS, "gas-septic-1", h2s=1.0, nh3=3.0))
        last = clock.now_ns()
        await campus.advance(11)  # a heartbeat stores the last-seen times
    await clock.advance(2500)  # down for 40 minutes; the sensor's limit is 10 x 300 s
    async with rules_only(campus):
        await campus.advance(61)  # no backlog comes: absence rules judge after the hold
        # 3172 s after the first start, 2572 s after the sensor's last reading: not yet.
        assert not [a for a in campus.open_alerts("device-no-data") if a.source == "gas-septic-1"]
        await campus.advance((last + 3000 * NS - clock.now_ns()) / NS + 1)
        await until("the no-data alert", lambda: [
            a for a in campus.open_alerts("device-no-data") if a.source == "gas-septic-1"])
        [alert] = [a for a in campus.open_alerts("device-no-data")
                   if a.source == "gas-septic-1"]
        assert abs(alert.raised_at - (last + 3000 * NS)) <= 2 * NS  # not restart + 3000 s
        history = await campus.store.history(alert.id)
        assert history[0]["detail"]["since"] == last


async def test_rate_windows_survive_a_restart(settings: Settings, tmp_path: Path) -> None:
    clock = ManualClock(START)
    campus = Campus(settings, tmp_path, clock)
    async with rules_only(campus):
        await campus.send(campus.reading(Family.DRAINAGE, "wl-west-gate", water_level=5.0))
    await clock.advance(120)
    async with rules_only(campus):
        # 5 cm two minutes ago (before the restart), 8 cm now: rising 1.5 cm/min, a warning
        # even at a low level. Without the stored sample the rate is unknown: no alert.
        await campus.send(campus.reading(Family.DRAINAGE, "wl-west-gate", water_level=8.0))
        [alert] = campus.open_alerts("waterlogging")
        assert alert.active and alert.severity.value == "warning"
