"""The API of a district (api/district.py, api/deps.py): one process serving several
sites, a request choosing its site with ?site=, and the overview of every site's open
incidents, alerts by severity and connectivity. On real servers: Mosquitto, InfluxDB,
PostgreSQL as the state store shared by the sites' rules engines and the API."""

from __future__ import annotations

import asyncio
import contextlib
import time
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import httpx
import pytest

from api.app import create_app
from api.district import connectivity
from api.models import GatewayCount
from api.service import ApiService
from api.store import ApiStore
from facility import messages as m
from facility import topics
from facility.catalog import Catalog, load_catalog, load_district
from facility.messages import Availability, Family
from facility.settings import Settings, load_settings
from rules.service import RulesService
from tests.conftest import REPO
from tests.helpers import eventually, publish_all
from tests.test_api_stack import PASSWORD, add_people, stack_settings

SITES = REPO / "config" / "sites"
CAMPUS, SCHOOL, HOSPITAL = "panyu-admin-centre", "panyu-school-shiqiao", "panyu-hospital-central"


def test_connectivity_from_gateways_and_the_bridge() -> None:
    def count(online: int, offline: int, unknown: int) -> GatewayCount:
        return GatewayCount(total=online + offline + unknown, online=online,
                            offline=offline, unknown=unknown)

    assert connectivity(count(2, 0, 0), {}) == "online"
    assert connectivity(count(1, 1, 0), {}) == "partial"
    assert connectivity(count(1, 0, 1), {}) == "partial"  # one not heard is not all online
    assert connectivity(count(0, 2, 0), {}) == "offline"
    assert connectivity(count(0, 1, 1), {}) == "offline"
    assert connectivity(count(0, 0, 2), {}) == "unknown"
    assert connectivity(count(0, 0, 0), {}) == "unknown"
    # A bridge down: the gateways' last statuses at the centre are stale.
    assert connectivity(count(2, 0, 0), {"centre": False}) == "unreachable"
    assert connectivity(count(2, 0, 0), {"centre": True, "backup": False}) == "unreachable"
    assert connectivity(count(2, 0, 0), {"centre": True}) == "online"


def test_the_description_names_the_sites_only_where_there_are_several() -> None:
    settings = load_settings(REPO / "config" / "facility.yaml", sites_dir="sites")
    sites = load_district(settings)
    spec = create_app(settings, sites[CAMPUS], sites).openapi()
    operations = [(path, o) for path, item in spec["paths"].items() for o in item.values()]
    for path, operation in operations:
        site = [p for p in operation.get("parameters", []) if p["name"] == "site"]
        if path.startswith("/api/"):
            assert site and site[0]["schema"]["enum"] == [CAMPUS, HOSPITAL, SCHOOL], path
    assert {"/api/sites", "/api/district"} <= set(spec["paths"])
    single = load_settings(REPO / "config" / "facility.yaml")
    spec = create_app(single, load_catalog(single)).openapi()
    assert not [path for path, item in spec["paths"].items() for o in item.values()
                for p in o.get("parameters", []) if p["name"] == "site"]


def district_of_test() -> dict[str, Catalog]:
    """The shipped sites folder, each site under an id of its own for this test."""
    tag = uuid.uuid4().hex[:6]
    sites = load_district(load_settings(REPO / "config" / "facility.yaml", sites_dir="sites"))
    return {sid: c.for_site(f"t{tag}-{sid}") for sid, c in sites.items()}


def status(site: str, gateway: str, online: bool) -> tuple[str, bytes]:
    state = Availability.ONLINE if online else Availability.OFFLINE
    return (topics.status(site, Family.GATEWAY, gateway),
            m.encode(m.DeviceStatus(site=site, family=Family.GATEWAY, device=gateway,
                                    ts=time.time_ns(), state=state, gateway=gateway)))


