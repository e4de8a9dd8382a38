"""Bollard commands through the API, the broker, the real gateway and the simulated PLC:
the bollard moves and the result comes back to the caller and the live stream; a replayed
id executes once; lowering all needs a second supervisor in time; an emergency rise
waits for nobody; no audit record, no command."""

from __future__ import annotations

from pathlib import Path

import sqlalchemy as sa

from facility import messages as m
from facility import topics
from facility.localservers import InfluxServer, MosquittoServer
from facility.messages import Family
from facility.settings import Settings
from tests.conftest import make_settings
from tests.helpers import Collector, eventually
from tests.test_api_stack import Sse, Stack, api_stack

ALL = [f"bollard-s{n:02d}" for n in range(1, 43)]


def commands_of(s: Stack) -> str:
    return topics.subscription(topics.Kind.COMMAND, s.site_id, "bollard")


async def test_a_command_moves_the_bollard_and_the_result_comes_back(
        settings: Settings, tmp_path: Path) -> None:
    async with api_stack(settings, tmp_path, simulate={Family.BOLLARD}, rules=True) as s:
        assert s.unit(20)["state"] == "up"
        async with Sse(s.http, s.tokens["vera"], kind=["command"]) as live:
            lowered = await s.command("otto", "lower", bollards=["bollard-s20"],
                                      command_id="lower-20", reason="放行消防车", wait=30)
            assert lowered.status_code == 201, lowered.text
            view = lowered.json()
            assert view["status"] == "done" and view["final"] is True
            assert view["results"][0]["device"] == "bollard-s20"
            assert view["results"][0]["detail"] == "confirmed by the feedback registers"
            assert s.unit(20)["state"] == "down"
            await live.wait_for("command", lambda d: d["id"] == "lower-20"
                                and d["status"] == "done", "the result on the live stream")

        # The caller that did not wait follows it by id.
        raised = await s.command("otto", "raise", bollards=["bollard-s20", "bollard-s21"],
                                 command_id="raise-20-21")
        assert raised.status_code == 202 and raised.json()["status"] == "sent"
        done = (await s.get("/api/commands/raise-20-21", wait=30)).json()
        assert done["status"] == "done", done
        assert {r["device"]: r["status"] for r in done["results"]} == \
            {"bollard-s20": "done", "bollard-s21": "done"}
        assert s.unit(20)["state"] == "up"

        # The audit log has who, when, why and what came of it.
        audit = (await s.get("/api/audit", "sam", command="lower-20")).json()
        assert [(a["event"], a["outcome"]) for a in reversed(audit)] == [
            ("requested", ""), ("result", "accepted"), ("result", "done")]
        assert audit[-1]["username"] == "otto" and audit[-1]["reason"] == "放行消防车"

        # A bollard that is stuck fails with its fault, and the caller hears it.
        assert s.campus is not None
        await s.command("otto", "lower", bollards=["bollard-s22"], wait=30)
        s.campus.bollard_stuck(22)
        stuck = await s.command("otto", "raise", bollards=["bollard-s22"], wait=40)
        assert stuck.status_code == 201
        assert stuck.json()["status"] == "failed" and "travel_timeout" in stuck.json()["detail"]
        # The rules engine turns a raise that did not arrive into an alert (it reads the
        # command and its result on the broker).
        alerts = await eventually(lambda: s.get("/api/alerts", family=["bollard"]),
                                  lambda r: any(a["rule"] == "bollard-not-up"
                                                for a in r.json()), 30,
                                  "the alert for the bollard that did not rise")
        alert = next(a for a in alerts.json() if a["rule"] == "bollard-not-up")
        assert alert["source"] == "bollard-s22" and alert["severity"] == "critical"


