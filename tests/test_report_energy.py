"""The energy-saving report against a real InfluxDB holding meters with known loads.

The expected figures are worked out here from the loads themselves (power x time),
with this test's own list of office days, not with the report's code.
"""

from __future__ import annotations

import math
from datetime import datetime, timedelta
from pathlib import Path
from zoneinfo import ZoneInfo

import pytest

from facility.influx import InfluxClient, quote_ident
from facility.schema import ENERGY, ensure_downsampling, rebuild
from facility.settings import Settings
from facility.site import SiteConfig, load_site
from reports import periods, render
from reports.calendar import load_calendar
from reports.energy_report import build
from reports.model import Figure, Report, Table
from tests.reportdata import MINUTE_NS, Meter, meter_lines, ns, write_lines

TZ = ZoneInfo("Asia/Shanghai")
# ISO week 2026-W41: 5-7 October are National Day holidays, Saturday the 10th is a
# make-up working day (调休), Sunday the 11th a rest day.
WEEK = periods.week(2026, 41, TZ)
OFFICE_DAYS = {8, 9, 10}
START, END = ns(WEEK.start), ns(WEEK.end)
PREV_START = ns(WEEK.start - timedelta(days=7))
LAST_YEAR = periods.week(2025, 41, TZ)

RESET_AT = ns(datetime(2026, 10, 9, 10, 7, tzinfo=TZ))  # inside a 15-minute bucket
GAP = (ns(datetime(2026, 10, 8, 1, 0, tzinfo=TZ)), ns(datetime(2026, 10, 8, 3, 0, tzinfo=TZ)))
# A new meter with a lower reading takes over at a bucket boundary (after 14:59); a
# new EV sub-meter with a much higher reading inside a bucket (after 10:07).
REPLACED_AT = ns(datetime(2026, 10, 6, 14, 59, tzinfo=TZ))
JUMP_AT = ns(datetime(2026, 10, 7, 10, 7, tzinfo=TZ))
PEAK = (ns(datetime(2026, 10, 9, 14, 0, tzinfo=TZ)), ns(datetime(2026, 10, 9, 15, 0, tzinfo=TZ)))
LATE = (ns(datetime(2026, 10, 10, 20, 0, tzinfo=TZ)), ns(datetime(2026, 10, 10, 21, 0, tzinfo=TZ)))
SESSIONS = [(ns(datetime(2026, 10, 8, 10, 0, tzinfo=TZ)),
             ns(datetime(2026, 10, 8, 12, 0, tzinfo=TZ))),
            (ns(datetime(2026, 10, 9, 13, 0, tzinfo=TZ)),
             ns(datetime(2026, 10, 9, 15, 0, tzinfo=TZ)))]


def office(t: int) -> bool:
    moment = datetime.fromtimestamp(t / 1e9, TZ)
    minutes = moment.hour * 60 + moment.minute
    return moment.day in OFFICE_DAYS and moment.month == 10 and 8 * 60 + 30 <= minutes < 18 * 60


def lighting_power(t: int) -> float:
    return 20.0 if office(t) else 2.0


def parking_power(t: int) -> float:
    return 100.0 if PEAK[0] <= t < PEAK[1] else 25.0


def charger_power(t: int) -> float:
    return 7.0 if any(a <= t < b for a, b in SESSIONS) else 0.0


def meters() -> list[Meter]:
    # Readings from a day before the previous week to a day after this week; the same
    # week last year at other loads.
    a, b = PREV_START - 86_400 * 10**9, END + 86_400 * 10**9
    return [
        Meter("em-main-total", lambda t: 60.0, a, b, counter=10_000.0, resets=[RESET_AT],
              missing=[GAP]),
        Meter("em-main-lighting", lighting_power, a, b, counter=500.0),
        Meter("em-east-total", lambda t: 30.0, a, b, counter=4_000.0,
              replacements={REPLACED_AT: 1_500.0}),
        Meter("em-parking-total", parking_power, a, b, counter=7_000.0),
        Meter("em-ev-charging", lambda t: 8.0, a, b, counter=300.0,
              replacements={JUMP_AT: 90_000.0}),
    ]


def last_year() -> Meter:
    a, b = ns(LAST_YEAR.start) - 3600 * 10**9, ns(LAST_YEAR.end) + 3600 * 10**9
    return Meter("em-main-total", lambda t: 40.0, a, b, counter=2_000.0)


def charger() -> Meter:
    a, b = PREV_START, END + 86_400 * 10**9
    sessions = [s for s, _ in SESSIONS[1:]]  # the counter restarts at each later session
    return Meter("evc-pb-01", charger_power, a, b, counter=0.0,
                 resets=[s - MINUTE_NS for s in sessions])


def table(report: Report, key: str) -> Table:
    return next(t for t in report.tables() if t.key == key)


def row(tab: Table, first: str) -> dict[str, object]:
    found = next(r for r in tab.rows if r[0] == first)
    return {c.label: v for c, v in zip(tab.columns, found, strict=True)}


