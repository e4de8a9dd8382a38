"""Scenarios on the real broker: the rules service, the simulated screens and PA zones,
canonical messages published as the gateways would, and a clock the test drives.

Each test runs on its own site id, so retained display messages and statuses of one test
never reach another."""

from __future__ import annotations

import contextlib
import shutil
import uuid
from collections import Counter
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

from aiohttp import web

from facility import messages as m
from facility import topics
from facility.messages import (
    AlertAction,
    AlertState,
    Availability,
    Command,
    DeviceStatus,
    Event,
    Family,
    Reading,
)
from facility.settings import Settings
from facility.site import load_site, site_for
from rules import cap
from rules.alerts import Alert
from rules.clock import NS, ManualClock, SystemClock
from rules.ops import AlertOpsClient
from rules.service import RulesService
from rules.store import AlertStore
from simulators.display_player import DisplayPlayer
from tests.conftest import REPO, SITE_FILE, catalog
from tests.helpers import Collector, eventually, publish_all

START = 1_795_854_600 * NS  # 2026-11-28 16:30 Asia/Shanghai
SCREENS = ["led-south-gate", "led-west-gate", "led-north-gate", "led-east-gate", "led-parking",
           "led-canteen", "led-central", "led-main-lobby", "led-conference-hall"]
KIOSKS = ["kiosk-main", "kiosk-east", "kiosk-west", "kiosk-conference"]


class Campus:
    """The rules service and the display player for one test site."""

    def __init__(self, settings: Settings, tmp_path: Path, clock: ManualClock | SystemClock, *,
                 state_url: str | None = None, rules_dir: Path | None = None) -> None:
        self.settings = settings
        self.site_id = f"t-{uuid.uuid4().hex[:10]}"
        self.site = site_for(load_site(SITE_FILE), self.site_id)
        self.clock = clock
        self.state_url = state_url or f"sqlite:///{tmp_path / 'state.sqlite'}"
        self.rules_dir = rules_dir
        self.client_id = f"rules-{self.site_id}"
        self.rules: RulesService | None = None
        self.player: DisplayPlayer | None = None
        self.published = 0

    @property
    def store(self) -> AlertStore:
        """The running engine's alert store."""
        assert self.rules is not None and self.rules.store is not None
        return self.rules.store

    def service(self) -> RulesService:
        return RulesService(self.settings, catalog(self.site), clock=self.clock,
                            state_url=self.state_url, rules_dir=self.rules_dir,
                            client_id=self.client_id)

    async def send(self, *items: m.Reading | m.Event | m.DeviceStatus | m.Command,
                   wait: bool = True) -> None:
        """Publish as a gateway (or the API, for commands) would, and wait until the
        rules service has taken them in."""
        out = []
        for item in items:
            if isinstance(item, Reading):
                topic = topics.telemetry(self.site_id, item.family, item.device)
            elif isinstance(item, Event):
                topic = topics.event(self.site_id, item.family, item.device)
            elif isinstance(item, DeviceStatus):
                topic = topics.status(self.site_id, item.family, item.device)
            else:
                topic = topics.command(self.site_id, item.family, item.device)
            out.append((topic, m.encode(item)))
        assert self.rules is not None
        rules = self.rules
        wanted = Counter(topic for topic, _ in out)
        before = {topic: rules.taken_topics[topic] for topic in wanted}
        await publish_all(self.settings.mqtt, out)
        if wait:
            async def stored() -> bool:
                return all(rules.taken_topics[t] - before[t] >= n for t, n in wanted.items())
            await eventually(stored, bool, 30, f"{len(out)} inputs taken and stored")

    async def advance(self, seconds: float) -> None:
        """Move the clock and wait until the engine has ticked at the new time."""
        assert self.rules is not None and self.rules.engine is not None
        assert isinstance(self.clock, ManualClock), "only a manual clock is advanced"
        engine, rules = self.rules.engine, self.rules
        target = await self.clock.advance(seconds)
        before = rules.committed_ticks

        async def ticked() -> bool:
            return engine.last_tick >= target and rules.committed_ticks > before
        await eventually(ticked, bool, 30, "a tick of the engine")

    def now(self) -> int:
        return self.clock.now_ns()

    def reading(self, family: Family, device: str, **values: Any) -> Reading:
        return Reading(site=self.site_id, family=family, device=device, ts=self.now(),
                       values=values)

    def event(self, device: str, name: str, text: str = "", family: Family = Family.FIRE) -> Event:
        return Event(site=self.site_id, family=family, device=device, ts=self.now(),
                     id=f"{device}-{name}-{uuid.uuid4().hex[:6]}", name=name, text=text)

    def open_alerts(self, rule: str | None = None) -> list[Any]:
        assert self.rules is not None and self.rules.engine is not None
        return [a for a in self.rules.engine.book.open.values() if rule is None or a.rule == rule]

    def screen(self, endpoint: str) -> str:
        assert self.player is not None
        current = self.player.screens[endpoint].current
        return current.text if current else ""


