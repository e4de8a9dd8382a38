"""The shift report from a real alert store (rules.store on SQLite) and a real InfluxDB,
with alerts, acknowledgements, a flood, a chattering point and a stale alert whose
figures are worked out here."""

from __future__ import annotations

from datetime import datetime
from pathlib import Path
from zoneinfo import ZoneInfo

import pytest
from pydantic import SecretStr

from facility import lineprotocol as lp
from facility.influx import InfluxClient
from facility.messages import Severity
from facility.settings import Settings, StateSettings
from facility.site import load_site
from reports import render
from reports.model import Figure, Report, Table
from reports.shift import build, shift_period
from rules.alerts import Alert, Transition
from rules.engine import Effects
from rules.store import AlertStore
from tests.reportdata import tags_of, write_lines

TZ = ZoneInfo("Asia/Shanghai")
NS = 10**9
SITE = "panyu-admin-centre"


def at(day: int, hour: int, minute: int = 0, second: int = 0) -> int:
    return int(datetime(2026, 11, day, hour, minute, second, tzinfo=TZ).timestamp()) * NS


def alert(aid: str, rule: str, source: str, family: str, place: str, severity: Severity,
          priority: int, raised: int, acked: int = 0, by: str = "", cleared: int = 0,
          raises: int = 1) -> Alert:
    return Alert(id=aid, site=SITE, rule=rule, source=source, severity=severity,
                 priority=priority, category="alarm", raised_at=raised, family=family,
                 place=place, title=f"{rule} {source}", active=not cleared,
                 acknowledged=bool(acked), cleared_at=cleared, acked_at=acked, acked_by=by,
                 closed_at=cleared + NS if cleared and acked else 0, raise_count=raises,
                 updated_at=raised)


def history(a: Alert, raises: list[int] | None = None) -> list[Transition]:
    out = [Transition(a.id, SITE, t, "raised" if i == 0 else "re_raised", "normal",
                      "active_unack") for i, t in enumerate(raises or [a.raised_at])]
    if a.acked_at:
        out.append(Transition(a.id, SITE, a.acked_at, "acknowledged", "active_unack",
                              "active_ack", by=a.acked_by))
    if a.cleared_at:
        out.append(Transition(a.id, SITE, a.cleared_at, "cleared", "active_ack", "normal"))
    return out


def alerts() -> list[tuple[Alert, list[Transition]]]:
    fire = alert("a-fire", "fire_alarm", "fd-ebw-01", "fire", "ebike-shed-west",
                 Severity.CRITICAL, 1, at(20, 9), at(20, 9, 2), "张三", at(20, 9, 30))
    drain = alert("a-drain", "water_level_high", "wl-west-gate", "drainage", "west-gate-drain",
                  Severity.WARNING, 4, at(20, 14), at(20, 14, 10), "李四", at(20, 16))
    ev = alert("a-ev", "charger_faulted", "evc-cp-02", "ev_charger", "car-park",
               Severity.MINOR, 3, at(20, 20))
    out = [(a, history(a)) for a in (fire, drain, ev)]
    for i in range(12):  # a flood: 12 bollard faults within 10 minutes
        raised = at(21, 3) + i * 45 * NS
        a = alert(f"a-bollard-{i}", "bollard_fault", f"bollard-s{i + 1:02d}", "bollard",
                  "south-gate", Severity.MAJOR, 2, raised, raised + 60 * NS, "王五",
                  raised + 300 * NS)
        out.append((a, history(a)))
    chatter = alert("a-chatter", "water_level_high", "wl-ne-outlet", "drainage",
                    "ne-rain-outlet", Severity.WARNING, 4, at(20, 22), at(20, 22, 5), "李四",
                    at(20, 22, 10), raises=3)
    out.append((chatter, history(chatter, [at(20, 22), at(20, 22, 0, 20), at(20, 22, 0, 40)])))
    stale = alert("a-stale", "electrical_fire", "efm-west", "fire", "west-elec-room",
                  Severity.MINOR, 3, at(18, 8))
    out.append((stale, history(stale)))
    return out


async def fill_store(url: str) -> None:
    store = await AlertStore.open(url)
    try:
        for a, transitions in alerts():
            await store.apply(SITE, Effects(alerts=[(a, "raised", "", "")],
                                            transitions=transitions), a.updated_at)
    finally:
        await store.close()


