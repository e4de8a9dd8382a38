"""The control room's view through the API: devices with their latest values (live, and
from InfluxDB after a restart), history downsampled by InfluxDB, energy today; alerts
from the real rules engine, acted on with the same rules as commands; screens and PA;
the live stream, its filters, and resuming after a reconnect without losing an alert."""

from __future__ import annotations

import time
import uuid
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from api.history import local_midnight
from facility import messages as m
from facility import topics
from facility.influx import InfluxClient
from facility.messages import Event, Family, Reading
from facility.settings import Settings
from ingest.convert import to_line
from tests.helpers import eventually, publish_all
from tests.test_api_stack import Sse, Stack, api_stack, new_site_id

NS = 10**9


async def store_readings(influx: InfluxClient, readings: list[Reading]) -> None:
    """Into InfluxDB exactly as ingest stores them (ingest/convert.py)."""
    lines = [to_line(topics.telemetry(r.site, r.family, r.device), m.encode(r))
             for r in readings]
    await influx.write(b"\n".join(lines))


async def publish(s: Stack, *items: Reading | Event) -> None:
    out = []
    for item in items:
        kind = topics.telemetry if isinstance(item, Reading) else topics.event
        out.append((kind(item.site, item.family, item.device), m.encode(item)))
    await publish_all(s.settings.mqtt, out)


async def test_devices_history_and_energy(settings: Settings, tmp_path: Path,
                                          influx: InfluxClient) -> None:
    site = new_site_id()
    now = time.time_ns()
    # An hour of water levels at the west gate drain, one a minute: 0, 1, 2, ... 59 cm.
    hour = [Reading(site=site, family=Family.DRAINAGE, device="wl-west-gate",
                    ts=now - (60 - i) * 60 * NS, values={"water_level": float(i)},
                    units={"water_level": "cm"}) for i in range(60)]
    # Main building meters today: the total meter counts 120 kWh, lighting 30 kWh.
    midnight = int(local_midnight("Asia/Shanghai").timestamp() * NS)
    early, late = midnight + 60 * NS, max(midnight + 120 * NS, now - 5 * NS)
    meters = [Reading(site=site, family=Family.ENERGY, device=device, ts=ts,
                      values={"energy_import": value, "power_total": 1.0},
                      tags={"building": "main-building", "load": load})
              for device, load, values in (("em-main-total", "total", (1000.0, 1120.0)),
                                           ("em-main-lighting", "lighting", (500.0, 530.0)))
              for ts, value in zip((early, late), values, strict=True)]
    await store_readings(influx, hour + meters)

    async with api_stack(settings, tmp_path, site_id=site) as s:
        # Latest values from InfluxDB for devices that have not reported since the start.
        detail = (await s.get("/api/devices/wl-west-gate")).json()
        assert detail["latest"]["source"] == "influxdb"
        assert detail["latest"]["values"] == {"water_level": 59.0}
        assert detail["latest"]["quality"] == "good"
        assert (detail["zone"], detail["place"], detail["gateway"]) == \
            ("west-gate", "west-gate-drain", "gw-iot")
        assert detail["plan"] == {"x": 6.0, "y": 52.0} and "water_level" in detail["value_names"]

        # A live reading replaces it, with its units and quality, on the stream too.
        async with Sse(s.http, s.tokens["vera"], zone=["west-gate"], kind=["reading"]) as live:
            await publish(s, Reading(site=site, family=Family.DRAINAGE, device="wl-ne-outlet",
                                     ts=now, values={"water_level": 3.0}),
                          Reading(site=site, family=Family.DRAINAGE, device="wl-west-gate",
                                  ts=now, values={"water_level": 61.5},
                                  units={"water_level": "cm"}, quality=m.Quality.STALE))
            got = await live.wait_for("reading", lambda d: d["device"] == "wl-west-gate",
                                      "the west gate reading")
            assert got["values"] == {"water_level": 61.5} and got["quality"] == "stale"
            assert all(d["device"] != "wl-ne-outlet" for d in live.of("reading"))  # east gate
        latest = (await s.get("/api/devices/wl-west-gate")).json()["latest"]
        assert latest == {"ts": now, "quality": "stale", "values": {"water_level": 61.5},
                          "units": {"water_level": "cm"}, "errors": {}, "source": "live"}

        listed = (await s.get("/api/devices", family="bollard")).json()
        assert len(listed) == 43  # the PLC and its 42 bollards
        assert {d["controller"] for d in listed if d["kind"] == "bollard"} == \
            {"bollard-plc-south"}
        assert all(d["zone"] == "south-gate" for d in listed)
        site_view = (await s.get("/api/site")).json()
        assert site_view["name"] == "番禺区行政办公中心" and len(site_view["zones"]) == 11
        assert all(p["plan"] is not None for p in site_view["places"])

        # History, downsampled by InfluxDB: an hour in six ten-minute means.
        start = datetime.fromtimestamp((now - 60 * 60 * NS) / NS, UTC)
        end = datetime.fromtimestamp((now - 30 * NS) / NS, UTC)
        history = (await s.get("/api/devices/wl-west-gate/history", field="water_level",
                               start=start.isoformat(), end=end.isoformat(),
                               points=6)).json()
        assert history["interval_s"] == 600 and "GROUP BY time(600s)" in history["query"]
        assert 6 <= len(history["points"]) <= 7
        values = [p["v"] for p in history["points"]]
        assert values == sorted(values) and values[0] < 10 < 50 < values[-1]
        maxima = (await s.get("/api/devices/wl-west-gate/history", field="water_level",
                              start=start.isoformat(), end=end.isoformat(), points=6,
                              aggregate="max")).json()
        assert max(p["v"] for p in maxima["points"]) == 59.0
        unknown = await s.get("/api/devices/wl-west-gate/history", field="voltage")
        assert unknown.status_code == 404
        backwards = await s.get("/api/devices/wl-west-gate/history", field="water_level",
                                start=end.isoformat(), end=start.isoformat())
        assert backwards.status_code == 200 and backwards.json()["points"] == []
        epoch = await s.get("/api/devices/wl-west-gate/history", field="water_level",
                            start="0.5")
        assert epoch.status_code == 422  # ISO 8601 only
        assert (await s.get("/api/devices/nothing-here")).status_code == 404

        energy = (await s.get("/api/energy/today")).json()
        main = next(b for b in energy["buildings"] if b["building"] == "main-building")
        assert main["kwh"] == 120.0 and main["by_load"] == {"total": 120.0, "lighting": 30.0}
        assert main["kgce"] == round(120 * 0.1229, 3) and "0.1229" in energy["formula"]

        assert (await s.http.get("/healthz")).json() == {"status": "ok"}
        ready = (await s.http.get("/readyz")).json()
        assert ready == {"ready": True, "checks": {"mqtt": True, "state_store": True,
                                                   "influxdb": True, "workers": True}}
        metrics = (await s.http.get("/metrics")).text
        assert 'facility_api_http_requests_total{method="GET",route="/api/devices/{device_id}"' \
            in metrics
        assert "facility_api_mqtt_connected 1.0" in metrics