@contextlib.asynccontextmanager
async def running(campus: Campus) -> AsyncIterator[Campus]:
    rules = campus.service()
    player = DisplayPlayer.from_config(campus.settings.mqtt, campus.site_id, rules.endpoints,
                                       clock_ns=campus.clock.now_ns)
    campus.player = player
    async with player:
        await player.wait_ready()
        async with rules:
            campus.rules = rules
            await rules.wait_ready()
            yield campus
            campus.rules = None


@contextlib.asynccontextmanager
async def rules_only(campus: Campus) -> AsyncIterator[Campus]:
    """The rules service alone (the screens are elsewhere: another process, or none)."""
    rules = campus.service()
    async with rules:
        campus.rules = rules
        await rules.wait_ready()
        yield campus
        campus.rules = None


def in_state(alert: Alert, state: AlertState) -> bool:
    """Whether the alert is in `state` now: a call, so that an earlier `assert alert.state
    is ...` does not narrow what a later check reads (mypy keeps it across awaits)."""
    return alert.state is state


async def until(what: str, check: Any, timeout: float = 30) -> None:
    async def probe() -> bool:
        return bool(check())
    await eventually(probe, bool, timeout, what)


def defaults(campus: Campus) -> dict[str, str]:
    assert campus.rules is not None
    return {e.id: e.default_content for e in campus.rules.endpoints.endpoints if not e.is_pa}


# --- the fire in the west e-bike shed ----------------------------------------------------