def water(site: str, device: str, cm: float) -> tuple[str, bytes]:
    return (topics.telemetry(site, Family.DRAINAGE, device),
            m.encode(m.Reading(site=site, family=Family.DRAINAGE, device=device,
                               ts=time.time_ns(), values={"water_level": cm},
                               units={"water_level": "cm"})))


@dataclass
class District:
    settings: Settings
    api: ApiService
    http: httpx.AsyncClient
    ids: dict[str, str]  # the shipped site's id -> its id in this test


@contextlib.asynccontextmanager
async def district_api(settings: Settings, state_url: str) -> AsyncIterator[District]:
    """The campus, the school and the hospital served by one API (the campus first), the
    school's and the hospital's rules engines, all on one state store."""
    district = district_of_test()
    settings = stack_settings(settings, state_url)
    async with contextlib.AsyncExitStack() as stack:
        store = await stack.enter_async_context(await ApiStore.open(settings.state_url))
        await add_people(store, settings)
        for site in (SCHOOL, HOSPITAL):  # an engine per site, one PostgreSQL between them
            engine = RulesService(settings, district[site],
                                  client_id=f"rules-{district[site].site.site.id}",
                                  rules_dir=SITES / f"{site}.rules")
            await stack.enter_async_context(engine)
            await engine.wait_ready(60)
        api = ApiService(settings, district[CAMPUS], district=district)
        await stack.enter_async_context(api)
        await api.wait_ready(60)
        http = await stack.enter_async_context(httpx.AsyncClient(base_url=api.url, timeout=30))
        yield District(settings, api, http, {s: c.site.site.id for s, c in district.items()})


async def flood_the_school_and_the_hospital(d: District) -> None:
    """The school's drain floods (critical), the hospital's sump rises (warning); the
    school's gateways are online, one of the hospital's is offline."""
    school, hospital = d.ids[SCHOOL], d.ids[HOSPITAL]
    await publish_all(d.settings.mqtt, [
        status(school, "gw-school-shiqiao-iot", True),
        status(school, "gw-school-shiqiao-energy", True),
        status(hospital, "gw-hospital-central-iot", True),
        status(hospital, "gw-hospital-central-energy", False)], retain=True)
    await publish_all(d.settings.mqtt, [water(school, "wl-school-shiqiao-gate", 45.0),
                                        water(hospital, "wl-hospital-central-sump", 28.0)])


