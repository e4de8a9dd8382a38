"""Dashboards as code: the exported files are current and valid for Grafana 11.6, every
panel's query returns series from a real InfluxDB holding simulated campus data, and
the push to Grafana is idempotent (against a local stand-in for Grafana's HTTP API)."""

from __future__ import annotations

import copy
import json
import time
from pathlib import Path
from typing import Any

import pytest
import yaml
from aiohttp import web
from aiohttp.typedefs import Handler
from grafana_foundation_sdk.cog.encoder import JSONEncoder
from grafana_foundation_sdk.models.dashboard import Dashboard
from pydantic import SecretStr

from dashboards import SCHEMA_VERSION
from dashboards.check import run_all
from dashboards.export import HERE, dashboards, files
from dashboards.influxql import DATASOURCE_UID
from dashboards.push import push
from dashboards.validate import problems
from facility.influx import InfluxClient
from facility.schema import ENERGY, EV_CHARGING, ensure_downsampling, rebuild
from facility.settings import GrafanaSettings, Settings
from facility.site import load_site
from tests.reportdata import campus_lines, write_lines

UIDS = {"facility-overview", "facility-bollards", "facility-fire", "facility-drainage",
        "facility-ev", "facility-energy"}


def test_exported_files_are_current() -> None:
    for relative, content in files().items():
        path = HERE / relative
        assert path.exists(), f"{relative} is missing: run `facility dashboards export`"
        assert path.read_text(encoding="utf-8") == content, \
            f"{relative} is stale: run `facility dashboards export`"


def test_dashboards_are_valid_for_grafana_11_6() -> None:
    boards = dashboards()
    assert {b["uid"] for b in boards} == UIDS
    for board in boards:
        assert board["schemaVersion"] == SCHEMA_VERSION == 41
        assert problems(board) == []
        assert board["panels"], board["uid"]
        # The SDK's typed model (generated from Grafana 11.6's schema) reads it back
        # to the same JSON: no unknown or mistyped field.
        again = json.loads(json.dumps(Dashboard.from_json(copy.deepcopy(board)),
                                      cls=JSONEncoder))
        assert again == board
    sources = yaml.safe_load((HERE / "provisioning/datasources/facility-influxdb.yaml")
                             .read_text(encoding="utf-8"))
    assert sources["apiVersion"] == 1
    (source,) = sources["datasources"]
    assert source["type"] == "influxdb" and source["uid"] == DATASOURCE_UID
    assert source["jsonData"]["version"] == "InfluxQL"
    providers = yaml.safe_load((HERE / "provisioning/dashboards/facility.yaml")
                               .read_text(encoding="utf-8"))
    assert providers["providers"][0]["type"] == "file"


def test_the_validator_finds_broken_dashboards() -> None:
    board = copy.deepcopy(next(b for b in dashboards() if b["uid"] == "facility-energy"))
    board["schemaVersion"] = 39
    board["panels"][1]["gridPos"] = dict(board["panels"][0]["gridPos"])  # overlap
    board["panels"][2]["targets"][0]["query"] += " AND $nowhere"
    board["panels"][3]["id"] = board["panels"][4]["id"]
    found = "\n".join(problems(board))
    for expected in ("schemaVersion 39", "overlaps", "$nowhere is not defined", "not unique"):
        assert expected in found