async def test_fire_in_the_west_ebike_shed(settings: Settings, tmp_path: Path) -> None:
    clock = ManualClock(START)
    campus = Campus(settings, tmp_path, clock)
    async with running(campus), Collector(
            settings.mqtt, topics.subscription(topics.Kind.ALERT, campus.site_id)) as alerts:
        normal = defaults(campus)
        await until("every screen shows its normal content",
                    lambda: all(campus.screen(e) == text for e, text in normal.items()))
        before = {e: campus.screen(e) for e in normal}

        # Smoke in the shed: two detectors alarm, the panel reports the fire, the detectors
        # report their state, as the GST panel's transmission unit sends it.
        await campus.send(
            campus.event("fd-ebw-01", "fire_alarm", "西门车棚烟感1 火警"),
            campus.reading(Family.FIRE, "fd-ebw-01", smoke=0.21, temperature=31.0, state="alarm"),
            campus.event("fd-ebw-02", "fire_alarm", "西门车棚烟感2 火警"),
            campus.reading(Family.FIRE, "fd-ebw-02", smoke=0.18, temperature=30.2, state="alarm"),
            campus.event("fp-ebike", "fire_alarm", "火警 西门车棚"),
            campus.reading(Family.FIRE, "fp-ebike", state="alarm", alarm_count=2))
        assert campus.rules is not None and campus.rules.engine is not None
        book = campus.rules.engine.book

        # One incident for the operator, whose place is the shed.
        fire = [i for i in book.incidents.values() if i.category == "fire"]
        assert len(fire) == 1, fire
        incident = fire[0]
        assert incident.place == "ebike-shed-west" and incident.zones == ["west-gate"]
        members = campus.open_alerts()
        assert {a.incident for a in members} == {incident.id}
        shown = [a for a in members if a.annunciated]
        # One alarm to handle: the detectors' alarms and the correlation are under the
        # panel's (consequential), members of its incident.
        assert {a.rule for a in shown} == {"fire-panel-alarm"}
        assert {a.rule for a in members if a.state is AlertState.SUPPRESSED} == \
            {"fire-detector-alarm", "fire-two-detectors"}

        # Every LED screen and terminal shows the evacuation message; the west PA zone says it.
        await until("the evacuation message on every screen", lambda: all(
            "西门电动自行车停车棚" in campus.screen(e) and "疏散" in campus.screen(e)
            for e in SCREENS + KIOSKS), timeout=20)
        assert campus.player is not None
        assert len(campus.screen("kiosk-main")) <= 24  # the short text on a small terminal
        # The screens and the PA reach one area (a fire's is the campus): every PA zone
        # says what every screen shows, once.
        zones = ("pa-west", "pa-main", "pa-east", "pa-south", "pa-north")
        await until("the evacuation announcement in every PA zone", lambda: all(
            campus.player.screens[p].announced for p in zones))
        for pa in zones:
            announced = campus.player.screens[pa].announced
            assert len(announced) == 1 and "疏散" in announced[0].text
            assert announced[0].repeat == 3
        # Each endpoint confirmed what it shows.
        await until("every screen confirmed", lambda: not any(
            p.endpoint in SCREENS + KIOSKS
            for p in campus.rules.engine.router.pending.values()))

        # The emergency is a CAP 1.2 document: Alert first, Update as alerts join.
        issued = await campus.store.cap_documents(incident.id)
        for document in issued:
            cap.validate(document)
        assert "<msgType>Alert</msgType>" in issued[0] and "<category>Fire</category>" in issued[0]
        assert "<responseType>Evacuate</responseType>" in issued[-1]
        assert (issued[-1] == incident.cap_xml and "<references>" in issued[-1]) or len(issued) == 1

        # Alert state changes were published.
        await alerts.wait_for(3)
        published = alerts.decoded(m.AlertMessage)
        assert {a.rule for a in published if a.transition == "raised"} >= \
            {"fire-panel-alarm", "fire-two-detectors", "fire-detector-alarm"}

        # The fire is out: the panel and the detectors restore.
        await campus.send(
            campus.event("fd-ebw-01", "restore"), campus.event("fd-ebw-02", "restore"),
            campus.event("fp-ebike", "restore"),
            campus.reading(Family.FIRE, "fd-ebw-01", smoke=0.02, temperature=27.0, state="normal"),
            campus.reading(Family.FIRE, "fd-ebw-02", smoke=0.02, temperature=27.0, state="normal"),
            campus.reading(Family.FIRE, "fp-ebike", state="normal", alarm_count=0))
        # The panel says the fire is over: the incident ends (the correlation still in its
        # 2-minute window is consequential, not news); the screens hold a moment.
        await campus.advance(1)
        assert "疏散" in campus.screen("led-west-gate")  # held a moment, no flapping
        await campus.advance(31)  # past the hold
        await until("every screen back to what it showed before",
                    lambda: all(campus.screen(e) == before[e] for e in before))
        await until("the all-clear in the west PA zone",
                    lambda: len(campus.player.screens["pa-west"].announced) == 2)
        assert "解除" in campus.player.screens["pa-west"].announced[-1].text
        docs = await campus.store.cap_documents(incident.id)
        # What was issued stands; updates as alerts joined, and one all-clear, last.
        assert docs[:len(issued)] == issued
        assert ["<responseType>AllClear</responseType>" in d for d in docs].count(True) == 1
        assert "<responseType>AllClear</responseType>" in docs[-1]
        cap.validate(docs[-1])
        await campus.advance(121)  # the detectors' signals leave the 2-minute window
        await campus.advance(121)  # and stay clear for 2 minutes
        assert not any(a.active for a in campus.open_alerts() if a.incident == incident.id)
        assert len(campus.player.screens["pa-west"].announced) == 2  # no second all-clear
        # Nothing was shown twice: each message id once per screen.
        for endpoint in SCREENS:
            ids = [s.id for s in campus.player.screens[endpoint].shown]
            assert len(ids) == len(set(ids)) == 3  # normal, evacuation, normal


