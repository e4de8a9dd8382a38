"""Fixtures: real Mosquitto and InfluxDB processes on free ports, private data dirs.

Each test gets its own InfluxDB database and its own MQTT site id, so tests sharing a
server never see each other's data. Servers that a test breaks on purpose (stop, pause,
restart) come from the function-scoped `own_*` fixtures instead.
"""

from __future__ import annotations

import asyncio
import dataclasses
import functools
import threading
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest
from pydantic import SecretStr

from facility.catalog import Catalog, load_catalog
from facility.endpoints import EndpointConfig
from facility.influx import InfluxClient
from facility.localservers import InfluxServer, MosquittoServer, postgres_database
from facility.settings import InfluxSettings, MqttSettings, Settings, load_settings
from facility.site import SiteConfig

REPO = Path(__file__).resolve().parent.parent
SITE_FILE = REPO / "config" / "site.yaml"


@functools.cache
def _shipped_catalog() -> Catalog:
    return load_catalog(load_settings(REPO / "config" / "facility.yaml"))


def catalog(site: SiteConfig | None = None) -> Catalog:
    """The catalog of the repository's config/ (read once per run), with `site` in place
    of the site file when given: a test's ports, devices or site id, checked again. A
    test's own small site, where the campus's screens do not stand, has no endpoints."""
    shipped = _shipped_catalog()
    if site is None:
        return shipped
    zones = {z.id for z in site.zones}
    if all(set(e.zones) <= zones for e in shipped.endpoints.endpoints):
        return shipped.with_site(site)
    return dataclasses.replace(shipped, site=site,
                               endpoints=EndpointConfig(version=1, endpoints=[]))

# The fast tier (`scripts/test --fast`, i.e. `-m "not servers"`) is every test that needs
# no server. A test that asks, directly or through another fixture, for one of these gets
# the `servers` marker here; a test that starts a server itself (a pymodbus server, a
# Mosquitto or InfluxDB process, Chromium, a subprocess) carries the marker in its module.
SERVER_FIXTURES = frozenset({"mosquitto_server", "influx_server", "own_mosquitto",
                             "own_influx", "settings", "influx", "pg_url"})


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers", "servers: starts or needs a server (Mosquitto, InfluxDB, PostgreSQL, "
        "pymodbus, Chromium, a service process); `scripts/test --fast` leaves these out")


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        names = set(getattr(item, "fixturenames", ()))
        callspec = getattr(item, "callspec", None)
        postgres = callspec is not None and callspec.params.get("state_url") == "postgresql"
        if names & SERVER_FIXTURES or postgres:
            item.add_marker(pytest.mark.servers)


@pytest.fixture(scope="session")
def mosquitto_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[MosquittoServer]:
    server = MosquittoServer(tmp_path_factory.mktemp("mosquitto"),
                             extra_config="max_queued_messages 100000\n")
    server.start()
    yield server
    server.stop()


@pytest.fixture(scope="session")
def influx_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[InfluxServer]:
    server = InfluxServer(tmp_path_factory.mktemp("influxdb"))
    server.start()
    yield server
    server.stop()


@pytest.fixture
def own_mosquitto(tmp_path: Path) -> Iterator[MosquittoServer]:
    server = MosquittoServer(tmp_path / "mosquitto", extra_config="max_queued_messages 100000\n")
    server.start()
    yield server
    server.stop()


@pytest.fixture
def own_influx(tmp_path: Path) -> Iterator[InfluxServer]:
    server = InfluxServer(tmp_path / "influxdb")
    server.start()
    yield server
    server.stop()


@pytest.fixture
def unique() -> str:
    """A short id unique to this test: database names, client ids, topic prefixes."""
    return uuid.uuid4().hex[:10]


def make_settings(tmp_path: Path, mqtt_url: str, influx_url: str, database: str,
                  **overrides: object) -> Settings:
    return load_settings(
        REPO / "config" / "facility.yaml",
        site_file=str(SITE_FILE),
        mqtt=MqttSettings(url=SecretStr(mqtt_url)),
        influx=InfluxSettings(url=influx_url, database=database),
        spool={"dir": str(tmp_path / "spool")},
        **overrides,
    )


@pytest.fixture
def settings(tmp_path: Path, mosquitto_server: MosquittoServer, influx_server: InfluxServer,
             unique: str) -> Settings:
    return make_settings(tmp_path, mosquitto_server.url, influx_server.url, f"test_{unique}")


@pytest.fixture
async def influx(settings: Settings) -> AsyncIterator[InfluxClient]:
    async with InfluxClient(settings.influx) as client:
        await client.ensure_database()
        yield client


@pytest.fixture(autouse=True)
def no_leaked_threads() -> Iterator[None]:
    """Fail a test that leaves threads running (the pymodbus system_health_check habit)."""
    before = set(threading.enumerate())
    yield
    # asyncio_N threads are the test loop's default executor (aiomqtt connects through it);
    # pytest-asyncio shuts them down with the loop, after this fixture.
    leaked = [t for t in threading.enumerate() if t not in before and t.is_alive()
              and not t.daemon and not t.name.startswith("asyncio_")]
    assert not leaked, f"test leaked threads: {leaked}"


@pytest.fixture(autouse=True)
async def no_leaked_tasks() -> AsyncIterator[None]:
    """Fail a test that leaves asyncio tasks running on its loop."""
    yield
    current = asyncio.current_task()
    pending = [t for t in asyncio.all_tasks() if t is not current and not t.done()]
    # Cancelled tasks, and closes that libraries schedule when a connection is collected
    # (SQLAlchemy's aiosqlite adapter does), get a moment to finish; still running after
    # that, a task has leaked.
    deadline = asyncio.get_running_loop().time() + 2.0
    while pending and asyncio.get_running_loop().time() < deadline:
        await asyncio.sleep(0.01)
        pending = [t for t in pending if not t.done()]
    assert not pending, "test leaked tasks:\n" + "\n".join(_where(t) for t in pending)


def _where(task: asyncio.Task[object]) -> str:
    """A leaked task's name and where it waits, so a leak seen once in CI can be found."""
    frames = task.get_stack(limit=3)
    at = " <- ".join(f"{f.f_code.co_filename.rsplit('/', 2)[-1]}:{f.f_lineno}" for f in frames)
    return f"{task.get_name()} {task.get_coro()!r} at {at}"


@pytest.fixture(params=["sqlite", "postgresql"])
def state_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    """A fresh state store: an SQLite file, or a new database on the machine's PostgreSQL."""
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path / 'state.sqlite'}"
        return
    with postgres_database() as url:
        yield url


@pytest.fixture
def pg_url() -> Iterator[str]:
    """A new database on the machine's PostgreSQL, dropped afterwards."""
    with postgres_database() as url:
        yield url