def fire(site: str) -> list[Reading | Event]:
    """Smoke in the west e-bike shed, as the GST panel's transmission unit reports it."""
    now = time.time_ns()

    def event(device: str, text: str) -> Event:
        return Event(site=site, family=Family.FIRE, device=device, ts=now, name="fire_alarm",
                     id=f"{device}-{uuid.uuid4().hex[:8]}", text=text)

    return [event("fd-ebw-01", "西门车棚烟感1 火警"),
            Reading(site=site, family=Family.FIRE, device="fd-ebw-01", ts=now,
                    values={"smoke": 0.21, "temperature": 31.0, "state": "alarm"}),
            event("fd-ebw-02", "西门车棚烟感2 火警"),
            Reading(site=site, family=Family.FIRE, device="fd-ebw-02", ts=now,
                    values={"smoke": 0.18, "temperature": 30.2, "state": "alarm"}),
            event("fp-ebike", "火警 西门车棚"),
            Reading(site=site, family=Family.FIRE, device="fp-ebike", ts=now,
                    values={"state": "alarm", "alarm_count": 2})]


async def test_alerts_through_the_rules_engine(settings: Settings, tmp_path: Path,
                                               state_url: str) -> None:
    async with api_stack(settings, tmp_path, rules=True, state_url=state_url) as s:
        async with Sse(s.http, s.tokens["vera"], kind=["alert"]) as live:
            await publish(s, *fire(s.site_id))
            panel = await live.wait_for("alert", lambda d: d["rule"] == "fire-panel-alarm"
                                        and d["transition"] == "raised", "the panel's alarm")
        alert_id = panel["id"]
        assert panel["zone"] == "west-gate" and panel["severity"] == "critical"

        listed = (await s.get("/api/alerts", state=["active_unack"], zone=["west-gate"],
                              family=["fire"], severity=["critical"])).json()
        assert alert_id in [a["id"] for a in listed]
        assert (await s.get("/api/alerts", zone=["south-gate"])).json() == []
        assert (await s.get("/api/alerts", severity=["info"])).json() == []

        # Only an operator of the west gate (or a supervisor) may act on it.
        for who in ("vera", "otto"):
            refused = await s.post(f"/api/alerts/{alert_id}/acknowledge", who, {})
            assert refused.status_code == 403, who
        acked = await s.post(f"/api/alerts/{alert_id}/acknowledge", "olga",
                             {"comment": "已派人查看", "by": "mallory"})
        assert acked.status_code == 200, acked.text
        assert acked.json()["alert"]["state"] == "active_ack"
        again = await s.post(f"/api/alerts/{alert_id}/acknowledge", "olga", {})
        assert again.status_code == 409 and "already" in again.json()["detail"]
        assert s.rules is not None
        assert s.rules.store is not None
        stored = await s.rules.store.alert(alert_id)
        assert stored is not None and stored.acknowledged and stored.acked_by == "olga"

        assert (await s.post(f"/api/alerts/{alert_id}/comment", "olga",
                             {"comment": "消防队已到场"})).status_code == 200
        shelved = await s.post(f"/api/alerts/{alert_id}/shelve", "olga",
                               {"minutes": 30, "comment": "现场处置中"})
        assert shelved.status_code == 200 and shelved.json()["alert"]["state"] == "shelved"
        until = shelved.json()["alert"]["shelved_until"]
        assert abs(until - (time.time_ns() + 30 * 60 * NS)) < 60 * NS
        assert (await s.post(f"/api/alerts/{alert_id}/unshelve", "olga", {})).status_code == 200
        oos = {"comment": "探测器维修"}
        assert (await s.post(f"/api/alerts/{alert_id}/out-of-service", "olga",
                             oos)).status_code == 403
        taken = await s.post(f"/api/alerts/{alert_id}/out-of-service", "sam", oos)
        assert taken.status_code == 200 and taken.json()["alert"]["state"] == "out_of_service"
        back = await s.post(f"/api/alerts/{alert_id}/return-to-service", "sam", {})
        assert back.status_code == 200

        detail = (await s.get(f"/api/alerts/{alert_id}")).json()
        steps = [(h["action"], h["by"]) for h in detail["history"]]
        for step in (("acknowledged", "olga"), ("comment", "olga"), ("shelved", "olga"),
                     ("unshelved", "olga"), ("out_of_service", "sam"),
                     ("returned_to_service", "sam")):
            assert step in steps
        assert detail["history"][steps.index(("acknowledged", "olga"))]["comment"] == "已派人查看"

        incidents = (await s.get("/api/incidents")).json()
        fire_incident = next(i for i in incidents if i["category"] == "fire")
        assert fire_incident["zones"] == ["west-gate"]
        one = (await s.get(f"/api/incidents/{fire_incident['id']}")).json()
        assert alert_id in [a["id"] for a in one["alerts"]] and one["cap_documents"] >= 1
        assert (await s.get("/api/alerts/al-nothing")).status_code == 404


