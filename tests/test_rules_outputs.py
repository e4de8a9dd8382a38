"""Screens and PA zones that stop answering, then come back: the evacuation reaches each of
them once it is back, and none shows or announces it twice.

The screens and PA zones are simulators/display_player.py in a process of its own, which
the test pauses (SIGSTOP) or kills (SIGKILL) and starts again; its journal says what it
showed and announced, by message id. The rules service runs here on a driven clock, so
its re-sends (same id, 10 s, 20 s, 40 s, then every 60 s) come when the test moves time."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import sys
from pathlib import Path
from typing import Any

import yaml

from facility.settings import Settings
from rules.clock import ManualClock
from tests.conftest import REPO, SITE_FILE
from tests.test_rules_scenarios import START, Campus, rules_only, until

FIRE_SHED = "fd-ebw-01"  # a smoke detector in the west e-bike shed


class PlayerProcess:
    """The screens and PA zones of one site, in a process this test starts and stops."""

    def __init__(self, settings: Settings, tmp_path: Path, site_id: str) -> None:
        self.site_id = site_id
        self.journal_path = tmp_path / "screens.jsonl"
        self.config = tmp_path / "player.yaml"
        self.config.write_text(yaml.safe_dump({
            "site_file": str(SITE_FILE),
            "mqtt": {"url": settings.mqtt.url.get_secret_value()},
            "config_dir": str(REPO / "config")}),
            encoding="utf-8")
        self.process: asyncio.subprocess.Process | None = None

    async def start(self) -> None:
        self.process = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "simulators.display_player", "--config", str(self.config),
            "--site", self.site_id, "--journal", str(self.journal_path),
            stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT, cwd=str(REPO))
        assert self.process.stdout is not None
        line = await asyncio.wait_for(self.process.stdout.readline(), 60)
        assert b"ready" in line, line

    def signal(self, sig: signal.Signals) -> None:
        assert self.process is not None
        os.kill(self.process.pid, sig)

    async def kill(self) -> None:
        self.signal(signal.SIGKILL)
        assert self.process is not None
        await asyncio.wait_for(self.process.wait(), 20)

    async def stop(self) -> None:
        if self.process is None or self.process.returncode is not None:
            return
        self.signal(signal.SIGCONT)  # a paused process cannot handle SIGTERM
        self.signal(signal.SIGTERM)
        try:
            await asyncio.wait_for(self.process.wait(), 20)
        except TimeoutError:
            await self.kill()

    def journal(self) -> list[dict[str, Any]]:
        if not self.journal_path.exists():
            return []
        lines = self.journal_path.read_text(encoding="utf-8").splitlines()
        return [json.loads(line) for line in lines if line.strip()]


def shown_once(journal: list[dict[str, Any]], sent: dict[str, str]) -> dict[str, int]:
    """How many times each endpoint took its message as new (showed or announced it)."""
    return {endpoint: sum(1 for j in journal if j["endpoint"] == endpoint
                          and j["id"] == message and j["new"])
            for endpoint, message in sent.items()}


def evacuation(campus: Campus) -> dict[str, str]:
    """The evacuation messages waiting for confirmation: endpoint -> message id."""
    assert campus.rules is not None and campus.rules.engine is not None
    return {p.endpoint: p.message_id for p in campus.rules.engine.router.pending.values()}


async def test_paused_endpoints_get_the_evacuation_once_when_back(settings: Settings,
                                                                   tmp_path: Path) -> None:
    campus = Campus(settings, tmp_path, ManualClock(START))
    player = PlayerProcess(settings, tmp_path, campus.site_id)
    await player.start()
    try:
        async with rules_only(campus):
            assert campus.rules is not None and campus.rules.engine is not None
            engine = campus.rules.engine
            await until("every screen confirmed its normal content",
                        lambda: not engine.router.pending)
            player.signal(signal.SIGSTOP)  # frozen: connected, but reads and answers nothing
            await campus.send(campus.event(FIRE_SHED, "fire_alarm", "西门车棚烟感1 火警"))
            sent = evacuation(campus)
            # 13 screens and the 5 PA zones: an evacuation's reach is the campus, one area
            # for screens and PA alike.
            assert len(sent) == 18 and "pa-west" in sent
            for _ in range(5):  # re-sends with the same ids, until each counts as silent
                await campus.advance(60)
            await until("every endpoint counted silent", lambda: all(
                engine.router.state[e].silent for e in sent))
            silent = campus.open_alerts("endpoint-silent")
            assert {a.source for a in silent if a.active} == set(sent)
            player.signal(signal.SIGCONT)
            await campus.advance(61)  # the next re-send
            await until("every endpoint confirmed the evacuation",
                        lambda: not set(sent.values()) & set(engine.router.pending))
            await until("the silent alerts cleared",
                        lambda: not any(a.active for a in campus.open_alerts("endpoint-silent")))
            assert all((engine.router.state[e].shown or {}).get("id") == sent[e]
                       for e in sent if not e.startswith("pa-"))
            store = campus.rules.store
            assert store is not None
            records = {d["message"]: d for d in await store.deliveries(campus.site_id)}
            assert all(records[mid]["acked_at"] and records[mid]["attempts"] >= 5
                       for mid in sent.values())
        journal = player.journal()
        assert shown_once(journal, sent) == {e: 1 for e in sent}
        # The re-sends did reach it after the pause: taken as duplicates, not shown again.
        repeats = [j for j in journal if j["id"] in sent.values() and not j["new"]]
        assert {j["endpoint"] for j in repeats} == set(sent)
    finally:
        await player.stop()


async def test_killed_endpoints_get_the_evacuation_once_when_restarted(settings: Settings,
                                                                       tmp_path: Path) -> None:
    campus = Campus(settings, tmp_path, ManualClock(START))
    player = PlayerProcess(settings, tmp_path, campus.site_id)
    await player.start()
    try:
        async with rules_only(campus):
            assert campus.rules is not None and campus.rules.engine is not None
            engine = campus.rules.engine
            await until("every screen confirmed its normal content",
                        lambda: not engine.router.pending)
            await player.kill()  # gone: the broker keeps its session's messages
            await campus.send(campus.event(FIRE_SHED, "fire_alarm", "西门车棚烟感1 火警"))
            sent = evacuation(campus)
            assert len(sent) == 18
            for _ in range(3):
                await campus.advance(60)
            await player.start()  # back, same journal, same session
            await campus.advance(61)
            await until("every endpoint confirmed the evacuation",
                        lambda: not set(sent.values()) & set(engine.router.pending))
            # Killed once more after confirming, and back: the screens get their current
            # content again (retained), the PA zone is not re-sent anything, nothing is
            # shown or announced a second time.
            await player.kill()
            await player.start()
            await campus.advance(61)
            await until("the restarted screens took their retained content", lambda: len(
                [j for j in player.journal() if j["id"] in sent.values() and not j["new"]])
                >= 13)
            assert not engine.router.pending
        journal = player.journal()
        assert shown_once(journal, sent) == {e: 1 for e in sent}
        announced = [j for j in journal if j["endpoint"] == "pa-west" and j["new"]
                     and j["kind"] == "broadcast"]
        assert [j["id"] for j in announced] == [sent["pa-west"]]
    finally:
        await player.stop()