def figure(report: Report, label: str) -> Figure:
    return next(f for f in report.figures() if f.label == label)


async def make_report(influx: InfluxClient, settings: Settings, site: SiteConfig) -> Report:
    calendar = load_calendar(settings.reports)
    steps: list[str] = []
    report = await build(influx, settings, site, WEEK, calendar, steps.append)
    assert steps, "progress is reported"
    return report


async def write_data(influx: InfluxClient, site: SiteConfig) -> None:
    lines: list[str] = []
    for meter in meters():
        skip = (lambda t: LATE[0] <= t < LATE[1]) if meter.device == "em-parking-total" else None
        lines += meter_lines(site, meter, skip=skip)
    lines += meter_lines(site, charger(), family="ev_charger", counter_field="session_energy",
                         power_field="power")
    await write_lines(influx, lines)
    # Last year's raw points are past the raw retention (400 days) by now: only their
    # rollups are left, made at the time. Reproduce that: raw points in a scratch
    # retention policy, rolled up from there.
    db = quote_ident(influx.database)
    await influx.query(f"CREATE RETENTION POLICY archive ON {db} DURATION INF REPLICATION 1",
                       write=True)
    archive = influx.settings.model_copy(update={"retention_policy": "archive"})
    async with InfluxClient(archive, database=influx.database) as old:
        await write_lines(old, meter_lines(site, last_year()))
        a, b = ns(LAST_YEAR.start) - 3600 * 10**9, ns(LAST_YEAR.end) + 3600 * 10**9
        await rebuild(old, ENERGY, a, b)


async def test_energy_figures_match_the_known_loads(settings: Settings, influx: InfluxClient,
                                                    tmp_path: Path) -> None:
    site = load_site(settings.site_path)
    await ensure_downsampling(influx, settings.reports)
    await write_data(influx, site)
    report = await make_report(influx, settings, site)
    main_meter, lighting, _, parking = meters()[:4]
    buckets = (END - START) // (15 * MINUTE_NS)

    # Main building: 60 kW for the whole week. The reset inside a bucket loses nothing
    # (the counter restarts at the last reading before it); the 2-hour gap is counted
    # in the total (the counter measured it) but not placed in time.
    main_kwh = 60.0 * 24 * 7
    assert main_meter.energy(START - MINUTE_NS, END - MINUTE_NS) == pytest.approx(main_kwh)
    buildings = table(report, "buildings")
    main = row(buildings, "主楼")
    assert main["用电量"] == pytest.approx(main_kwh, abs=1e-3)
    assert main["折标准煤"] == pytest.approx(main_kwh * 0.1229, abs=1e-3)
    assert main["单位面积能耗"] == pytest.approx(main_kwh * 0.1229 / 42_000, rel=1e-6)
    assert main["人均能耗"] == pytest.approx(main_kwh * 0.1229 / 1_100, rel=1e-6)
    # 8 empty buckets in the gap, and the bucket after it (its start is not measured).
    assert main["覆盖率"] == pytest.approx((buckets - 9) / buckets)
    # The previous week was 60 kW too; last year's week 40 kW.
    assert main["上期"] == pytest.approx(main_kwh, abs=1e-3)
    assert main["去年同期"] == pytest.approx(40.0 * 24 * 7, abs=1e-3)
    assert main["同比"] == pytest.approx(0.5, abs=1e-6)

    # Office hours against nights and rest days, from this test's own calendar.
    off = row(table(report, "off_hours"), "主楼")
    office_buckets = 3 * 38  # 8, 9, 10 October, 08:30-18:00
    rest_buckets = 4 * 96  # 5, 6, 7 (National Day) and Sunday the 11th
    night_buckets = 3 * 96 - office_buckets
    assert off["工作时间"] == pytest.approx(office_buckets * 15.0, abs=1e-3)
    assert off["周末及节假日"] == pytest.approx(rest_buckets * 15.0, abs=1e-3)
    gap_minutes = (GAP[1] - GAP[0]) // MINUTE_NS + 1  # from the reading before the gap
    assert off["未分配（跨缺口）"] == pytest.approx(gap_minutes * 1.0, abs=1e-3)
    assert off["工作日夜间"] == pytest.approx(main_kwh - office_buckets * 15.0
                                              - rest_buckets * 15.0 - gap_minutes, abs=1e-3)
    assert night_buckets > 0

    # East annex: the meter was replaced; the minute across the replacement is unknown.
    east_row = row(buildings, "东副楼")
    assert east_row["用电量"] == pytest.approx(30.0 * 24 * 7 - 0.5, abs=1e-3)
    events = table(report, "counter_events")
    kinds = sorted((r[0], r[2]) for r in events.rows)
    assert kinds == [("东副楼总表", "换表"), ("主楼总表", "清零"), ("电动汽车充电", "跳变")]
    assert row(table(report, "data_quality"), "东副楼总表")["覆盖率"] == \
        pytest.approx((buckets - 1) / buckets)

    # Sub-loads are parts of the building, never added to it: campus = the total meters.
    parking_kwh = parking.energy(START - MINUTE_NS, END - MINUTE_NS)
    campus = main_kwh + (30.0 * 24 * 7 - 0.5) + parking_kwh
    assert figure(report, "总用电量").value == pytest.approx(campus, abs=1e-3)
    loads = table(report, "loads")
    lighting_kwh = lighting.energy(START - MINUTE_NS, END - MINUTE_NS)
    assert row(loads, "照明")["用电量"] == pytest.approx(lighting_kwh, abs=1e-3)
    # A rise inside a bucket that the meter cannot have used: the bucket's increase is
    # unknown (14 minutes at 8 kW), the step into it is still measured.
    ev_kwh = 8.0 * 24 * 7 - 14 * 8.0 / 60
    assert row(loads, "电动汽车充电")["用电量"] == pytest.approx(ev_kwh, abs=1e-3)
    # Other = each total meter minus its building's sub-meters (east has none here).
    other = main_kwh - lighting_kwh + (30.0 * 24 * 7 - 0.5) + parking_kwh - ev_kwh
    assert row(loads, "其他（总表减分项）")["用电量"] == pytest.approx(other, abs=1e-3)

    # Peak demand: the parking building's hour at 100 kW; the campus adds the others.
    demand = table(report, "demand")
    assert row(demand, "停车楼")["最大需量"] == pytest.approx(100.0, abs=1e-6)
    assert str(row(demand, "停车楼")["出现时间"]).startswith("10-09 14:")
    assert row(demand, "园区合计")["最大需量"] == pytest.approx(60 + 30 + 100, abs=1e-6)

    # EV charger: two sessions of 2 h at 7 kW; the counter restarts for the second.
    ev = row(table(report, "ev_chargers"), "停车楼交流桩1")
    assert ev["充电量"] == pytest.approx(28.0, abs=1e-3)
    assert ev["充电次数"] == 2

    # Every figure names its formula and every table its coverage.
    for fig in report.figures():
        assert fig.formula
    for tab in report.tables():
        assert tab.formulas, tab.key

    # Rendering: the PDF's text layer holds the Chinese headings and names.
    paths = render.write_all(report, tmp_path, "energy")
    from pypdf import PdfReader

    text = "".join(page.extract_text() for page in PdfReader(paths["pdf"]).pages)
    for expected in ("分建筑能耗", "主楼", "折标准煤", "非工作时间", "计算公式", "数据覆盖率"):
        assert expected in text, expected
    html = paths["html"].read_text(encoding="utf-8")
    assert "GB/T 2589" in html and "Noto Sans CJK SC" in html
    from openpyxl import load_workbook

    book = load_workbook(paths["xlsx"])
    sheet = book["buildings"]
    values = {r[0]: r[1] for r in sheet.iter_rows(min_row=3, values_only=True) if r[0]}
    assert values["主楼"] == pytest.approx(main_kwh, abs=1e-3)


