"""The engine's state in the SQL store (SQLite and PostgreSQL): alerts with their history,
incidents with CAP documents, what the screens show, health figures; an engine restored
from the store takes up where the last one stopped."""

from __future__ import annotations

import uuid

import pytest

from facility.endpoints import load_endpoints
from facility.messages import (
    AlertAction,
    AlertOperation,
    AlertState,
    Event,
    Family,
    Reading,
)
from facility.site import load_site, site_for
from facility.topology import Topology
from rules import cap
from rules.clock import NS
from rules.config import load_rules, rule_files
from rules.engine import Engine
from rules.health import alarm_health
from rules.store import AlertStore
from tests.conftest import REPO, SITE_FILE, catalog

T0 = 1_795_825_500 * NS  # 2026-11-28 08:25 Asia/Shanghai, a Saturday


def build(site_id: str, now: int) -> Engine:
    site = site_for(load_site(SITE_FILE), site_id)
    topology = Topology(catalog(site))
    endpoints = load_endpoints(REPO / "config" / "endpoints.yaml", site)
    rules = load_rules(rule_files(REPO / "config" / "rules"), topology, endpoints)
    return Engine(topology, rules, endpoints, now=now)


def fire(site: str, device: str, ts: int, name: str = "fire_alarm") -> Event:
    return Event(site=site, family=Family.FIRE, device=device, ts=ts, id=f"{device}-{ts}",
                 name=name, text="火警")


async def test_alerts_history_incidents_and_restore(state_url: str) -> None:
    site = f"s-{uuid.uuid4().hex[:8]}"
    store = await AlertStore.open(state_url)
    try:
        engine = build(site, T0)
        engine.restore(await store.load(site), T0)
        await store.apply(site, engine.take(), T0)
        now = T0 + NS
        engine.event(fire(site, "fd-mb-01", now), now)
        await store.apply(site, engine.take(), now)
        [alert] = await store.alerts(site, open_only=True)
        assert (alert.rule, alert.source, alert.state) == \
            ("fire-detector-alarm", "fd-mb-01", AlertState.ACTIVE_UNACK)
        assert alert.place == "main-elec-b1" and alert.severity.value == "critical"
        now += 30 * NS
        result = engine.operate(AlertOperation(
            id="op-1", site=site, action=AlertAction.ACKNOWLEDGE, target=alert.id,
            by="值班员张三", ts=now, comment="已派人到场"), now)
        assert result.ok and result.state == "active_ack"
        await store.apply(site, engine.take(), now)
        again = engine.operate(AlertOperation(
            id="op-2", site=site, action=AlertAction.ACKNOWLEDGE, target=alert.id,
            by="李四", ts=now), now)
        assert not again.ok and "already acknowledged" in again.detail
        history = await store.history(alert.id)
        acked = [h for h in history if h["action"] == "acknowledged"]
        assert acked and acked[0]["by"] == "值班员张三" and acked[0]["comment"] == "已派人到场"
        assert acked[0]["from_state"] == "active_unack" and acked[0]["to_state"] == "active_ack"

        # What the screens show and the emergency's CAP document are stored.
        shown = await store.displays(site)
        assert "火警" in shown["led-main-lobby"]["text"]
        [incident] = await store.incidents(site, open_only=True)
        docs = await store.cap_documents(incident.id)
        assert docs and "<msgType>Alert</msgType>" in docs[0]
        cap.validate(docs[0])

        # A second engine on the same store takes over the open alert and the screens.
        later = now + 120 * NS
        second = build(site, later)
        second.restore(await store.load(site), later)
        restored = second.book.by_id(alert.id)
        assert restored is not None and restored.state is AlertState.ACTIVE_ACK
        assert "火警" in (second.router.state["led-main-lobby"].shown or {})["text"]
        second.event(fire(site, "fd-mb-01", later, "restore"), later)
        await store.apply(site, second.take(), later)
        closed = await store.alert(alert.id)
        assert closed is not None and closed.state is AlertState.NORMAL and closed.closed_at
        actions = [h["action"] for h in await store.history(alert.id)]
        assert actions[:2] == ["raised", "acknowledged"]
        assert "service_restarted" in actions and actions[-2:] == ["cleared", "closed"]

        health = await alarm_health(store, site, T0, later + NS)
        assert health.annunciated == 1 and health.priority_share["high"] == 100.0
        assert health.ack_median_s == pytest.approx(30.0)
        assert "10 min" in health.formulas["per_10_min_avg"]
    finally:
        await store.close()


async def test_health_counts_floods_and_chattering(state_url: str) -> None:
    site = f"s-{uuid.uuid4().hex[:8]}"
    store = await AlertStore.open(state_url)
    try:
        engine = build(site, T0)
        now = T0
        # Twelve detector alarms in five minutes: a flood (more than 10 in 10 minutes).
        detectors = [d.id for d in engine.topology.site.devices if d.kind == "smoke_detector"]
        for device in detectors[:12]:
            now += 20 * NS
            engine.event(fire(site, device, now), now)
            await store.apply(site, engine.take(), now)
        # A level switch that raises and clears three times in a minute: chattering.
        for n in range(3):
            now += 10 * NS
            engine.reading(Reading(site=site, family=Family.DRAINAGE, device="pump-west-gate",
                                   ts=now, values={"pump_fault": True}), now)
            now += 5 * NS
            engine.reading(Reading(site=site, family=Family.DRAINAGE, device="pump-west-gate",
                                   ts=now, values={"pump_fault": False}), now)
            await store.apply(site, engine.take(), now)
            assert n < 2 or engine.book.open[("sump-pump-failed", "pump-west-gate")].chattering
        health = await alarm_health(store, site, T0, T0 + 600 * NS)
        assert health.annunciated >= 12
        # The flood is the clock's 08:20-08:30, half of the range 08:25-08:35.
        assert health.per_10_min_max >= 12 and health.flood_share == 50.0
        assert health.flood_periods[0]["start"] == T0 - 300 * NS
        assert health.flood_periods[0]["alarms"] >= 12
        assert {"rule": "sump-pump-failed", "source": "pump-west-gate", "raises": 3,
                "within_s": 60.0} in health.chattering
        assert health.top[0]["count"] >= 1
    finally:
        await store.close()