@pytest.mark.parametrize("state_url", ["postgresql"], indirect=True)
async def test_one_api_serves_the_district_and_its_overview(
        settings: Settings, state_url: str) -> None:
    async with district_api(settings, state_url) as d:
        campus, school, hospital = (d.ids[s] for s in (CAMPUS, SCHOOL, HOSPITAL))
        settings, http = d.settings, d.http
        login = await http.post("/api/auth/login", json={"username": "vera",
                                                          "password": PASSWORD})
        assert login.status_code == 200, login.text
        auth = {"Authorization": f"Bearer {login.json()['access_token']}"}

        async def get(path: str, **params: Any) -> httpx.Response:
            return await http.get(path, headers=auth, params=params)

        # Ready when every site's broker link is up (a context per site).
        ready = await eventually(lambda: http.get("/readyz"), lambda r: r.status_code == 200,
                                 30, "the API ready")
        assert ready.json()["checks"]["mqtt"] is True
        # The sites it serves; one login is good at each of them.
        listed = (await get("/api/sites")).json()
        assert [(s["id"], s["home"]) for s in listed] == \
            [(campus, True), (hospital, False), (school, False)]
        assert {s["id"]: s["kind"] for s in listed} == \
            {campus: "office", hospital: "hospital", school: "school"}
        assert (await get("/api/site")).json()["name"] == "番禺区行政办公中心"
        assert (await get("/api/site", site=school)).json()["name"] == "番禺区市桥第一小学"
        devices = (await get("/api/devices", site=hospital, zone="basement")).json()
        assert {d["id"] for d in devices} == {"fd-hospital-central-02", "efm-hospital-central",
                                             "wl-hospital-central-sump"}
        # The zones of the site asked for: the campus has no basement; no unknown sites.
        assert (await get("/api/devices", zone="basement")).status_code == 422
        refused = await get("/api/site", site="panyu-nowhere")
        assert refused.status_code == 422 and "does not serve" in refused.text

        await flood_the_school_and_the_hospital(d)

        def settled(reply: httpx.Response) -> bool:
            sites = {s["id"]: s for s in reply.json()["sites"]}
            return bool(sites[school]["open_incident_count"] == 1
                        and sites[hospital]["open_incident_count"] == 1
                        and sites[hospital]["connectivity"] == "partial"
                        and sites[school]["connectivity"] == "online")

        view = (await eventually(lambda: get("/api/district"), settled, 30,
                                 "both incidents and the gateways' statuses")).json()
        assert [s["id"] for s in view["sites"]] == [school, hospital, campus]  # worst first
        sites = {s["id"]: s for s in view["sites"]}
        assert sites[school]["alerts_by_severity"] == {
            "critical": 1, "major": 0, "minor": 0, "warning": 0, "info": 0}
        assert sites[school]["worst_severity"] == "critical"
        assert sites[school]["unacknowledged"] == 1
        assert sites[school]["open_incidents"][0]["category"] == "flood"
        assert sites[school]["open_incidents"][0]["zone"] == "school-gate"
        assert sites[school]["gateways"] == {"total": 2, "online": 2, "offline": 0,
                                             "unknown": 0}
        assert sites[hospital]["alerts_by_severity"]["warning"] == 1
        assert sites[hospital]["gateways"]["offline"] == 1
        assert sites[campus]["open_incident_count"] == 0 and sites[campus]["open_alerts"] == 0
        assert sites[campus]["connectivity"] == "unknown"  # nothing of the campus runs here
        assert view["open_incidents"] == 2 and view["open_alerts"] == 2
        assert view["connectivity"] == {"online": 1, "partial": 1, "offline": 0,
                                        "unreachable": 0, "unknown": 1}
        # Each site's routes read its own state: the school's alert is not the campus's.
        assert [a["source"] for a in (await get("/api/alerts", site=school)).json()] == \
            ["wl-school-shiqiao-gate"]
        assert (await get("/api/alerts")).json() == []
        incidents = (await get("/api/incidents", site=hospital)).json()
        assert [i["id"] for i in incidents] == \
            [i["id"] for i in sites[hospital]["open_incidents"]]

        # The hospital broker's bridge to the centre drops (Mosquitto's retained '0'):
        # unreachable, whatever its gateways last said; and back.
        link = topics.link(hospital, "centre")
        await publish_all(settings.mqtt, [(link, b"0")], retain=True)

        def hospital_is(state: str) -> Any:
            def check(reply: httpx.Response) -> bool:
                found = {s["id"]: s for s in reply.json()["sites"]}[hospital]
                return bool(found["connectivity"] == state)
            return check

        down = (await eventually(lambda: get("/api/district"), hospital_is("unreachable"),
                                 30, "the hospital unreachable")).json()
        assert {s["id"]: s for s in down["sites"]}[hospital]["links"] == \
            [{"bridge": "centre", "up": False}]
        # Not a link state: a dead letter, the state stays.
        letters = d.api.app.state.sites[hospital].link.letters
        before = letters.total
        await publish_all(settings.mqtt, [(link, b"maybe")])
        await eventually(lambda: asyncio.sleep(0, letters.total), lambda n: n == before + 1,
                         10, "the bad link state a dead letter")
        assert hospital_is("unreachable")(await get("/api/district"))
        await publish_all(settings.mqtt, [(link, b"1")], retain=True)
        await eventually(lambda: get("/api/district"), hospital_is("partial"), 30,
                         "the hospital's link back")
        await publish_all(settings.mqtt, [(link, b"")], retain=True)  # clear the retained
