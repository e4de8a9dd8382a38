"""ISA-18.2 figures (rules.health) against a recorded storm in a real state store: what the
operator was shown is counted, not every 'raised' row (an alarm raised and suppressed in
the same step never reached a screen); the worst 10 minutes is a sliding window and the
flood periods are aligned to the clock, so the same history gives the same figures
whenever it is asked. The storm's figures are worked out by hand here."""

from __future__ import annotations

import uuid
from collections import Counter
from datetime import datetime
from itertools import groupby
from zoneinfo import ZoneInfo

from facility.messages import Availability, DeviceStatus, Family, Severity
from rules.alerts import Alert, Transition
from rules.engine import Effects
from rules.health import AlarmHealth, alarm_health, worst_window
from rules.store import AlertStore
from tests.test_rules_store import T0, build

TZ = ZoneInfo("Asia/Shanghai")
NS = 10**9
MIN = 60 * NS


def at(hour: int, minute: int = 0, second: int = 0, day: int = 21) -> int:
    return int(datetime(2026, 11, day, hour, minute, second, tzinfo=TZ).timestamp()) * NS


class Storm:
    """Alerts and their transitions as AlertBook._record writes them: each transition from
    the state the alert was in to the state after it, those of one step with one ts."""

    def __init__(self, site: str) -> None:
        self.site = site
        self.alerts: dict[str, Alert] = {}
        self.state: dict[str, str] = {}
        self.rows: list[Transition] = []

    def alarm(self, aid: str, rule: str, source: str, priority: int, raised: int,
              to: str = "active_unack", category: str = "alarm") -> None:
        self.alerts[aid] = Alert(id=aid, site=self.site, rule=rule, source=source,
                                 severity=Severity.MAJOR, priority=priority,
                                 category=category, raised_at=raised)
        self.state[aid] = "normal"
        if to == "suppressed":  # raised, then suppressed by the suppress stage of the step
            self.go(aid, raised, "raised", "active_unack")
            self.go(aid, raised, "suppressed", "suppressed")
        else:  # a shelved or out-of-service point's alert is raised in that state
            self.go(aid, raised, "raised", to)

    def go(self, aid: str, ts: int, action: str, to: str) -> None:
        self.rows.append(Transition(aid, self.site, ts, action, self.state[aid], to))
        self.state[aid] = to
        a = self.alerts[aid]
        if action == "acknowledged":
            a.acknowledged, a.acked_at = True, ts
        elif action == "cleared":
            a.active, a.cleared_at = False, ts
        elif action == "closed":
            a.closed_at = ts

    def close(self, aid: str, ts: int, acked: bool = True) -> None:
        """Return to normal; an alarm acknowledged (or never shown) closes at once."""
        hidden = self.state[aid] in ("suppressed", "shelved", "out_of_service")
        after = self.state[aid] if hidden else "normal" if acked else "rtn_unack"
        self.go(aid, ts, "cleared", after)
        if acked or hidden:
            self.go(aid, ts, "closed", "normal")

    async def record(self, store: AlertStore) -> None:
        """One store.apply per step, in time order, as the service writes them."""
        rows = sorted(self.rows, key=lambda t: t.ts)  # stable: a step keeps its order
        for ts, step in groupby(rows, key=lambda t: t.ts):
            await store.apply(self.site, Effects(transitions=list(step)), ts)
        await store.apply(self.site, Effects(alerts=[(a, "raised", "", "")
                                                     for a in self.alerts.values()]),
                          rows[-1].ts)