async def test_a_replayed_id_executes_once(settings: Settings, tmp_path: Path) -> None:
    async with api_stack(settings, tmp_path, simulate={Family.BOLLARD}) as s:
        first = await s.command("otto", "lower", bollards=["bollard-s21"],
                                command_id="once-21", wait=30)
        assert first.status_code == 201 and first.json()["status"] == "done"
        back = await s.command("otto", "raise", bollards=["bollard-s21"], wait=30)
        assert back.json()["status"] == "done"
        cycles = s.unit(21)["cycle_count"]
        async with Collector(settings.mqtt, commands_of(s)) as published:
            replay = await s.command("otto", "lower", bollards=["bollard-s21"],
                                     command_id="once-21")
            assert replay.status_code == 200
            assert replay.json() == {**first.json(), "results": replay.json()["results"]}
            other = await s.command("otto", "raise", bollards=["bollard-s21"],
                                    command_id="once-21")
            assert other.status_code == 409
            stolen = await s.command("sam", "lower", bollards=["bollard-s21"],
                                     command_id="once-21")
            assert stolen.status_code == 409
            await s.nothing_published(published)
        assert s.unit(21)["state"] == "up" and s.unit(21)["cycle_count"] == cycles
        requested = [a for a in (await s.get("/api/audit", "sam", command="once-21")).json()
                     if a["event"] == "requested"]
        assert len(requested) == 1


async def test_lowering_all_needs_a_second_supervisor(settings: Settings, tmp_path: Path,
                                                      state_url: str) -> None:
    async with api_stack(settings, tmp_path, simulate={Family.BOLLARD}, state_url=state_url) as s:
        async with Collector(settings.mqtt, commands_of(s)) as published:
            asked = await s.command("sam", "lower_all", command_id="open-gate",
                                    reason="大型活动车辆进场", approved_by="sue",
                                    approval={"decision": "approved"})
            assert asked.status_code == 202, asked.text
            assert asked.json()["status"] == "awaiting_approval"
            assert asked.json()["approval"]["decided_by"] == ""
            pending = (await s.get("/api/commands", "otto", pending=True)).json()
            assert [p["id"] for p in pending] == ["open-gate"]
            for who, why in (("sam", "your own request"), ("otto", "supervisor role"),
                             ("vera", "supervisor role")):
                refused = await s.post("/api/commands/open-gate/approve", who)
                assert refused.status_code == 403 and why in refused.json()["detail"], who
            await s.nothing_published(published)
        assert all(s.unit(n)["state"] == "up" for n in range(1, 43))

        async with Collector(settings.mqtt, commands_of(s)) as published:
            approved = await s.post("/api/commands/open-gate/approve", "sue",
                                    {"comment": "同意"})
            assert approved.status_code == 200, approved.text
            await published.wait_for(1)
            command = published.decoded(m.Command)[0]
        assert (command.action, command.device) == ("lower_all", "bollard-plc-south")
        assert command.issued_by == "sam" and command.approved_by == "sue"
        done = (await s.get("/api/commands/open-gate", wait=40)).json()
        assert done["status"] == "done", done
        assert done["approval"]["decision"] == "approved"
        assert done["approval"]["decided_by"] == "sue"
        assert all(s.unit(n)["state"] == "down" for n in range(1, 43))
        twice = await s.post("/api/commands/open-gate/approve", "sue")
        assert twice.status_code == 409

        # A lowering request waiting for approval does not hold up an emergency rise, and
        # the rise cancels it.
        again = await s.command("sam", "lower_all", command_id="open-gate-2")
        assert again.json()["status"] == "awaiting_approval"
        rise = await s.command("otto", "emergency_rise", command_id="alarm", wait=30)
        assert rise.status_code == 201 and rise.json()["status"] == "done", rise.text
        assert rise.json()["approval"]["required"] is False
        assert all(s.unit(n)["state"] == "up" for n in range(1, 43))
        cancelled = (await s.get("/api/commands/open-gate-2")).json()
        assert cancelled["status"] == "superseded"
        late = await s.post("/api/commands/open-gate-2/approve", "sue")
        assert late.status_code == 409

        # Rejected by a supervisor: nothing moves.
        third = await s.command("sam", "lower_all", command_id="open-gate-3")
        rejected = await s.post("/api/commands/open-gate-3/reject", "sue", {"comment": "不同意"})
        assert rejected.status_code == 200 and rejected.json()["status"] == "rejected"
        assert third.json()["status"] == "awaiting_approval"

        events = [(a["command"], a["event"]) for a in
                  reversed((await s.get("/api/audit", "sam", limit=200)).json())
                  if a["command"].startswith("open-gate")]
        assert events[:5] == [("open-gate", "requested"), ("open-gate", "approved_refused"),
                              ("open-gate", "approved_refused"),
                              ("open-gate", "approved_refused"), ("open-gate", "approved")]
        assert ("open-gate-2", "superseded") in events
        assert ("open-gate-3", "rejected") in events