async def test_live_stream_resumes_without_losing_alerts(settings: Settings,
                                                         tmp_path: Path) -> None:
    async with api_stack(settings, tmp_path, rules=True, replay_buffer=300) as s:
        async with Sse(s.http, s.tokens["vera"]) as first:
            await first.wait_for("reset", lambda d: d["reason"] == "new stream", "a reset")
            await publish(s, Reading(site=s.site_id, family=Family.DRAINAGE,
                                     device="wl-south-gate", ts=time.time_ns(),
                                     values={"water_level": 2.0}))
            await first.wait_for("reading", lambda d: True, "a reading")
            resume = first.last_id
        # While the client is away, a fire is raised.
        await publish(s, *fire(s.site_id))
        await eventually(lambda: s.get("/api/alerts"), lambda r: len(r.json()) >= 2, 30,
                         "the fire's alerts stored")
        async with Sse(s.http, s.tokens["vera"], last_event_id=resume) as second:
            await second.wait_for("alert", lambda d: d["transition"] == "raised"
                                  and d["rule"] == "fire-panel-alarm",
                                  "the alert raised while away, replayed")
            assert second.of("reset") == []
            ids = [i for i, _, _ in second.events if i]
            assert all(int(i.split("-")[1]) > int(resume.split("-")[1]) for i in ids)

        # Away for longer than the buffer holds: a reset, and the open alerts from the store.
        await publish(s, *[Reading(site=s.site_id, family=Family.DRAINAGE, device="wl-south-gate",
                                   ts=time.time_ns() + i, values={"water_level": 2.0 + i})
                           for i in range(400)])
        await eventually(lambda: s.get("/api/devices/wl-south-gate"),
                         lambda r: r.json()["latest"]["values"]["water_level"] == 401.0, 20,
                         "the readings taken in")
        async with Sse(s.http, s.tokens["vera"], last_event_id=resume, kind=["alert"]) as third:
            reset = await third.wait_for("reset", lambda d: True, "a reset")
            assert reset["reason"] == "resume point no longer available"
            stored = {a["id"] for a in (await s.get("/api/alerts")).json()}
            await eventually(lambda: _async(third.of("alert")),
                             lambda got: {d["id"] for d in got} >= stored, 10,
                             "every open alert re-read from the store")
            assert all(d["transition"] == "snapshot" for d in third.of("alert"))
        # Another process's ids (another epoch) reset too.
        async with Sse(s.http, s.tokens["vera"], last_event_id="0000dead-5") as fourth:
            await fourth.wait_for("reset", lambda d: True, "a reset for a foreign id")
        assert (await s.http.get("/api/stream")).status_code == 401