async def fill_audit(url: str) -> None:
    """Two commands through the API's audit log: an approved lowering of the whole gate
    that the gateway carried out, and a raise refused for want of the role."""
    from api.store import ApiStore

    async with await ApiStore.open(url) as store:
        await store.append(site=SITE, command="c-1", event="requested", username="王五",
                           role="supervisor", action="lower_all", targets=["bollard-plc-south"],
                           reason="消防车进场", data={"approval_required": True},
                           once="requested", ts=at(20, 9, 55))
        await store.append(site=SITE, command="c-1", event="approved", username="张三",
                           role="supervisor", action="lower_all",
                           targets=["bollard-plc-south"], once="decision",
                           data={"issued_at": at(20, 9, 56), "expires_at": at(20, 9, 58)},
                           ts=at(20, 9, 56))
        await store.append(site=SITE, command="c-1", event="result", username="gateway",
                           action="lower_all", targets=["bollard-plc-south"], outcome="done",
                           once="result:bollard-plc-south:done", ts=at(20, 9, 57))
        await store.append(site=SITE, command="c-2", event="refused", username="访客",
                           role="viewer", action="raise", targets=["bollard-s03"],
                           reason="测试", outcome="refused", detail="raise needs the operator "
                           "role (you are viewer)", ts=at(20, 15))
        await store.append(site=SITE, command="c-0", event="requested", username="王五",
                           action="raise_all", targets=["bollard-plc-south"], reason="昨天",
                           once="requested", ts=at(19, 15))  # before the shift


async def fill_influx(influx: InfluxClient, settings: Settings) -> None:
    site = load_site(settings.site_path)
    plc = tags_of(site, "bollard-plc-south")
    lines = []
    for minute in range(0, 24 * 60, 5):
        t = at(20, 8) + minute * 60 * NS
        up = 42 if minute >= 120 else 0  # raised at 10:00
        lines.append(lp.line("bollard", plc, {"quality": "good", "bollards_up": up,
                                              "bollards_down": 42 - up, "bollards_fault": 0,
                                              "mode": "auto", "emergency_rise": "idle"}, t))
        unit = {**plc, "device": "bollard-s01", "controller": "bollard-plc-south"}
        lines.append(lp.line("bollard", unit, {"quality": "good", "state": "up" if up else
                                               "down", "cycle_count": 100 + (2 if up else 0),
                                               "fault_code": "none"}, t))
    # A 7-second emergency rise at 11:00:10, between two minute samples; the gateway
    # reads the PLC every second, so each second of it is a reading.
    for second in range(0, 30):
        t = at(20, 11) + second * NS
        emergency = 10 <= second < 17
        lines.append(lp.line("bollard", plc, {
            "quality": "good", "bollards_up": 42, "bollards_down": 0, "bollards_fault": 0,
            "mode": "emergency" if emergency else "auto",
            "emergency_rise": ("rising" if second < 12 else "complete") if emergency
            else "idle"}, t))
    for device, changes in {"em-main-total": [(at(20, 7), "online", ""),
                                              (at(20, 12), "offline", "no answer"),
                                              (at(20, 13), "online", "")],
                            "fp-main": [(at(19, 7), "online", "")]}.items():
        family = site.device(device).family
        for t, state, reason in changes:
            lines.append(lp.line("device_status", {"site": SITE, "family": family,
                                                   "device": device},
                                 {"state": state, "online": state == "online",
                                  "reason": reason}, t))
    for n in range(2):
        lines.append(lp.line("device_event", {"site": SITE, "family": "fire",
                                              "device": "fd-ebw-01", "name": "fire_alarm"},
                             {"id": f"FP-EB-{n}", "text": "火警", "attrs": "{}"},
                             at(20, 9) + n * NS))
    await write_lines(influx, lines)


def figure(report: Report, label: str) -> Figure:
    return next(f for f in report.figures() if f.label == label)


def table(report: Report, key: str) -> Table:
    return next(t for t in report.tables() if t.key == key)