# --- the rainstorm at the west gate -------------------------------------------------------

async def test_rainstorm_at_the_west_gate(settings: Settings, tmp_path: Path) -> None:
    clock = ManualClock(START)
    campus = Campus(settings, tmp_path, clock)
    levels = ([5.0 + 1.2 * n for n in range(6)]  # rising 1.2 cm/min: warning
              + [11.0 + 3.5 * n for n in range(1, 9)]  # faster, to 39 cm: critical
              + [39.0, 36.0, 31.0, 27.0, 22.0, 18.0, 16.0]  # the pump catches up
              + [14.0, 16.0, 14.5, 15.5, 14.0, 16.0, 14.2, 15.8, 14.4, 15.1]  # bobbing at 15
              + [10.0] * 12)  # gone down
    async with running(campus):
        severities = []
        for level in levels:
            await campus.send(campus.reading(Family.DRAINAGE, "wl-west-gate", water_level=level))
            await campus.advance(60)
            alerts = campus.open_alerts("waterlogging")
            severities.append(alerts[0].severity.value if alerts and alerts[0].active else "-")
        assert campus.rules is not None and campus.rules.store is not None
        [record] = await campus.rules.store.alerts(campus.site_id, rule="waterlogging")
        actions = [h["action"] for h in await campus.rules.store.history(record.id)]
        # Warning first, then critical as the rate rises; one raise and one clear: no flapping
        # while the level bobbed around the clear level.
        assert actions.count("raised") == 1 and actions.count("cleared") == 1, actions
        assert "re_raised" not in actions
        assert actions.index("severity_raised") < actions.index("severity_lowered") < \
            actions.index("cleared")
        first = next(s for s in severities if s != "-")
        assert first == "warning" and "critical" in severities
        raised_at = severities.index("warning")
        assert raised_at < 8, severities  # early, from the rate, before the level is high
        # Active for the whole bobbing phase, cleared only after ten quiet minutes.
        bob = 6 + 8 + 7
        assert all(s != "-" for s in severities[raised_at:bob + 10]), severities
        assert severities[-1] == "-"
        assert record.source == "wl-west-gate"


async def test_rainstorm_reaches_screens_and_pa(settings: Settings, tmp_path: Path) -> None:
    clock = ManualClock(START)
    campus = Campus(settings, tmp_path, clock)
    async with running(campus):
        for level in (24.0, 26.0):
            await campus.send(campus.reading(Family.DRAINAGE, "wl-west-gate", water_level=level))
            await campus.advance(60)
        await until("the warning on the west-gate screen",
                    lambda: "预警" in campus.screen("led-west-gate"))
        assert "积水" in campus.screen("led-west-gate") and "26" in campus.screen("led-west-gate")
        assert campus.player is not None and not campus.player.screens["pa-west"].announced
        assert "积水" not in campus.screen("led-south-gate")  # other zones keep their content
        await campus.send(campus.reading(Family.DRAINAGE, "wl-west-gate", water_level=45.0))
        await until("the critical message", lambda: "紧急" in campus.screen("led-west-gate"))
        await until("the PA in the west zone", lambda: campus.player.screens["pa-west"].announced)


async def test_manual_message_ranks_like_automatic_ones(settings: Settings,
                                                        tmp_path: Path) -> None:
    """An operator's message at priority 3: a warning (4) waits behind it, a critical
    alert (1) pre-empts it; withdrawn, the screen shows what ranks next."""
    clock = ManualClock(START)
    campus = Campus(settings, tmp_path, clock)
    async with running(campus):
        assert campus.rules is not None
        result = await campus.rules.operate(AlertAction.SHOW_MESSAGE, "led-west-gate", "值班长",
                                            text="西门道路施工 请绕行北门", priority=3)
        assert result.ok, result.detail
        await until("the manual message", lambda: "施工" in campus.screen("led-west-gate"))
        for level in (24.0, 26.0):
            await campus.send(campus.reading(Family.DRAINAGE, "wl-west-gate", water_level=level))
            await campus.advance(60)
        await until("the warning raised", lambda: bool(campus.open_alerts("waterlogging")))
        assert "施工" in campus.screen("led-west-gate")  # the warning ranks below
        await campus.send(campus.reading(Family.DRAINAGE, "wl-west-gate", water_level=45.0))
        await until("the critical message", lambda: "紧急" in campus.screen("led-west-gate"))
        result = await campus.rules.operate(AlertAction.WITHDRAW_MESSAGE, "led-west-gate",
                                            "值班长")
        assert result.ok, result.detail
        await campus.advance(1)
        assert "紧急" in campus.screen("led-west-gate")  # still the critical alert