async def _async(value: Any) -> Any:
    return value


async def test_screens_and_pa(settings: Settings, tmp_path: Path) -> None:
    async with api_stack(settings, tmp_path, rules=True) as s:
        assert s.player is not None
        player = s.player

        def screen(endpoint: str) -> str:
            current = player.screens[endpoint].current
            return current.text if current else ""

        views = await eventually(lambda: s.get("/api/displays"), lambda r: all(
            d["delivery"] and d["delivery"]["status"] == "shown"
            for d in r.json() if d["kind"] != "pa_zone"), 30, "every screen confirmed")
        south = next(d for d in views.json() if d["id"] == "led-south-gate")
        assert south["shown"]["text"] == south["default_content"]
        assert south["shown"]["priority"] == 9 and south["shown"]["kind"] == "normal"

        # A manual message from the south-gate operator; not from a viewer or another zone.
        text = "南门今日14:00-16:00临时管制，车辆请绕行西门"
        for who in ("vera", "olga"):
            refused = await s.http.put("/api/displays/led-south-gate/message",
                                       headers=s.auth(who), json={"text": text})
            assert refused.status_code == 403, who
        shown = await s.http.put("/api/displays/led-south-gate/message", headers=s.auth("otto"),
                                 json={"text": text})
        assert shown.status_code == 200, shown.text
        await eventually(lambda: _async(screen("led-south-gate")), lambda t: t == text, 20,
                         "the manual message on the screen")
        # The same priorities as automatic content: a fire in the west pre-empts the manual
        # message on the west gate's screen.
        west = await s.http.put("/api/displays/led-west-gate/message", headers=s.auth("olga"),
                                json={"text": "西门施工，请慢行"})
        assert west.status_code == 200
        await publish(s, *fire(s.site_id))
        await eventually(lambda: _async(screen("led-west-gate")), lambda t: "疏散" in t, 20,
                         "the evacuation message over the manual one")

        withdrawn = await s.http.delete("/api/displays/led-south-gate/message",
                                        headers=s.auth("otto"))
        assert withdrawn.status_code == 200
        default = south["default_content"]
        await eventually(lambda: _async(screen("led-south-gate")), lambda t: "疏散" in t
                         or t == default, 20, "the manual message withdrawn")
        assert (await s.http.put("/api/displays/pa-south/message", headers=s.auth("otto"),
                                 json={"text": "x"})).status_code == 404

        # PA: an announcement in the south; none of lower priority over the west's fire.
        announced = await s.post("/api/broadcasts", "otto",
                                 {"zones": ["pa-south"], "text": "请南门车辆有序通行",
                                  "priority": 5})
        assert announced.status_code == 201, announced.text
        await eventually(lambda: _async(player.screens["pa-south"].announced),
                         lambda a: any(b.text == "请南门车辆有序通行" for b in a), 20,
                         "the announcement made")
        confirmed = await eventually(
            lambda: s.get("/api/broadcasts"),
            lambda r: r.json() and r.json()[0]["deliveries"][0]["status"] == "shown", 20,
            "the announcement confirmed")
        assert confirmed.json()[0]["by"] == "otto" and confirmed.json()[0]["kind"] == "alert"
        over = await s.post("/api/broadcasts", "olga", {"zones": ["pa-west"],
                                                        "text": "午餐时间到", "priority": 5})
        assert over.status_code == 409 and "more urgent" in over.json()["detail"]
        urgent = await s.post("/api/broadcasts", "olga", {"zones": ["pa-west"],
                                                          "text": "请远离西门车棚", "priority": 1})
        assert urgent.status_code == 403  # emergencies: supervisors
        by_sam = await s.post("/api/broadcasts", "sam", {"zones": ["pa-west"],
                                                         "text": "请远离西门车棚", "priority": 1})
        assert by_sam.status_code == 201 and by_sam.json()["kind"] == "emergency"
        assert (await s.post("/api/broadcasts", "otto",
                             {"zones": ["led-south-gate"], "text": "x"})).status_code == 404