async def test_every_panel_query_returns_series(settings: Settings,
                                                influx: InfluxClient) -> None:
    site = load_site(settings.site_path)
    await ensure_downsampling(influx, settings.reports)
    end = time.time_ns() // 60_000_000_000 * 60_000_000_000
    start = end - 3 * 86_400 * 10**9
    # Energy over three days (the daily panels need several), everything every 30 min.
    await write_lines(influx, campus_lines(site, start, end, 30 * 60 * 10**9))
    for rollup in (ENERGY, EV_CHARGING):
        await rebuild(influx, rollup, start - 86_400 * 10**9, end + 86_400 * 10**9)
    results = await run_all(influx, dashboards(), start // 10**6, end // 10**6)
    assert len(results) == 55 + 2  # every target of every panel, and the variables
    failing = [f"{r.dashboard} / {r.panel} / {r.ref_id}: {r.error or 'no data'}\n  {r.query}"
               for r in results if not r.ok]
    assert not failing, "\n".join(failing)
    assert {r.dashboard for r in results} == UIDS


class FakeGrafana:
    """The part of Grafana's HTTP API that grafana-client calls for a push, with
    Grafana's rules: 404 for what is missing, 409 for a second data source or folder of
    the same uid, a new version on each dashboard save, and a bearer token required."""

    def __init__(self, token: str) -> None:
        self.token = token
        self.requests: list[tuple[str, str]] = []
        self.datasources: dict[str, dict[str, Any]] = {}
        self.folders: dict[str, dict[str, Any]] = {}
        self.dashboards: dict[str, dict[str, Any]] = {}
        app = web.Application(middlewares=[self._record])
        app.add_routes([
            web.get("/api/frontend/settings", self.settings),
            web.get("/api/datasources/uid/{uid}", self.get_datasource),
            web.post("/api/datasources", self.add_datasource),
            web.put("/api/datasources/uid/{uid}", self.put_datasource),
            web.get("/api/folders/{uid}", self.get_folder),
            web.post("/api/folders", self.add_folder),
            web.get("/api/dashboards/uid/{uid}", self.get_dashboard),
            web.post("/api/dashboards/db", self.save_dashboard),
        ])
        self.app = app

    @web.middleware
    async def _record(self, request: web.Request, handler: Handler) -> web.StreamResponse:
        self.requests.append((request.method, request.path_qs))
        if request.headers.get("Authorization") != f"Bearer {self.token}":
            return web.json_response({"message": "Unauthorized"}, status=401)
        return await handler(request)

    def writes(self) -> list[tuple[str, str]]:
        return [r for r in self.requests if r[0] != "GET"]

    async def settings(self, request: web.Request) -> web.Response:
        # grafana-client's health check reads the build info from here.
        return web.json_response({"buildInfo": {"version": "11.6.0", "env": "production"}})

    async def get_datasource(self, request: web.Request) -> web.Response:
        found = self.datasources.get(request.match_info["uid"])
        if found is None:
            return web.json_response({"message": "Data source not found"}, status=404)
        shown = {k: v for k, v in found.items() if k != "secureJsonData"}
        shown["secureJsonFields"] = {k: True for k in found.get("secureJsonData", {})}
        return web.json_response(shown)

    async def add_datasource(self, request: web.Request) -> web.Response:
        body = await request.json()
        if body["uid"] in self.datasources or \
                any(d["name"] == body["name"] for d in self.datasources.values()):
            return web.json_response({"message": "data source with the same name already "
                                                 "exists"}, status=409)
        self.datasources[body["uid"]] = {**body, "id": len(self.datasources) + 1}
        return web.json_response({"message": "Datasource added", "id": len(self.datasources)})

    async def put_datasource(self, request: web.Request) -> web.Response:
        uid = request.match_info["uid"]
        if uid not in self.datasources:
            return web.json_response({"message": "Data source not found"}, status=404)
        self.datasources[uid] = {**await request.json(), "id": self.datasources[uid]["id"]}
        return web.json_response({"message": "Datasource updated"})

    async def get_folder(self, request: web.Request) -> web.Response:
        found = self.folders.get(request.match_info["uid"])
        if found is None:
            return web.json_response({"message": "folder not found"}, status=404)
        return web.json_response(found)

    async def add_folder(self, request: web.Request) -> web.Response:
        body = await request.json()
        if body["uid"] in self.folders:
            return web.json_response({"message": "a folder with the same uid already exists"},
                                     status=409)
        self.folders[body["uid"]] = {"uid": body["uid"], "title": body["title"],
                                     "id": len(self.folders) + 1}
        return web.json_response(self.folders[body["uid"]])

    async def get_dashboard(self, request: web.Request) -> web.Response:
        found = self.dashboards.get(request.match_info["uid"])
        if found is None:
            return web.json_response({"message": "Dashboard not found"}, status=404)
        return web.json_response(found)

    async def save_dashboard(self, request: web.Request) -> web.Response:
        body = await request.json()
        board = body["dashboard"]
        existing = self.dashboards.get(board["uid"])
        if existing is not None and not body.get("overwrite"):
            return web.json_response({"message": "A dashboard with the same uid already "
                                                 "exists", "status": "name-exists"}, status=412)
        version = existing["dashboard"]["version"] + 1 if existing else 1
        number = existing["dashboard"]["id"] if existing else len(self.dashboards) + 1
        self.dashboards[board["uid"]] = {
            "dashboard": {**board, "id": number, "version": version},
            "meta": {"folderUid": body.get("folderUid", "")}}
        return web.json_response({"id": number, "uid": board["uid"], "version": version,
                                  "status": "success"})


async def test_push_is_idempotent(settings: Settings) -> None:
    grafana = FakeGrafana(token="glsa_test_token")
    runner = web.AppRunner(grafana.app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = runner.addresses[0][1]
    settings = settings.model_copy(update={"grafana": GrafanaSettings(
        url=f"http://127.0.0.1:{port}", token=SecretStr("glsa_test_token"))})
    try:
        first = await push(settings)
        assert first.grafana_version == "11.6.0"
        assert len(first.created) == 8 and not first.updated  # source, folder, 6 boards
        assert set(grafana.dashboards) == UIDS
        assert all(d["meta"]["folderUid"] == "facility" for d in grafana.dashboards.values())
        writes = len(grafana.writes())

        second = await push(settings)
        assert not second.created and not second.updated and len(second.unchanged) == 8
        assert len(grafana.writes()) == writes, "a push with no change writes nothing"
        assert len(grafana.dashboards) == 6 and len(grafana.datasources) == 1
        assert all(d["dashboard"]["version"] == 1 for d in grafana.dashboards.values())

        # Someone edited a dashboard in Grafana: the next push puts ours back, once.
        grafana.dashboards["facility-fire"]["dashboard"]["title"] = "edited"
        third = await push(settings)
        assert third.updated == ["dashboard facility-fire"]
        assert grafana.dashboards["facility-fire"]["dashboard"]["version"] == 2
        assert grafana.dashboards["facility-fire"]["dashboard"]["title"] == "消防安全"

        bad = settings.model_copy(update={"grafana": GrafanaSettings(
            url=f"http://127.0.0.1:{port}", token=SecretStr("wrong"))})
        from dashboards.push import PushError

        with pytest.raises(PushError, match=r"Unauthorized|401"):
            await push(bad)
    finally:
        await runner.cleanup()


def test_every_dashboard_has_a_file(tmp_path: Path) -> None:
    from dashboards.export import write

    written = write(tmp_path)
    assert {p.stem for p in written if p.suffix == ".json"} == UIDS
    assert write(tmp_path) == []  # writing again changes nothing