# --- a bollard stuck down after a raise command -------------------------------------------

async def test_bollard_stuck_down_after_raise(settings: Settings, tmp_path: Path) -> None:
    clock = ManualClock(START)
    campus = Campus(settings, tmp_path, clock)
    units = [f"bollard-s{n:02d}" for n in range(1, 43)]
    async with running(campus):
        def poll(stuck: str, state: str) -> list[Reading]:
            """One poll of the PLC by its gateway: the group and the 42 bollards."""
            return [campus.reading(Family.BOLLARD, "bollard-plc-south", mode="auto",
                                   power="mains", supply_pressure=158.0)] + [
                campus.reading(Family.BOLLARD, u, state=state if u != stuck else "down",
                               hydraulic_pressure=62.0 if state == "up" and u != stuck else 2.5,
                               fault_code="none") for u in units]

        await campus.send(*poll("", "down"))
        command = Command(id=f"cmd-{uuid.uuid4().hex[:8]}", site=campus.site_id,
                          family=Family.BOLLARD, device="bollard-plc-south", action="raise_all",
                          issued_at=campus.now(), expires_at=campus.now() + 30 * NS,
                          issued_by="值班员张三", reason="南门封闭演练")
        await campus.send(command)
        for _ in range(2):
            await campus.advance(5)
            await campus.send(*poll("bollard-s07", "up"))
            assert not campus.open_alerts("bollard-not-up")  # still within its time
        await campus.advance(5)
        await until("the stuck bollard's alert", lambda: campus.open_alerts("bollard-not-up"))
        [alert] = campus.open_alerts("bollard-not-up")
        assert alert.source == "bollard-s07" and alert.value == "down"
        assert alert.severity.value == "critical" and "南门升降柱7号" in alert.text
        # It comes up after all: the alert clears and waits for acknowledgement.
        await campus.send(campus.reading(Family.BOLLARD, "bollard-s07", state="up",
                                         hydraulic_pressure=61.0, fault_code="none"))
        assert alert.state is AlertState.RTN_UNACK


async def test_bollard_stuck_up_after_lower(settings: Settings, tmp_path: Path) -> None:
    """Lowering all (after two supervisors agreed) and one bollard stays up: its own alert."""
    clock = ManualClock(START)
    campus = Campus(settings, tmp_path, clock)
    units = [f"bollard-s{n:02d}" for n in range(1, 43)]
    async with running(campus):
        def poll(stuck: str, state: str) -> list[Reading]:
            return [campus.reading(Family.BOLLARD, u, state=state if u != stuck else "up",
                                   hydraulic_pressure=2.5, fault_code="none") for u in units]

        await campus.send(*poll("", "up"))
        command = Command(id=f"cmd-{uuid.uuid4().hex[:8]}", site=campus.site_id,
                          family=Family.BOLLARD, device="bollard-plc-south", action="lower_all",
                          issued_at=campus.now(), expires_at=campus.now() + 30 * NS,
                          issued_by="值班主管李四", reason="大型活动车辆通行",
                          approved_by="值班主管王五")
        await campus.send(command)
        for _ in range(2):
            await campus.advance(5)
            await campus.send(*poll("bollard-s12", "down"))
            assert not campus.open_alerts("bollard-not-down")
        await campus.advance(5)
        await until("the stuck bollard's alert", lambda: campus.open_alerts("bollard-not-down"))
        [alert] = campus.open_alerts("bollard-not-down")
        assert alert.source == "bollard-s12" and alert.value == "up"
        assert alert.severity.value == "major" and "南门升降柱12号" in alert.text
        assert not campus.open_alerts("bollard-not-up")


