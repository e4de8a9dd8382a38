"""The duty routes of the control-room API (api/routes/duty.py): reads from the duty
store, roles, handover recorded once, work orders acted on through the running duty
service in the user's name. The routes run in a FastAPI app of their own with the login
replaced by a fixed user (the login itself is test_api_auth's)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path
from types import SimpleNamespace

import httpx
import pytest
from fastapi import FastAPI

from api.auth import Role, User
from api.deps import context, current_user
from api.routes import duty as duty_routes
from facility.localservers import MosquittoServer
from tests.test_duty_service import SITE, Phones, duty
from tests.test_duty_service import phones as phones  # the fixture, re-exported


def app_for(service_settings: object, role: Role) -> FastAPI:
    app = FastAPI()
    app.include_router(duty_routes.router)
    ctx = SimpleNamespace(settings=service_settings, site_id=SITE)
    user = User(username=f"{role.value}-1", role=role, zones=())

    async def fixed_context() -> object:
        return ctx

    async def fixed_user() -> User:
        return user

    app.dependency_overrides[context] = fixed_context
    app.dependency_overrides[current_user] = fixed_user
    return app


@pytest.fixture
async def clients(tmp_path: Path, mosquitto_server: MosquittoServer,
                  monkeypatch: pytest.MonkeyPatch, phones: Phones
                  ) -> AsyncIterator[tuple[httpx.AsyncClient, httpx.AsyncClient]]:
    state_url = f"sqlite:///{tmp_path / 'state.sqlite'}"
    async with duty(tmp_path, mosquitto_server, state_url, phones.clock, monkeypatch,
                    phones) as svc:
        monkeypatch.setenv("FACILITY_DUTY_PORT", svc.web_url.rsplit(":", 1)[1])
        monkeypatch.setenv("FACILITY_DUTY_SECRET", "s" * 40)
        async with httpx.AsyncClient(transport=httpx.ASGITransport(
                    app_for(svc.settings, Role.OPERATOR)), base_url="http://api") as op, \
                httpx.AsyncClient(transport=httpx.ASGITransport(
                    app_for(svc.settings, Role.VIEWER)), base_url="http://api") as viewer:
            yield op, viewer


async def test_duty_routes(clients: tuple[httpx.AsyncClient, httpx.AsyncClient]) -> None:
    op, viewer = clients
    now = (await viewer.get("/api/duty/now", params={"at": "2026-12-06T03:00:00+08:00"})).json()
    room = next(t for t in now if t["team"] == "control_room")
    assert room["people"] == [{"id": "guard-li", "name": "李建华"}]
    naive = await viewer.get("/api/duty/now", params={"at": "2026-12-05T19:00:00"})  # UTC
    assert next(t for t in naive.json() if t["team"] == "control_room")["people"] == \
        [{"id": "guard-li", "name": "李建华"}]
    assert (await viewer.get("/api/duty/shifts", params={
        "since": "2026-12-05T00:00:00", "until": "2026-12-07T00:00:00+08:00"})).status_code == 200
    shifts = await viewer.get("/api/duty/shifts", params={"team": "control_room"})
    assert shifts.status_code == 200 and shifts.json()
    assert {s["name"] for s in shifts.json()} >= {"李建华", "王伟"}
    words = (await viewer.get("/api/duty/labels")).json()
    assert words["workorder_state"]["verified"] == "已验证"
    assert words["event"]["escalated"] == "已升级"
    # A viewer may read, not act.
    assert (await viewer.post("/api/workorders", json={"fault": "x"})).status_code == 403
    made = await op.post("/api/workorders", json={
        "kind": "hotline", "number": "12345-0099", "place": "south-gate",
        "fault": "南门树根堵塞排水管", "priority": 2})
    assert made.status_code == 200, made.text
    order = made.json()
    assert order["timeline"][0]["by"] == "operator-1" and order["number"] == "12345-0099"
    wrong = await op.post(f"/api/workorders/{order['id']}/resolve", json={})
    assert wrong.status_code == 409 and "不能改为" in wrong.json()["detail"]
    assigned = await op.post(f"/api/workorders/{order['id']}/assign",
                             json={"assignee": "repair-sun"})
    assert assigned.json()["state"] == "assigned"
    listed = (await viewer.get("/api/workorders")).json()
    assert [o["id"] for o in listed] == [order["id"]]
    hand = await op.post("/api/duty/handovers", json={"incoming": "guard-wang",
                                                      "notes": ["南门排水工单已派"]})
    assert hand.status_code == 200
    body = hand.json()
    assert body["outgoing"] == "operator-1"
    assert [o["id"] for o in body["items"]["workorders"]] == [order["id"]]
    acked = await op.post(f"/api/duty/handovers/{body['id']}/ack")
    assert acked.json()["acked_by"] == "operator-1"
    assert (await op.post(f"/api/duty/handovers/{body['id']}/ack")).status_code == 409
    assert (await viewer.get("/api/duty/notifications")).status_code == 200