def storm(site: str) -> Storm:
    """A night storm on 2026-11-21 (Asia/Shanghai). Clock periods 03:00-03:10, 03:10-03:20.

    03:04:00-03:08:35  12 bollard faults, one every 25 s, shown, acknowledged after 60 s
    03:10:00           the gateway offline, shown (acknowledged after 40 s)
    03:10:30           10 device no-data alarms behind it raised and suppressed in that
                       step, never shown; and one more (dev-x) that is unsuppressed at
                       03:12:00 while still active (shown then), suppressed at 03:13:00,
                       unsuppressed at 03:14:00 (not a new annunciation), acked 03:15:00
    03:11:00           a pump fault on a shelved point: raised shelved, clears at 03:12
    03:11:30           a meter raised out of service, returned to service 03:13:30 still
                       active (shown then), acknowledged 03:15:00
    03:12:30           a report (category 'report'): no acknowledgement, not counted
    03:15:00           a UPS alarm shown, acked 03:15:30; severity raised 03:17:00 (a new
                       annunciation), acked again 03:18:00
    03:16:00           a device alarm shown, suppressed at 03:16:10 (it was shown: counts)
    03:18:00           a water level shown, clears 03:18:20 unacknowledged, raised again
                       03:18:40 (a new annunciation), acked 03:19:00
    """
    s = Storm(site)
    for i in range(12):
        raised = at(3, 4) + i * 25 * NS
        s.alarm(f"al-bollard-{i:02d}", "bollard-fault", f"bollard-s{i + 1:02d}", 2, raised)
        s.go(f"al-bollard-{i:02d}", raised + MIN, "acknowledged", "active_ack")
        s.close(f"al-bollard-{i:02d}", raised + 5 * MIN)
    s.alarm("al-gw", "gateway-offline", "gw-iot", 2, at(3, 10))
    s.go("al-gw", at(3, 10, 40), "acknowledged", "active_ack")
    for i in range(10):
        s.alarm(f"al-dev-{i:02d}", "device-no-data", f"dev-{i:02d}", 4, at(3, 10, 30),
                to="suppressed")
        s.close(f"al-dev-{i:02d}", at(3, 39))
    s.alarm("al-dev-x", "device-no-data", "dev-x", 4, at(3, 10, 30), to="suppressed")
    s.go("al-dev-x", at(3, 12), "unsuppressed", "active_unack")
    s.go("al-dev-x", at(3, 13), "suppressed", "suppressed")
    s.go("al-dev-x", at(3, 14), "unsuppressed", "active_unack")
    s.go("al-dev-x", at(3, 15), "acknowledged", "active_ack")
    s.close("al-dev-x", at(3, 16))
    s.close("al-gw", at(3, 40))
    s.alarm("al-pump", "sump-pump-failed", "pump-west-gate", 3, at(3, 11), to="shelved")
    s.close("al-pump", at(3, 12))
    s.alarm("al-meter", "meter-fault", "em-01", 3, at(3, 11, 30), to="out_of_service")
    s.go("al-meter", at(3, 13, 30), "returned_to_service", "active_unack")
    s.go("al-meter", at(3, 15), "acknowledged", "active_ack")
    s.close("al-meter", at(3, 20, 30))
    s.alarm("al-report", "energy-report", "em-02", 5, at(3, 12, 30), category="report")
    s.close("al-report", at(3, 13), acked=False)
    s.go("al-report", at(3, 13), "closed", "normal")
    s.alarm("al-ups", "ups-on-battery", "ups-01", 3, at(3, 15))
    s.go("al-ups", at(3, 15, 30), "acknowledged", "active_ack")
    s.go("al-ups", at(3, 17), "severity_raised", "active_unack")
    s.go("al-ups", at(3, 18), "acknowledged", "active_ack")
    s.close("al-ups", at(3, 25))
    s.alarm("al-dev-y", "device-offline", "dev-y", 4, at(3, 16))
    s.go("al-dev-y", at(3, 16, 10), "suppressed", "suppressed")
    s.close("al-dev-y", at(3, 30))
    s.alarm("al-level", "water-level-high", "wl-01", 4, at(3, 18))
    s.close("al-level", at(3, 18, 20), acked=False)
    s.go("al-level", at(3, 18, 40), "re_raised", "active_unack")
    s.go("al-level", at(3, 19), "acknowledged", "active_ack")
    s.close("al-level", at(3, 19, 30))
    return s


def figures(health: AlarmHealth) -> dict[str, object]:
    out = health.as_dict()
    del out["start"], out["end"]
    return out