# --- a gateway going offline --------------------------------------------------------------

async def test_gateway_offline_is_one_alert(settings: Settings, tmp_path: Path) -> None:
    clock = ManualClock(START)
    campus = Campus(settings, tmp_path, clock)
    assert campus.site is not None
    iot = {d.id for d in campus.site.devices if d.gateway == "gw-iot"}
    async with running(campus):
        await campus.send(DeviceStatus(site=campus.site_id, family=Family.GATEWAY,
                                       device="gw-iot", ts=campus.now(),
                                       state=Availability.OFFLINE, reason="connection lost"))
        await campus.advance(61)
        await until("the gateway alert", lambda: campus.open_alerts("gateway-offline"))
        await campus.advance(3000)  # every gw-iot device is silent past its no-data limit
        alerts = campus.open_alerts()
        [gateway] = [a for a in alerts if a.rule == "gateway-offline"]
        under = [a for a in alerts if a.source in iot]
        assert len({a.source for a in under}) == len(iot)
        assert all(a.state is AlertState.SUPPRESSED and a.suppressed_by == gateway.id
                   for a in under)
        shown = [a for a in alerts if a.annunciated and (a.source in iot or a.source == "gw-iot")]
        assert shown == [gateway]
        # One incident for the outage: the gateway and everything under it.
        assert {a.incident for a in under} == {gateway.incident}
        # The gateway is back: its alert clears; its devices report and theirs clear too.
        await campus.send(DeviceStatus(site=campus.site_id, family=Family.GATEWAY,
                                       device="gw-iot", ts=campus.now(),
                                       state=Availability.ONLINE, reason="running"))
        assert not gateway.active
        await campus.send(campus.reading(Family.FIRE, "fd-ebw-01", smoke=0.02, temperature=26.0,
                                         state="normal"))
        assert not any(a.active for a in campus.open_alerts() if a.source == "fd-ebw-01")


# --- acknowledge, shelve with expiry, escalation -----------------------------------------

async def test_acknowledge_shelve_and_escalate(settings: Settings, tmp_path: Path) -> None:
    hooks: list[dict[str, Any]] = []

    async def hook(request: web.Request) -> web.Response:
        hooks.append(await request.json())
        return web.json_response({"errcode": 0})

    app = web.Application()
    app.router.add_post("/duty", hook)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", 0).start()
    port = runner.addresses[0][1]
    rules_dir = tmp_path / "rules"
    shutil.copytree(REPO / "config" / "rules", rules_dir)
    common = rules_dir / "common.yaml"
    common.write_text(common.read_text(encoding="utf-8").replace(
        "control-room-lead: {name: 监控中心值班长}",
        f"control-room-lead: {{name: 监控中心值班长, webhook: 'http://127.0.0.1:{port}/duty'}}"),
        encoding="utf-8")
    clock = ManualClock(START)
    campus = Campus(settings, tmp_path, clock, rules_dir=rules_dir)
    try:
        async with running(campus), AlertOpsClient(settings.mqtt, campus.site_id) as ops:
            assert campus.rules is not None
            await campus.send(campus.event("fd-mb-01", "fire_alarm", "主楼配电房烟感 火警"),
                              campus.event("fd-ct-01", "fire_alarm", "饭堂餐厅烟感 火警"))
            [a] = [x for x in campus.open_alerts("fire-detector-alarm") if x.source == "fd-mb-01"]
            [b] = [x for x in campus.open_alerts("fire-detector-alarm") if x.source == "fd-ct-01"]

            # Acknowledge over MQTT (as the API in another process would).
            result = await ops.request(AlertAction.ACKNOWLEDGE, a.id, "值班员张三",
                                       comment="已派人核查")
            assert result.ok and result.state == "active_ack"
            refused = await ops.request(AlertAction.ACKNOWLEDGE, "al-nosuchalert", "张三")
            assert not refused.ok and "no open alert" in refused.detail

            # Shelve the other for ten minutes (Python API, as the API in this process would).
            until_ns = campus.now() + 600 * NS
            shelved = await campus.rules.operate(AlertAction.SHELVE, b.id, "值班长李四",
                                                 until=until_ns, comment="厨房油烟误报，已通知维保")
            assert shelved.ok and b.state is AlertState.SHELVED
            await until("the shelved fire leaves the canteen screen",
                        lambda: "饭堂" not in campus.screen("led-canteen"))
            assert "主楼" in campus.screen("led-canteen")  # the other fire is still shown

            # Nobody acknowledges the shelved one; the acknowledged one does not escalate.
            await campus.advance(121)
            assert a.escalation == 0 and b.escalation == 0  # shelved alerts do not escalate
            await campus.advance(480)  # the shelve expires at 600 s
            await until("the shelve expired", lambda: in_state(b, AlertState.ACTIVE_UNACK))
            await campus.advance(121)  # two minutes unacknowledged since it was raised
            await until("escalated to the control-room lead", lambda: b.escalation >= 1)
            assert b.escalated_to in ("control-room-lead", "duty-team")
            await until("the duty webhook was called", lambda: hooks)
            assert hooks[0]["team"] == "control-room-lead"
            assert hooks[0]["alert"]["id"] == b.id and hooks[0]["alert"]["transition"] == \
                "escalated"

            history = await campus.store.history(b.id)
            by_action = {h["action"]: h for h in history}
            assert by_action["shelved"]["by"] == "值班长李四"
            assert by_action["shelved"]["detail"]["until"] == until_ns
            assert by_action["shelve_expired"]["to_state"] == "active_unack"
            assert by_action["escalated"]["detail"]["team"] == "control-room-lead"
            acked = [h for h in await campus.store.history(a.id)
                     if h["action"] == "acknowledged"]
            assert acked[0]["by"] == "值班员张三" and acked[0]["comment"] == "已派人核查"
    finally:
        await runner.cleanup()