async def test_late_data_is_counted_in_the_next_report(settings: Settings,
                                                       influx: InfluxClient) -> None:
    site = load_site(settings.site_path)
    await ensure_downsampling(influx, settings.reports)
    await write_data(influx, site)
    before = row(table(await make_report(influx, settings, site), "buildings"), "停车楼")
    buckets = (END - START) // (15 * MINUTE_NS)
    assert before["覆盖率"] == pytest.approx((buckets - 5) / buckets)
    # The hour the gateway spooled arrives now, after the rollups were made.
    parking = meters()[3]
    late = [line for line in meter_lines(site, parking)
            if LATE[0] <= int(line.rsplit(" ", 1)[1]) < LATE[1]]
    await write_lines(influx, late)
    report = await make_report(influx, settings, site)
    after = row(table(report, "buildings"), "停车楼")
    assert after["覆盖率"] == pytest.approx(1.0)
    assert after["用电量"] == pytest.approx(before["用电量"], abs=1e-3)  # the counter had it
    assert any("重新计算" in note for note in table(report, "data_quality").notes)


def test_counter_rules_without_influx() -> None:
    from reports.counters import Bucket, meter_energy

    q = 15 * MINUTE_NS
    rows = [Bucket(t=i * q, first=10.0 + i, last=10.5 + i, low=10.0 + i, high=10.5 + i,
                   count=15, power_max=4.0) for i in range(4)]
    # A drop to a value the meter cannot have used since (4 kW): a replacement.
    rows.append(Bucket(t=4 * q, first=900.0, last=900.5, low=900.0, high=900.5, count=15,
                       power_max=4.0))
    result = meter_energy(rows, q, 5 * q)
    assert [e.kind for e in result.events] == ["jump"]
    assert result.total == pytest.approx(3 * 1.0 + 0.5)
    assert len(result.covered) == 3
    assert math.isclose(result.coverage, 3 / 4)