async def test_an_approval_runs_out(settings: Settings, tmp_path: Path) -> None:
    async with api_stack(settings, tmp_path, approval_timeout=1.0) as s:
        asked = await s.command("sam", "lower", bollards=ALL[:10], command_id="big-group")
        assert asked.status_code == 202 and asked.json()["approval"]["required"] is True
        expired = await eventually(
            lambda: s.get("/api/commands/big-group"),
            lambda r: r.json()["approval"]["decision"] == "approval_expired", 20,
            "the approval to run out, recorded")
        assert expired.json()["status"] == "approval_expired"
        assert expired.json()["approval"]["decided_by"] == "system"
        async with Collector(settings.mqtt, commands_of(s)) as published:
            late = await s.post("/api/commands/big-group/approve", "sue")
            assert late.status_code == 409
            await s.nothing_published(published)


async def test_no_audit_record_no_command(settings: Settings, tmp_path: Path,
                                          state_url: str) -> None:
    async with api_stack(settings, tmp_path, state_url=state_url) as s:
        async with s.store.db.begin() as conn:
            await conn.execute(sa.text("ALTER TABLE api_audit RENAME TO api_audit_away"))
        async with Collector(settings.mqtt, commands_of(s)) as published:
            for action, bollards in (("raise", ["bollard-s05"]), ("emergency_rise", [])):
                reply = await s.command("otto", action, bollards=bollards)
                assert reply.status_code == 503, reply.text
                assert "audit log" in reply.json()["detail"]
            await s.nothing_published(published)
        async with s.store.db.begin() as conn:
            await conn.execute(sa.text("ALTER TABLE api_audit_away RENAME TO api_audit"))
        async with Collector(settings.mqtt, commands_of(s)) as published:
            reply = await s.command("otto", "emergency_rise", command_id="rise-after")
            assert reply.status_code == 202
            await published.wait_for(1)
        assert published.decoded(m.Command)[0].id == "rise-after"


async def test_broker_away_command_is_not_sent_and_says_so(
        tmp_path: Path, own_mosquitto: MosquittoServer, influx_server: InfluxServer,
        unique: str) -> None:
    settings = make_settings(tmp_path, own_mosquitto.url, influx_server.url, f"test_{unique}")
    async with api_stack(settings, tmp_path) as s:
        own_mosquitto.stop()
        await eventually(lambda: s.http.get("/readyz"), lambda r: r.status_code == 503, 30,
                         "the API to notice the broker is away")
        assert (await s.http.get("/readyz")).json()["checks"]["mqtt"] is False
        reply = await s.command("otto", "emergency_rise", command_id="rise-no-broker")
        assert reply.status_code == 503 and "new id" in reply.json()["detail"]
        view = (await s.get("/api/commands/rise-no-broker")).json()
        assert view["status"] == "failed" and view["final"] is True
        events = [a["event"] for a in (await s.get("/api/audit", "sam",
                                                   command="rise-no-broker")).json()]
        assert sorted(events) == ["requested", "send_failed"]