# --- a restart of the rules service mid-alert ---------------------------------------------

async def test_restart_mid_alert(settings: Settings, tmp_path: Path, state_url: str) -> None:
    clock = ManualClock(START)
    campus = Campus(settings, tmp_path, clock, state_url=state_url)
    async with running(campus):
        await campus.send(campus.event("fd-mb-01", "fire_alarm", "主楼配电房烟感 火警"),
                          campus.reading(Family.EV_CHARGER, "evc-pb-01", status="faulted",
                                         error_code="GroundFailure", connector_temperature=30.0))
        [fire] = campus.open_alerts("fire-detector-alarm")
        await until("the fire on the lobby screen",
                    lambda: "火警" in campus.screen("led-main-lobby"))
        await campus.advance(300)  # the charger has been faulted for 5 of its 10 minutes
        assert not campus.open_alerts("ev-charger-faulted")
    # The service is down for a minute; a detector alarms meanwhile (kept by the broker).
    await clock.advance(60)
    await publish_all(settings.mqtt, [(topics.event(campus.site_id, "fire", "fd-mb-02"),
                                       m.encode(campus.event("fd-mb-02", "fire_alarm")))])
    async with running(campus):
        assert campus.rules is not None
        [again] = [a for a in campus.open_alerts("fire-detector-alarm") if a.source == "fd-mb-01"]
        assert again.id == fire.id and again.state is AlertState.ACTIVE_UNACK
        await until("the alarm sent while it was down",
                    lambda: any(a.source == "fd-mb-02"
                                for a in campus.open_alerts("fire-detector-alarm")))
        await until("the fire still on the lobby screen",
                    lambda: "火警" in campus.screen("led-main-lobby"))
        # The charger's 10-minute timer went on from where it was: due at 600 s, not 960 s.
        await campus.advance(241)
        await campus.send(campus.reading(Family.EV_CHARGER, "evc-pb-01", status="faulted",
                                         error_code="GroundFailure",
                                         connector_temperature=30.0))
        [faulted] = campus.open_alerts("ev-charger-faulted")
        history = await campus.store.history(faulted.id)
        assert history[0]["action"] == "raised"
        assert history[0]["detail"]["timer_spanned_restart_s"] == 60.0
        restarted = [h for h in await campus.store.history(fire.id)
                     if h["action"] == "service_restarted"]
        assert restarted and restarted[0]["detail"]["down_s"] == 60.0