async def test_storm_counts_what_the_operator_was_shown(state_url: str) -> None:
    site = f"s-{uuid.uuid4().hex[:8]}"
    store = await AlertStore.open(state_url)
    try:
        recorded = storm(site)
        await recorded.record(store)
        now = at(12, 0, 7)  # asked at noon: the last 24 h, not aligned to the clock
        health = await alarm_health(store, site, now - 24 * 3600 * NS, now)
        later = await alarm_health(store, site, now + 3 * MIN - 24 * 3600 * NS, now + 3 * MIN)
        closer = await alarm_health(store, site, at(3), at(3, 20))  # the storm's 20 minutes
    finally:
        await store.close()

    # The history has 11 'raised' rows into active_unack in 03:10-03:20 (gateway, 10 + 1
    # devices, UPS, device y) and 2 'raised'/'re_raised' of the level: 16; the operator was
    # shown 8 (gateway, dev-x, meter, UPS twice, device y, level twice).
    rows = recorded.rows
    raised_rows = [t for t in rows if t.action in ("raised", "re_raised")
                   and t.to_state == "active_unack" and at(3, 10) <= t.ts < at(3, 20)
                   and recorded.alerts[t.alert].category == "alarm"]
    assert len(raised_rows) == 16
    assert health.annunciated == 12 + 8
    assert health.not_annunciated == 10 + 1  # the suppressed devices, the shelved pump
    # Sliding: [03:04:00, 03:14:00) holds the 12 bollards, the gateway, dev-x, the meter.
    assert health.per_10_min_max == 15
    # Aligned: 03:00-03:10 has 12 (a flood), 03:10-03:20 has 8 (none).
    assert health.flood_periods == [{"start": at(3), "end": at(3, 10), "alarms": 12}]
    assert health.flood_share == round(100 * 10 / (24 * 60), 2)
    assert health.per_10_min_avg == round(20 / 144, 2)
    assert health.per_hour_avg == round(20 / 24, 2)
    # Priority 2: 12 bollards and the gateway; 3: meter, UPS twice; 4: dev-x, y, level x2.
    assert health.priority_share == {"high": 65.0, "medium": 15.0, "low": 20.0}
    assert [(t["source"], t["count"]) for t in health.top[:2]] == [("ups-01", 2), ("wl-01", 2)]
    assert health.top10_share == 60.0  # 2 + 2 + 8 ones of 20
    # Acknowledged after being shown: 12 x 60 s, gateway 40, dev-x 180 (from 03:12, not
    # from its raise), meter 90 (from its return to service), UPS 30 and 60, level 20 (its
    # first annunciation had no acknowledgement before the second).
    acks = sorted([60.0] * 12 + [40.0, 180.0, 90.0, 30.0, 60.0, 20.0])
    assert health.ack_median_s == acks[8] == 60.0
    assert health.ack_p90_s == acks[15]
    assert health.chattering == [] and health.stale == []
    assert (health.shelved, health.suppressed, health.out_of_service) == (0, 0, 0)
    # Asked three minutes later about the same storm: the same figures.
    assert figures(later) == figures(health)
    # The storm's own 20 minutes: the same count, the flood half of the range.
    assert (closer.annunciated, closer.per_10_min_max, closer.flood_periods) == \
        (20, 15, health.flood_periods)
    assert closer.flood_share == 50.0


async def test_an_alarm_hidden_when_the_range_starts_is_looked_up(state_url: str) -> None:
    """dev-x was shown at 03:12, hidden at 03:13 and shown again at 03:14: a range that
    starts at 03:13:10 sees only the 03:14 unsuppression, which is no new annunciation."""
    site = f"s-{uuid.uuid4().hex[:8]}"
    store = await AlertStore.open(state_url)
    try:
        await storm(site).record(store)
        health = await alarm_health(store, site, at(3, 13, 10), at(3, 30))
    finally:
        await store.close()
    # The meter's return to service, the UPS twice, device y, the level twice.
    assert health.annunciated == 6
    assert health.not_annunciated == 0  # the hidden activations began before the range
    assert health.per_10_min_max == 6 and health.flood_periods == []


async def test_engine_storm_gateway_offline(state_url: str) -> None:
    """The engine's own history: a gateway goes offline; its devices' no-data timers run
    out and each of their alarms is raised and suppressed in the same step. The figures
    count what the engine shows, not the raises."""
    site = f"s-{uuid.uuid4().hex[:8]}"
    store = await AlertStore.open(state_url)
    try:
        engine = build(site, T0)
        engine.restore(await store.load(site), T0)
        await store.apply(site, engine.take(), T0)
        now = T0 + NS
        engine.status(DeviceStatus(site=site, family=Family.GATEWAY, device="gw-iot", ts=now,
                                   state=Availability.OFFLINE, reason="connection lost"), now)
        await store.apply(site, engine.take(), now)
        for _ in range(60):
            now += MIN
            engine.tick(now)
            await store.apply(site, engine.take(), now)
        history = await store.history(site=site)
        health = await alarm_health(store, site, T0, now + NS)
    finally:
        await store.close()
    by_step = Counter((h["alert"], h["ts"]) for h in history
                      if h["action"] in ("raised", "suppressed"))
    same_step = sum(1 for n in by_step.values() if n == 2)
    assert same_step > 10  # the storm: alarms raised and suppressed in one step
    shown = [a for a in engine.book.open.values()
             if a.annunciated and a.active and a.category == "alarm"]
    hidden = [a for a in engine.book.open.values()
              if not a.annunciated and a.category == "alarm"]
    assert len(hidden) == same_step
    # Nothing has cleared: each alarm open and shown now was annunciated once, no other.
    assert health.annunciated == len(shown) and health.not_annunciated == len(hidden)
    raised = [h for h in history if h["action"] == "raised" and h["to_state"] == "active_unack"]
    assert len(raised) == len(shown) + len(hidden)  # what the old counting took


def test_worst_window_slides() -> None:
    # 5 in 03:05-03:10 and 5 in 03:10-03:15: no clock period has more than 5, but the 10
    # minutes from 03:05 have 10; [t, t + 10 min) leaves out t + 10 min itself.
    times = [at(3, 5) + i * MIN for i in range(10)] + [at(3, 15)]
    assert worst_window(times) == 10
    assert worst_window([]) == 0
