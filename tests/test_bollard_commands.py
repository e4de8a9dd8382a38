"""Bollard commands through the real broker, the gateway and the simulated PLC: the
bollard moves and the result comes back; a replayed id, an expired command and an
interlock do nothing; a stuck bollard fails with its fault code."""

from __future__ import annotations

import time
import uuid
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack
from dataclasses import dataclass
from datetime import datetime
from typing import Any
from zoneinfo import ZoneInfo

import pytest

from facility import messages as m
from facility import topics
from facility.messages import Command, CommandResult, CommandStatus, Family
from facility.settings import Settings
from facility.site import load_site
from gateway.service import Gateway
from simulators.campus import Campus
from simulators.clock import SimClock
from tests.conftest import SITE_FILE, catalog
from tests.helpers import Collector, eventually, publish_all

SITE = "panyu-admin-centre"
PLC = "bollard-plc-south"
# 02:00 on a weekday night: every bollard is up and no vehicles pass.
NIGHT = datetime(2026, 11, 25, 2, 0, tzinfo=ZoneInfo("Asia/Shanghai")).timestamp()


@dataclass
class Rig:
    campus: Campus
    gateway: Gateway
    results: Collector
    settings: Settings

    async def send(self, action: str, device: str, *, command_id: str | None = None,
                   valid_for: float = 30.0, issued_at: int | None = None) -> str:
        now = issued_at or time.time_ns()
        command = Command(id=command_id or uuid.uuid4().hex, site=SITE, family=Family.BOLLARD,
                          device=device, action=action, issued_at=now,
                          expires_at=now + int(valid_for * 1e9), issued_by="test-operator",
                          reason="演练 drill")
        await publish_all(self.settings.mqtt, [(topics.command(SITE, "bollard", device),
                                                m.encode(command))])
        return command.id

    async def outcome(self, command_id: str, timeout: float = 30) -> list[CommandResult]:
        final = {s for s in CommandStatus if s is not CommandStatus.ACCEPTED}

        async def mine() -> list[CommandResult]:
            return [r for r in self.results.decoded(CommandResult) if r.id == command_id]

        return await eventually(mine, lambda rs: any(r.status in final for r in rs), timeout,
                                f"the outcome of command {command_id}")

    def unit(self, n: int) -> dict[str, Any]:
        unit: dict[str, Any] = self.campus.plc().snapshot()["units"][n]
        return unit


@pytest.fixture
async def rig(settings: Settings) -> AsyncIterator[Rig]:
    site = load_site(SITE_FILE)
    clock = SimClock(start=NIGHT, scale=4.0)  # a 4 s raise takes 1 s
    async with AsyncExitStack() as stack:
        results = await stack.enter_async_context(
            Collector(settings.mqtt, topics.subscription(topics.Kind.COMMAND_RESULT, SITE)))
        campus = await stack.enter_async_context(
            Campus(site, settings.mqtt, clock=clock, seed=3, use_config_ports=False,
                   families={Family.BOLLARD}))
        gateway = await stack.enter_async_context(Gateway(settings, catalog(campus.site),
                                                          "gw-plc-south"))
        await gateway.wait_ready()
        yield Rig(campus, gateway, results, settings)


def statuses(results: list[CommandResult]) -> list[str]:
    return [r.status.value for r in results]


async def test_lower_and_raise_one_bollard(rig: Rig) -> None:
    assert rig.unit(20)["state"] == "up"
    lowered = await rig.outcome(await rig.send("lower", "bollard-s20"))
    assert statuses(lowered) == ["accepted", "done"]
    assert rig.unit(20)["state"] == "down"
    cycles = rig.unit(20)["cycle_count"]
    raised = await rig.outcome(await rig.send("raise", "bollard-s20"))
    assert statuses(raised) == ["accepted", "done"]
    assert rig.unit(20)["state"] == "up"
    assert rig.unit(20)["cycle_count"] == cycles + 1
    assert all(r.device == "bollard-s20" and r.family is Family.BOLLARD for r in raised)


async def test_replayed_id_executes_once(rig: Rig) -> None:
    command_id = await rig.send("lower", "bollard-s21")
    assert statuses(await rig.outcome(command_id)) == ["accepted", "done"]
    await rig.outcome(await rig.send("raise", "bollard-s21"))  # back up by another command
    await rig.send("lower", "bollard-s21", command_id=command_id)  # the replay
    replies = await eventually(
        lambda: _results_for(rig, command_id), lambda rs: len(rs) == 3, 20, "the replay's answer")
    assert replies[-1].status is CommandStatus.DUPLICATE
    assert rig.unit(21)["state"] == "up"  # the replay did not lower it again


async def _results_for(rig: Rig, command_id: str) -> list[CommandResult]:
    return [r for r in rig.results.decoded(CommandResult) if r.id == command_id]


async def test_expired_command_is_refused_by_the_gateway(rig: Rig) -> None:
    stale = time.time_ns() - 60 * 10**9
    outcome = await rig.outcome(await rig.send("lower", "bollard-s22", issued_at=stale,
                                               valid_for=10))
    assert statuses(outcome) == ["expired"]
    assert rig.unit(22)["state"] == "up"


async def test_interlock_refuses_raising_over_a_vehicle(rig: Rig) -> None:
    await rig.outcome(await rig.send("lower", "bollard-s19"))
    rig.campus.plc().set_loop(True)  # a car stands over the lane
    try:
        outcome = await rig.outcome(await rig.send("raise", "bollard-s19"))
    finally:
        rig.campus.plc().set_loop(None)
    assert statuses(outcome) == ["refused"]
    assert outcome[-1].detail == "refused_interlock"
    assert rig.unit(19)["state"] == "down"


async def test_stuck_bollard_fails_with_its_fault(rig: Rig) -> None:
    await rig.outcome(await rig.send("lower", "bollard-s23"))
    rig.campus.bollard_stuck(23)
    outcome = await rig.outcome(await rig.send("raise", "bollard-s23"))
    assert statuses(outcome) == ["accepted", "failed"]
    assert "travel_timeout" in outcome[-1].detail


async def test_group_command_needs_the_controller(rig: Rig) -> None:
    outcome = await rig.outcome(await rig.send("raise_all", "bollard-s01"))
    assert statuses(outcome) == ["refused"]
    done = await rig.outcome(await rig.send("emergency_rise", PLC))
    assert statuses(done) == ["accepted", "done"]