# --- an endpoint that does not confirm ------------------------------------------------------

async def test_silent_screen_is_retried_and_raises_its_alert(settings: Settings,
                                                             tmp_path: Path) -> None:
    clock = ManualClock(START)
    campus = Campus(settings, tmp_path, clock)
    async with running(campus):
        assert campus.player is not None and campus.rules is not None
        campus.player.silent.add("led-north-gate")
        result = await campus.rules.operate(AlertAction.SET_CONTENT, "led-north-gate", "管理员",
                                            text="北门今日施工，请减速慢行")
        assert result.ok
        await until("the new content shown", lambda: "施工" in campus.screen("led-north-gate"))
        for _ in range(6):  # 10 s, 20 s, 40 s, then every 60 s
            await campus.advance(60)
        screen = campus.player.screens["led-north-gate"]
        await until("re-sent", lambda: screen.duplicates >= 3)
        assert [s.text for s in screen.shown].count("北门今日施工，请减速慢行") == 1
        [silent] = campus.open_alerts("endpoint-silent")
        assert silent.source == "led-north-gate" and silent.active
        campus.player.silent.clear()
        await campus.advance(61)
        await until("confirmed at last", lambda: not silent.active)
        assert silent.state is AlertState.RTN_UNACK


# --- rules reload without a restart -------------------------------------------------------

async def test_rules_reload_and_bad_file_keeps_running(settings: Settings,
                                                       tmp_path: Path) -> None:
    rules_dir = tmp_path / "rules"
    shutil.copytree(REPO / "config" / "rules", rules_dir)
    settings.rules.reload_poll = 0.1
    clock = ManualClock(START)
    campus = Campus(settings, tmp_path, clock, rules_dir=rules_dir)
    async with running(campus):
        assert campus.rules is not None
        gas = rules_dir / "drainage.yaml"
        gas.write_text(gas.read_text(encoding="utf-8").replace("h2s >= 10 or", "h2s >= 3 or"),
                       encoding="utf-8")
        await until("reloaded", lambda: campus.rules.reloads == 1)
        await campus.send(campus.reading(Family.GAS, "gas-septic-1", h2s=4.0, nh3=2.0))
        await campus.advance(301)
        assert campus.open_alerts("septic-gas-high")
        (rules_dir / "broken.yaml").write_text(
            "version: 1\nrules:\n  - {id: x, name: x, type: threshold, match: {family: gas}, "
            "levels: [{severity: warning, raise: 'h3s > 1'}]}\n", encoding="utf-8")
        await until("the bad file reported",
                    lambda: "broken.yaml: rule 'x' (rules[0]): field 'levels.0.raise'"
                    in campus.rules.reload_error)
        assert campus.rules.reloads == 1 and "septic-gas-high" in campus.rules.rules.rules
        assert campus.rules.failed is None



async def test_second_fire_under_the_same_panel_is_not_hidden(settings: Settings,
                                                              tmp_path: Path) -> None:
    """The e-bike panel covers all four sheds: while it reports the west-shed fire, a fire
    in the north shed is a second incident, shown, not suppressed under the panel."""
    clock = ManualClock(START)
    campus = Campus(settings, tmp_path, clock)
    async with running(campus):
        await campus.send(campus.event("fd-ebw-01", "fire_alarm"),
                          campus.event("fp-ebike", "fire_alarm"))
        await campus.send(campus.event("fd-ebn-01", "fire_alarm"))
        assert campus.rules is not None and campus.rules.engine is not None
        fires = [i for i in campus.rules.engine.book.incidents.values() if i.category == "fire"]
        assert sorted(i.place for i in fires) == ["ebike-shed-north", "ebike-shed-west"]
        [west] = [a for a in campus.open_alerts("fire-detector-alarm") if a.source == "fd-ebw-01"]
        [north] = [a for a in campus.open_alerts("fire-detector-alarm")
                   if a.source == "fd-ebn-01"]
        assert west.state is AlertState.SUPPRESSED and north.state is AlertState.ACTIVE_UNACK
        player = campus.player
        assert player is not None
        await until("the north shed's PA zone announces",
                    lambda: player.screens["pa-north"].announced)
