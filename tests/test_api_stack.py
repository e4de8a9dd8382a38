"""The control-room API on real servers, for the API and page tests: the API service
(uvicorn on a free port), optionally the rules engine with the simulated screens, and the
simulated bollard PLC with the real gateway. Each stack runs on its own site id, so
retained messages and stored state of one test never reach another.

Also the tests of `facility users ...` (the first admin from the command line).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import subprocess
import sys
import uuid
from collections.abc import AsyncIterator, Iterable
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import httpx
from pydantic import SecretStr

from api.auth import Passwords, Role, User
from api.service import ApiService
from api.store import ApiStore
from facility import topics
from facility.messages import Family
from facility.settings import Settings, StateSettings
from facility.site import SiteConfig, load_site, site_for
from gateway.service import Gateway
from ingest.service import Ingest
from rules.service import RulesService
from simulators.campus import Campus
from simulators.clock import SimClock
from simulators.display_player import DisplayPlayer
from tests.conftest import REPO, SITE_FILE, catalog
from tests.helpers import Collector, eventually, publish_all

PASSWORD = "correct horse battery"  # test users only; 21 characters
PLC = "bollard-plc-south"
# 02:00 on a weekday night: every bollard is up and no vehicles pass.
NIGHT = datetime(2026, 11, 25, 2, 0, tzinfo=ZoneInfo("Asia/Shanghai")).timestamp()

# The people of the tests: who may do what where.
PEOPLE: dict[str, tuple[Role, tuple[str, ...]]] = {
    "vera": (Role.VIEWER, ("*",)),
    "otto": (Role.OPERATOR, ("parking", "south-gate")),  # the south-gate guard
    "olga": (Role.OPERATOR, ("canteen", "west-annex", "west-gate")),  # the west side
    "sam": (Role.SUPERVISOR, ("*",)),
    "sue": (Role.SUPERVISOR, ("*",)),
    "ada": (Role.ADMIN, ("*",)),
}


def new_site_id() -> str:
    return f"t-{uuid.uuid4().hex[:10]}"


def stack_settings(settings: Settings, state_url: str, **api: Any) -> Settings:
    return settings.model_copy(update={
        "state": StateSettings(url=SecretStr(state_url)),
        "api": settings.api.model_copy(update={"host": "127.0.0.1", "port": 0, **api})})


@dataclass
class Stack:
    settings: Settings
    site: SiteConfig
    api: ApiService
    http: httpx.AsyncClient
    store: ApiStore
    tokens: dict[str, str] = field(default_factory=dict)
    rules: RulesService | None = None
    player: DisplayPlayer | None = None
    campus: Campus | None = None
    gateways: list[Gateway] = field(default_factory=list)

    @property
    def site_id(self) -> str:
        return self.site.site.id

    def auth(self, who: str) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.tokens[who]}"}

    async def login(self, who: str, password: str = PASSWORD) -> httpx.Response:
        return await self.http.post("/api/auth/login",
                                    json={"username": who, "password": password})

    async def get(self, path: str, who: str = "vera", **params: Any) -> httpx.Response:
        return await self.http.get(path, headers=self.auth(who), params=params)

    async def post(self, path: str, who: str, body: dict[str, Any] | None = None,
                   **params: Any) -> httpx.Response:
        return await self.http.post(path, headers=self.auth(who), json=body or {},
                                    params=params)

    async def command(self, who: str, action: str, *, bollards: list[str] | None = None,
                      command_id: str | None = None, reason: str = "演练 drill",
                      wait: float = 0, **extra: Any) -> httpx.Response:
        body = {"id": command_id or uuid.uuid4().hex, "action": action,
                "bollards": bollards or [], "reason": reason, **extra}
        return await self.post("/api/commands", who, body, wait=wait)

    def unit(self, n: int) -> dict[str, Any]:
        assert self.campus is not None
        unit: dict[str, Any] = self.campus.plc().snapshot()["units"][n]
        return unit

    async def nothing_published(self, collector: Collector) -> None:
        """Everything published before now has reached `collector` once a marker sent
        now arrives (the broker keeps order); then the collector must hold nothing else."""
        marker = topics.command(self.site_id, "bollard", "marker")
        await publish_all(self.settings.mqtt, [(marker, b"marker")])
        await collector.wait_for(1)
        assert collector.messages == [(marker, b"marker")], collector.messages[:3]


async def add_people(store: ApiStore, settings: Settings) -> None:
    passwords = Passwords(settings.api.min_password_length)
    hashed = await passwords.hash(PASSWORD)  # one hash for all: Argon2 is slow on purpose
    for name, (role, zones) in PEOPLE.items():
        assert await store.add_user(User(name, role, zones, display_name=name), hashed,
                                    created_by="test")


MQTT_FAMILIES = {Family.FIRE, Family.EV_CHARGER, Family.DRAINAGE, Family.GAS}


@contextlib.asynccontextmanager
async def api_stack(settings: Settings, tmp_path: Path, *, state_url: str | None = None,
                    rules: bool = False, simulate: Iterable[Family] = (), scale: float = 4.0,
                    start: float | None = NIGHT, ingest: bool = False,
                    site_id: str | None = None, **api: Any) -> AsyncIterator[Stack]:
    """The API on a new site; with `rules`, the rules engine and the simulated screens;
    with `simulate`, those simulated device families and the real gateways for them,
    on a simulated clock from `start` (None: now) at `scale` times real time."""
    families = set(simulate)
    site = site_for(load_site(SITE_FILE), site_id or new_site_id())
    settings = stack_settings(settings, state_url or f"sqlite:///{tmp_path / 'state.sqlite'}",
                              **api)
    async with contextlib.AsyncExitStack() as stack:
        store = await stack.enter_async_context(await ApiStore.open(settings.state_url))
        await add_people(store, settings)
        if ingest:  # readings into InfluxDB (the test's own database)
            await (await stack.enter_async_context(Ingest(settings))).wait_ready()
        gateways: list[Gateway] = []
        if families & MQTT_FAMILIES:  # listening before the simulated devices speak
            gateways.append(Gateway(settings, catalog(site), "gw-iot"))
            await stack.enter_async_context(gateways[-1])
            await gateways[-1].wait_ready()
        campus = None
        if families:
            campus = await stack.enter_async_context(Campus(
                site, settings.mqtt, clock=SimClock(start=start, scale=scale), seed=3,
                use_config_ports=False, families=families))
            site = campus.site  # with the simulated Modbus servers' bound ports
        service = player = None
        if rules:
            service = RulesService(settings, catalog(site), client_id=f"rules-{site.site.id}")
            player = DisplayPlayer.from_config(settings.mqtt, site.site.id, service.endpoints)
            await stack.enter_async_context(player)
            await stack.enter_async_context(service)
        api_service = ApiService(settings, catalog(site))
        await stack.enter_async_context(api_service)
        await api_service.wait_ready(60)
        for svc in (player, service):
            if svc is not None:
                await svc.wait_ready(60)
        for family, gateway_id in ((Family.BOLLARD, "gw-plc-south"),
                                   (Family.ENERGY, "gw-energy")):
            if family in families:
                gateways.append(Gateway(settings, catalog(site), gateway_id))
                await stack.enter_async_context(gateways[-1])
                await gateways[-1].wait_ready()
        http = await stack.enter_async_context(
            httpx.AsyncClient(base_url=api_service.url, timeout=60))
        await eventually(lambda: http.get("/readyz"), lambda r: r.status_code == 200, 30,
                         "the API ready")
        result = Stack(settings, site, api_service, http, store, rules=service,
                       player=player, campus=campus, gateways=gateways)
        for name in PEOPLE:
            reply = await result.login(name)
            assert reply.status_code == 200, reply.text
            result.tokens[name] = reply.json()["access_token"]
        yield result


class Sse:
    """A live-stream client in the background: the events it got, in order."""

    def __init__(self, http: httpx.AsyncClient, token: str, *, last_event_id: str = "",
                 **params: Any) -> None:
        self.http = http
        self.headers = {"Authorization": f"Bearer {token}"}
        if last_event_id:
            self.headers["Last-Event-ID"] = last_event_id
        self.params = params
        self.events: list[tuple[str, str, dict[str, Any]]] = []  # id, kind, data
        self.last_id = ""
        self._task: asyncio.Task[None] | None = None
        self._open = asyncio.Event()

    async def __aenter__(self) -> Sse:
        self._task = asyncio.create_task(self._read(), name="sse client")
        await asyncio.wait_for(self._open.wait(), 30)
        return self

    async def __aexit__(self, *exc: object) -> None:
        assert self._task is not None
        self._task.cancel()
        await asyncio.gather(self._task, return_exceptions=True)

    async def _read(self) -> None:
        async with self.http.stream("GET", "/api/stream", headers=self.headers,
                                    params=self.params, timeout=None) as reply:
            assert reply.status_code == 200, await reply.aread()
            assert reply.headers["content-type"].startswith("text/event-stream")
            self._open.set()
            event: dict[str, str] = {}
            async for line in reply.aiter_lines():
                if line == "":
                    if "event" in event:
                        self.events.append((event.get("id", ""), event["event"],
                                            json.loads(event.get("data", "{}"))))
                        self.last_id = event.get("id") or self.last_id
                    event = {}
                elif not line.startswith(":"):
                    name, _, value = line.partition(":")
                    event[name] = value.removeprefix(" ")

    def of(self, kind: str) -> list[dict[str, Any]]:
        return [data for _, k, data in self.events if k == kind]

    async def wait_for(self, kind: str, check: Any, what: str,
                       timeout: float = 30) -> dict[str, Any]:
        async def probe() -> list[dict[str, Any]]:
            return [d for d in self.of(kind) if check(d)]
        found = await eventually(probe, bool, timeout, what)
        return found[0]


# --- the command line: the first admin, never a default password ------------------------


def facility(args: list[str], env: dict[str, str],
             stdin: str = "") -> subprocess.CompletedProcess[str]:
    """`facility ...` in a new process, as an operator runs it."""
    main = "import sys; from app.cli import main; sys.exit(main())"
    return subprocess.run([sys.executable, "-c", main, *args], input=stdin,
                          capture_output=True, text=True, env={**os.environ, **env},
                          cwd=REPO, timeout=60)


def cli_env(settings: Settings, state_url: str) -> dict[str, str]:
    return {"FACILITY_STATE_URL": state_url,
            "FACILITY_MQTT_URL": settings.mqtt.url.get_secret_value(),
            "FACILITY_INFLUX_URL": settings.influx.url,
            "FACILITY_INFLUX_DATABASE": settings.influx.database}


async def test_first_admin_from_the_command_line(settings: Settings, state_url: str) -> None:
    env = cli_env(settings, state_url)
    listed = facility(["users", "list"], env)
    assert listed.returncode == 0 and "0 users" in listed.stdout  # nobody exists by default

    short = facility(["users", "add", "root", "--role", "admin", "--zones", "*",
                      "--password-stdin"], env, "short\n")
    assert short.returncode == 2 and "at least 10 characters" in short.stderr
    bad_zone = facility(["users", "add", "root", "--role", "admin", "--zones", "moon",
                         "--password-stdin"], env, PASSWORD + "\n")
    assert bad_zone.returncode == 2 and "unknown zones moon" in bad_zone.stderr

    added = facility(["users", "add", "root", "--role", "admin", "--zones", "*",
                      "--name", "系统管理员", "--password-stdin"], env, PASSWORD + "\n")
    assert added.returncode == 0, added.stderr
    again = facility(["users", "add", "root", "--role", "viewer", "--password-stdin"], env,
                     PASSWORD + "\n")
    assert again.returncode == 1 and "exists" in again.stderr

    async with await ApiStore.open(state_url) as store:
        user = await store.user("root")
        stored = await store.password_hash("root")
    assert user is not None and user.role is Role.ADMIN and user.zones == ("*",)
    assert user.display_name == "系统管理员"
    assert stored is not None and stored.startswith("$argon2id$") and PASSWORD not in stored
    assert PASSWORD not in added.stdout + added.stderr

    assert facility(["users", "disable", "root"], env).returncode == 0
    async with await ApiStore.open(state_url) as store:
        disabled = await store.user("root")
    assert disabled is not None and disabled.disabled
    assert facility(["users", "passwd", "nobody", "--password-stdin"], env,
                    PASSWORD + "\n").returncode == 1
