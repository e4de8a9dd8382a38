"""InfluxDB routing by site (facility/influxroutes.py) against two real InfluxDB servers:
ingest writes each site's points only to its server, and the API's history and the
reports' rollups read them back from that server."""

from __future__ import annotations

import argparse
from datetime import UTC, datetime
from pathlib import Path

import pytest
from pydantic import SecretStr

from facility import messages as m
from facility import topics
from facility.influx import InfluxClient
from facility.influxroutes import DEFAULT, InfluxRouter, all_routes, route_for, route_name
from facility.localservers import InfluxServer
from facility.settings import InfluxRoute, InfluxSettings, Settings
from facility.site import load_site, site_for
from ingest.service import Ingest
from reports.cli import cmd_rollup
from tests.conftest import SITE_FILE, catalog
from tests.helpers import eventually, publish_all, rows
from tests.test_api_stack import api_stack

DAY = datetime(2026, 10, 5, 2, 0, tzinfo=UTC)  # 10:00 in Guangzhou
N = 30


def test_the_first_matching_route_wins_and_the_rest_stay_on_the_default() -> None:
    influx = InfluxSettings(url="http://a:8086", database="main", username="u", routes=[
        InfluxRoute(name="schools", sites=["school-*", "kg-1"], url="http://b:8086"),
        InfluxRoute(name="all-s", sites=["s*"], url="http://c:8086", database="other",
                    token=SecretStr("t0ken"))])
    assert route_name(influx, "school-3") == "schools"
    assert route_name(influx, "kg-1") == "schools"
    assert route_name(influx, "kg-2") == DEFAULT
    assert route_name(influx, "site-9") == "all-s"
    school = route_for(influx, "school-3")
    assert (school.url, school.database, school.username) == ("http://b:8086", "main", "u")
    other = route_for(influx, "site-9")
    assert (other.url, other.database, other.username) == ("http://c:8086", "other", None)
    assert other.token is not None and other.token.get_secret_value() == "t0ken"
    assert route_for(influx, "panyu").url == "http://a:8086"
    assert list(all_routes(influx)) == [DEFAULT, "schools", "all-s"]
    with pytest.raises(ValueError, match="route names"):
        InfluxSettings(routes=[InfluxRoute(name="default", sites=["x"], url="http://b:1")])


async def test_a_router_opens_one_client_per_server_and_closes_them() -> None:
    influx = InfluxSettings(url="http://a:8086", routes=[
        InfluxRoute(name="schools", sites=["school-*"], url="http://b:8086", database="s")])
    async with InfluxRouter(influx) as router:
        one, two = await router.client("school-1"), await router.client("school-2")
        main = await router.client("panyu")
        assert one is two and one is not main
        assert (one.settings.url, one.database, main.settings.url) == \
            ("http://b:8086", "s", "http://a:8086")
    with pytest.raises(RuntimeError, match="inside 'async with'"):
        _ = one.session  # closed with the router


def _readings(site: str, base: float) -> list[tuple[str, bytes]]:
    start = int(DAY.timestamp()) * 10**9
    out = []
    for i in range(N):
        reading = m.Reading(site=site, family=m.Family.ENERGY, device="em-main-total",
                            ts=start + i * 60 * 10**9, gateway="gw-energy", seq=i + 1,
                            values={"power_total": base + i, "energy_import": 1000.0 + i},
                            tags={"place": "main-building", "load": "total"})
        out.append((topics.telemetry(site, "energy", "em-main-total"), m.encode(reading)))
    return out


async def _count(server: InfluxSettings, site: str, rp: str = "raw",
                 measurement: str = "energy") -> int:
    async with InfluxClient(server) as influx:
        found = await rows(influx, f'SELECT count(*) FROM "{rp}"."{measurement}" '
                                   f"WHERE site = '{site}'")
    return max((v for r in found for k, v in r.items() if k != "time"), default=0)


async def test_each_sites_points_live_and_are_read_on_its_own_server(
        settings: Settings, own_influx: InfluxServer, tmp_path: Path, unique: str) -> None:
    east, west = f"east-{unique}", f"t-{unique}"
    routed = settings.model_copy(update={
        "influx": settings.influx.model_copy(update={"routes": [InfluxRoute(
            name="east", sites=["east-*"], url=own_influx.url, database=f"east_{unique}")]}),
        "ingest": settings.ingest.model_copy(update={
            "client_id": f"ingest-{unique}", "batch_interval": 0.05, "session_expiry": 60})})
    east_server, west_server = route_for(routed.influx, east), route_for(routed.influx, west)
    assert east_server.url == own_influx.url and west_server.url == settings.influx.url

    async with Ingest(routed) as ingest:
        await ingest.wait_ready()
        await publish_all(routed.mqtt, _readings(east, 500.0) + _readings(west, 100.0))

        async def counts() -> tuple[int, int]:
            return await _count(east_server, east), await _count(west_server, west)
        await eventually(counts, lambda c: c == (N, N), 30, "both sites' points stored")
    # Nothing of either site on the other's server.
    assert await _count(east_server, west) == 0
    assert await _count(west_server, east) == 0

    # The API of each site reads its history from its site's server.
    for site, base in ((east, 500.0), (west, 100.0)):
        async with api_stack(routed, tmp_path / site, site_id=site) as stack:
            reply = await stack.get("/api/devices/em-main-total/history", field="power_total",
                                    start=DAY.isoformat(), end=DAY.replace(hour=3).isoformat(),
                                    points=N, aggregate="max")
            assert reply.status_code == 200, reply.text
            values = [p["v"] for p in reply.json()["points"]]
            assert values and max(values) == base + N - 1, values

    # The report command rebuilds the rollups the reports read on the site's server only.
    args = argparse.Namespace(from_="2026-10-05", to="2026-10-05", no_progress=True)
    east_catalog = catalog(site_for(load_site(SITE_FILE), east))
    assert await cmd_rollup(args, routed, east_catalog) == 0
    assert await _count(east_server, east, "rollup", "energy_15m") > 0
    assert await _count(west_server, east, "rollup", "energy_15m") == 0