async def test_shift_report(settings: Settings, influx: InfluxClient, tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'state.sqlite'}"
    settings = settings.model_copy(update={"state": StateSettings(url=SecretStr(url))})
    await fill_store(url)
    await fill_audit(url)
    await fill_influx(influx, settings)
    site = load_site(settings.site_path)
    period = shift_period("2026-11-20", "08:00", 24, TZ)
    steps: list[str] = []
    report = await build(influx, settings, site, period, steps.append)
    assert steps

    # 16 alerts raised in the shift (the stale one was raised two days before).
    assert figure(report, "报警总数").value == 16
    # Acknowledged: 120 s, 600 s, twelve of 60 s, 300 s -> median 60 s, p90 300 s, max 600 s.
    assert figure(report, "确认用时中位数").value == pytest.approx(1.0)
    assert figure(report, "确认用时90%分位").value == pytest.approx(5.0)
    assert figure(report, "确认用时最长").value == pytest.approx(10.0)
    assert figure(report, "交班时未确认").value == 1
    # Cleared: 1800 s, 7200 s, twelve of 300 s, 600 s -> median 300 s.
    assert figure(report, "消除用时中位数").value == pytest.approx(5.0)
    by_family = {r[0]: r for r in table(report, "by_family").rows}
    assert by_family["升降柱"][1] == 12 and by_family["排水"][1] == 2
    assert by_family["消防"][4] == pytest.approx(2.0)  # median ack of the fire alarm, min
    by_severity = [r[0] for r in table(report, "by_severity").rows]
    assert by_severity == ["紧急", "严重", "一般", "预警"]

    # ISA-18.2: 18 annunciations (3 raises of the chattering point), one flood period
    # of 12, one chattering point, one stale alert; 144 ten-minute periods in 24 h.
    assert figure(report, "报警（已提示操作员）").value == 18
    assert figure(report, "报警（未提示操作员）").value == 0
    assert figure(report, "单个10分钟最多报警数").value == 12
    assert figure(report, "平均每10分钟报警数").value == pytest.approx(round(18 / 144, 2))
    assert figure(report, "报警泛滥时段占比").value == f"{100 / 144:.1f}%"
    assert [r[2] for r in table(report, "floods").rows] == [12]
    assert [r[1] for r in table(report, "chattering").rows] == ["东北角雨水口水位"]
    assert [r[0] for r in table(report, "stale").rows] == ["a-stale"]
    operators = {r[0]: r[1] for r in table(report, "operators").rows}
    assert operators == {"张三": 1, "李四": 2, "王五": 12}

    # InfluxDB: the bollards rose at 10:00; bollard-s01 moved twice; 2 fire events;
    # the main meter was offline for one hour of 24.
    commands = table(report, "commands").rows
    assert [(r[1], r[3], r[4], r[6]) for r in commands] == [
        ("全部降下", "王五", "张三", "完成"), ("升起", "访客", "无需审批", "拒绝执行")]
    assert commands[0][0] == "11-20 09:55:00" and commands[0][5] == "消防车进场"
    ops = table(report, "bollard_operations").rows
    assert [(r[0], r[2], r[5], r[6]) for r in ops] == [
        ("08:00:00", 0, "自动", "未触发"), ("10:00:00", 42, "自动", "未触发"),
        ("11:00:10", 42, "紧急", "上升中"), ("11:00:12", 42, "紧急", "已完成"),
        ("11:00:17", 42, "自动", "未触发")]
    assert table(report, "bollard_units").rows == [["南门升降柱1号", 2, "升起", "无"]]
    assert {r[1] for r in ops} == {"南门防暴恐升降柱控制柜"}
    assert table(report, "device_events").rows[0][3] == 2
    unavailable = {r[0]: r for r in table(report, "unavailable").rows}
    assert unavailable["主楼总表"][2] == pytest.approx(23 / 24)
    assert unavailable["主楼总表"][3] == 1 and unavailable["主楼总表"][5] == "no answer"
    assert "主楼设备房火灾报警控制器" not in unavailable

    paths = render.write_all(report, tmp_path, "shift", ("html", "pdf"))
    from pypdf import PdfReader

    text = "".join(page.extract_text() for page in PdfReader(paths["pdf"]).pages)
    for expected in ("值班报告", "报警系统性能", "ISA-18.2", "指令及下达人", "消防车进场",
                     "设备在线率"):
        assert expected in text, expected


async def test_a_shift_under_way_counts_up_to_now(settings: Settings, influx: InfluxClient,
                                                  tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'state.sqlite'}"
    settings = settings.model_copy(update={"state": StateSettings(url=SecretStr(url))})
    await fill_store(url)
    await fill_audit(url)
    await fill_influx(influx, settings)
    site = load_site(settings.site_path)
    period = shift_period("2026-11-20", "08:00", 24, TZ)
    now = datetime(2026, 11, 20, 14, 0, tzinfo=TZ)
    report = await build(influx, settings, site, period, lambda _: None, at=now)
    assert "值班尚未结束，统计截至 2026-11-20 14:00:00" in report.subtitle
    # Offline 12:00-13:00 of the six hours so far (not of 24: the rest has not happened).
    unavailable = {r[0]: r for r in table(report, "unavailable").rows}
    assert unavailable["主楼总表"][2] == pytest.approx(5 / 6)
    summary = {r[0]: r for r in table(report, "availability").rows}
    assert summary["消防"][3] == 1.0
    # The bollards' changes so far; none after now.
    assert [r[0] for r in table(report, "bollard_operations").rows][-1] == "11:00:17"
    with pytest.raises(ValueError, match="尚未开始"):
        await build(influx, settings, site, period, lambda _: None,
                    at=datetime(2026, 11, 20, 7, 59, tzinfo=TZ))
