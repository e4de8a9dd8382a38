"""The district energy report against a real InfluxDB holding four sites' meters.

Three offices and a school; one office lost a whole day of readings; the same week a
year earlier for every site. The expected figures are recomputed here from the readings
this test wrote (the documented counter rule: each 15-minute interval's energy is the
step from the previous interval's last reading plus the rise inside it, a step across
a gap is measured but not placed in time), with this test's own list of office days.
"""

from __future__ import annotations

import asyncio
import json
from datetime import datetime, timedelta
from pathlib import Path
from zoneinfo import ZoneInfo

import pytest
from pydantic import ValidationError

from app.cli import main
from facility.influx import InfluxClient, quote_ident
from facility.localservers import InfluxServer
from facility.schema import ENERGY, ensure_downsampling, rebuild
from facility.settings import InfluxSettings, Settings
from facility.site import SiteConfig, load_site
from reports import periods, render
from reports.calendar import load_calendar
from reports.district import build, facts, parse_period
from reports.model import Figure, Report, Table
from tests.reportdata import MINUTE_NS, Meter, meter_lines, ns, write_lines
from tests.test_report_energy import OFFICE_DAYS

TZ = ZoneInfo("Asia/Shanghai")
WEEK = periods.week(2026, 41, TZ)  # 5-7 October holidays, Saturday the 10th a make-up day
LAST_YEAR = periods.week(2025, 41, TZ)
START, END = ns(WEEK.start), ns(WEEK.end)
Y_START, Y_END = ns(LAST_YEAR.start), ns(LAST_YEAR.end)
BUCKET = 15 * MINUTE_NS
EVERY = 5  # minutes between readings: enough for exact figures, fast to roll up
DAY_LOST = (ns(datetime(2026, 10, 8, tzinfo=TZ)), ns(datetime(2026, 10, 9, tzinfo=TZ)))
REPO = Path(__file__).resolve().parent.parent


def office(t: int) -> bool:
    moment = datetime.fromtimestamp(t / 1e9, TZ)
    minutes = moment.hour * 60 + moment.minute
    return moment.month == 10 and moment.year == 2026 and moment.day in OFFICE_DAYS \
        and 8 * 60 + 30 <= minutes < 18 * 60


def workday(t: int) -> bool:
    moment = datetime.fromtimestamp(t / 1e9, TZ)
    return moment.day in OFFICE_DAYS


def site(site_id: str, name: str, body: dict[str, object],
         meters: list[tuple[str, str, str]]) -> SiteConfig:
    """A small site: one building, its energy meters (id, name, load)."""
    return SiteConfig.model_validate({
        "version": 1,
        "site": {"id": site_id, "name": name, "public_body": body},
        "zones": [{"id": "z", "name": "区"}],
        "places": [{"id": "b1", "name": f"{name}主楼", "kind": "building", "zone": "z"}],
        "gateways": [{"id": f"gw-{site_id}", "kind": "modbus"}],
        "devices": [{"id": mid, "family": "energy", "kind": "meter", "name": mname,
                     "gateway": f"gw-{site_id}", "place": "b1", "tags": {"load": load},
                     "modbus": {"host": "127.0.0.1", "port": 0, "unit": n + 1,
                                "model": "chint-dtsu666"}}
                    for n, (mid, mname, load) in enumerate(meters)]})


SITES = [
    site("office-a", "甲机关", {"kind": "office", "floor_area_m2": 10_000, "staff": 200},
         [("a-total", "甲总表", "total"), ("a-light", "甲照明", "lighting")]),
    site("office-b", "乙机关", {"kind": "office", "floor_area_m2": 5_000, "staff": 30},
         [("b-total", "乙总表", "total")]),
    site("office-c", "丙机关", {"kind": "office", "floor_area_m2": 8_000, "staff": 100},
         [("c-total", "丙总表", "total")]),
    # No total meter: the school is the sum of its two sub-meters.
    site("school-d", "丁中学", {"kind": "school", "floor_area_m2": 20_000, "staff": 100,
                                "students": 1_500},
         [("d-light", "丁照明", "lighting"), ("d-hvac", "丁空调", "hvac")]),
]
POWER = {  # kW this year, and the same week last year
    "a-total": (lambda t: 50.0, lambda t: 40.0),
    "a-light": (lambda t: 9.0, lambda t: 9.0),
    "b-total": (lambda t: 40.0 if office(t) else 10.0, lambda t: 20.0),
    "c-total": (lambda t: 30.0, lambda t: 30.0),
    "d-light": (lambda t: 20.0 if office(t) else 5.0, lambda t: 10.0),
    "d-hvac": (lambda t: 15.0, lambda t: 10.0),
}
BASIS = {"office-a": ["a-total"], "office-b": ["b-total"], "office-c": ["c-total"],
         "school-d": ["d-light", "d-hvac"]}
Readings = dict[str, list[tuple[int, float]]]


def sampled(t: int) -> bool:
    return (t // MINUTE_NS) % EVERY != 0


def site_of(meter_id: str) -> SiteConfig:
    return next(s for s in SITES if any(d.id == meter_id for d in s.devices))


async def write_data(influx: InfluxClient) -> tuple[Readings, Readings]:
    """This week (a day either side) and last year's week; the readings written."""
    now: Readings = {}
    year: Readings = {}
    lines: list[str] = []
    old_lines: list[str] = []
    for meter_id, (power, power_then) in POWER.items():
        lost = [DAY_LOST] if meter_id == "c-total" else []
        meter = Meter(meter_id, power, START - 86_400 * 10**9, END + 86_400 * 10**9,
                      counter=1_000.0, missing=lost)
        then = Meter(meter_id, power_then, Y_START - 86_400 * 10**9, Y_END + 86_400 * 10**9,
                     counter=100.0)
        now[meter_id] = [(t, v) for t, v, _ in meter.readings() if not sampled(t)]
        year[meter_id] = [(t, v) for t, v, _ in then.readings() if not sampled(t)]
        lines += meter_lines(site_of(meter_id), meter, skip=sampled)
        old_lines += meter_lines(site_of(meter_id), then, skip=sampled)
    await write_lines(influx, lines)
    # Last year's raw points are past the raw retention (400 days): only their rollups
    # are left. Raw points in a scratch retention policy, rolled up from there.
    db = quote_ident(influx.database)
    await influx.query(f"CREATE RETENTION POLICY archive ON {db} DURATION INF REPLICATION 1",
                       write=True)
    archive = influx.settings.model_copy(update={"retention_policy": "archive"})
    async with InfluxClient(archive, database=influx.database) as old:
        await write_lines(old, old_lines)
        await rebuild(old, ENERGY, Y_START - 86_400 * 10**9, Y_END + 86_400 * 10**9)
    return now, year


def expect(readings: list[tuple[int, float]], start: int, end: int) -> dict[str, float]:
    """The meter's energy in [start, end) by the documented rule, from its readings."""
    buckets: dict[int, list[float]] = {}
    for t, value in readings:
        if start - BUCKET <= t < end:
            buckets.setdefault(t - t % BUCKET, []).append(value)
    out = {"office": 0.0, "night": 0.0, "rest": 0.0, "unallocated": 0.0, "covered": 0.0}
    for b in range(start, end, BUCKET):
        if b not in buckets:
            continue
        inside = buckets[b][-1] - buckets[b][0]
        prev = buckets.get(b - BUCKET)
        kind = "office" if office(b) else "night" if workday(b) else "rest"
        out[kind] += inside
        if prev is None:
            earlier = [bb for bb in buckets if bb < b]
            out["unallocated"] += buckets[b][0] - buckets[max(earlier)][-1]
        else:
            out[kind] += buckets[b][0] - prev[-1]
            out["covered"] += 1
    out["total"] = out["office"] + out["night"] + out["rest"] + out["unallocated"]
    return out


def table(report: Report, key: str) -> Table:
    return next(t for t in report.tables() if t.key == key)


def row(tab: Table, first: str, column: int = 0) -> dict[str, object]:
    found = next(r for r in tab.rows if r[column] == first)
    return {c.label: v for c, v in zip(tab.columns, found, strict=True)}


def figure(report: Report, label: str) -> Figure:
    return next(f for f in report.figures() if f.label == label)


async def test_district_report_ranks_complete_sites_and_flags_the_rest(
        settings: Settings, influx: InfluxClient, tmp_path: Path) -> None:
    await ensure_downsampling(influx, settings.reports)
    now, year = await write_data(influx)
    steps: list[str] = []
    report = await build(lambda _site: influx, settings, SITES, WEEK,
                         load_calendar(settings.reports), steps.append,
                         at=WEEK.end + timedelta(days=30))
    assert steps
    n = (END - START) // BUCKET

    sums: dict[str, dict[str, float]] = {}
    years: dict[str, float] = {}
    for site_id, meters in BASIS.items():
        parts = [expect(now[m], START, END) for m in meters]
        sums[site_id] = {k: sum(p[k] for p in parts) for k in parts[0]}
        sums[site_id]["covered"] = min(p["covered"] for p in parts)
        years[site_id] = sum(expect(year[m], Y_START, Y_END)["total"] for m in meters)
    # Sanity of the recomputation: a constant 50 kW for 168 hours.
    assert sums["office-a"]["total"] == pytest.approx(50.0 * 168, abs=1e-6)

    sites = table(report, "sites")
    area = {"甲机关": 10_000, "乙机关": 5_000, "丙机关": 8_000, "丁中学": 20_000}
    persons = {"甲机关": 200, "乙机关": 30, "丙机关": 100, "丁中学": 1_600}
    names = {"office-a": "甲机关", "office-b": "乙机关", "office-c": "丙机关",
             "school-d": "丁中学"}
    for site_id, name in names.items():
        got = row(sites, name)
        kwh = sums[site_id]["total"]
        assert got["用电量"] == pytest.approx(kwh, abs=1e-3), name
        assert got["综合能耗"] == pytest.approx(kwh * 0.1229, abs=1e-3), name
        assert got["单位面积能耗"] == pytest.approx(kwh * 0.1229 / area[name], rel=1e-6)
        assert got["人均综合能耗"] == pytest.approx(kwh * 0.1229 / persons[name], rel=1e-6)
        assert got["用能人数"] == persons[name]
        assert got["去年同期"] == pytest.approx(years[site_id], abs=1e-3), name
        assert got["覆盖率"] == pytest.approx(sums[site_id]["covered"] / n), name
        off = row(table(report, "off_hours"), name)
        for label, key in (("工作时间", "office"), ("工作日夜间", "night"),
                           ("周末及节假日", "rest"), ("未分配（跨缺口）", "unallocated")):
            assert off[label] == pytest.approx(sums[site_id][key], abs=1e-3), (name, label)
    # The school is its two sub-meters; the office's lighting sub-meter is not added.
    assert row(sites, "甲机关")["用电量"] == pytest.approx(50.0 * 168, abs=1e-3)
    assert row(sites, "丁中学")["机构类型"] == "中小学校"

    # Same period last year: only where both periods are complete.
    for site_id in ("office-a", "office-b", "school-d"):
        expected = (sums[site_id]["total"] - years[site_id]) / years[site_id]
        assert row(sites, names[site_id])["同比"] == pytest.approx(expected, abs=1e-9)
    assert row(sites, "甲机关")["同比"] == pytest.approx(0.25, abs=1e-9)
    assert row(sites, "丙机关")["同比"] is None

    # The office that lost 8 October: flagged, with what is missing, and not ranked.
    assert sums["office-c"]["unallocated"] > 0
    assert row(sites, "丙机关")["数据"] == "不完整"
    incomplete = table(report, "incomplete")
    assert [r[0] for r in incomplete.rows] == ["丙机关"]
    missing = str(row(incomplete, "丙机关")["缺失内容"])
    assert "丙总表（c-total）" in missing and "10-08 全天" in missing
    assert row(incomplete, "丙机关")["处理"] == "不参与排名"

    # Ranking within each kind, complete sites only, lowest intensity first.
    offices = table(report, "rank_office")
    per_area = {s: sums[s]["total"] * 0.1229 / area[names[s]] for s in ("office-a", "office-b")}
    per_person = {s: sums[s]["total"] * 0.1229 / persons[names[s]]
                  for s in ("office-a", "office-b")}
    by_area = [names[s] for s in sorted(per_area, key=per_area.__getitem__)]
    by_person = [names[s] for s in sorted(per_person, key=per_person.__getitem__)]
    assert by_area == ["乙机关", "甲机关"] and by_person == ["甲机关", "乙机关"]  # they differ
    assert [(r[0], r[1]) for r in offices.rows] == [("1", by_area[0]), ("2", by_area[1]),
                                                    ("不参与排名", "丙机关")]
    assert row(offices, by_person[0], 1)["人均排名"] == "1"
    assert row(offices, by_person[1], 1)["人均排名"] == "2"
    assert row(table(report, "rank_school"), "丁中学", 1)["单位面积排名"] == "1"
    chart = next(t for t in report.chart_data() if t.key == "chart_intensity")
    assert [(r[0], r[2]) for r in chart.rows] == [(by_area[0], 1), (by_area[1], 2),
                                                  ("丁中学", 1)]

    # Per kind (complete sites): Σ kgce ÷ Σ m².
    kinds = table(report, "kinds")
    office_kwh = sums["office-a"]["total"] + sums["office-b"]["total"]
    assert row(kinds, "机关")["站点数"] == 3 and row(kinds, "机关")["数据完整"] == 2
    assert row(kinds, "机关")["单位面积能耗"] == pytest.approx(office_kwh * 0.1229 / 15_000)
    office_year = years["office-a"] + years["office-b"]
    assert row(kinds, "机关")["同比"] == pytest.approx((office_kwh - office_year) / office_year)

    # District totals: all sites' measured energy; intensity over the complete ones.
    every = sum(s["total"] for s in sums.values())
    assert figure(report, "总用电量（全部站点）").value == pytest.approx(every, abs=1e-3)
    complete_kwh = every - sums["office-c"]["total"]
    assert figure(report, "单位建筑面积能耗（数据完整站点）").value == pytest.approx(
        complete_kwh * 0.1229 / 35_000)
    for fig in report.figures():
        assert fig.formula, fig.label
    for tab in report.tables():
        assert tab.formulas, tab.key

    # The PDF's text shows the ranking in order and the incomplete site with what it lacks.
    paths = render.write_all(report, tmp_path, "district")
    from pypdf import PdfReader

    text = "".join(page.extract_text() for page in PdfReader(paths["pdf"]).pages)
    ranking = text[text.index("机关排名"):text.index("中小学校排名")]
    assert ranking.index(by_area[0]) < ranking.index(by_area[1]) < ranking.index("丙机关")
    assert "不参与排名" in ranking
    flagged = text[text.index("数据不完整的站点", text.index("六、")):]
    assert "丙机关" in flagged and "10-08" in flagged and "全天" in flagged
    from openpyxl import load_workbook

    book = load_workbook(paths["xlsx"])
    values = {r[0]: r[2] for r in book["sites"].iter_rows(min_row=3, values_only=True) if r[0]}
    assert values["乙机关"] == pytest.approx(sums["office-b"]["total"], abs=1e-3)
    assert "chart_intensity" in book.sheetnames

    # The same week while it runs (Wednesday 10:07): counted up to 10:00, the time to come
    # is no gap, so the complete sites stay complete; last year over the same 58 hours.
    cut = datetime(2026, 10, 7, 10, 7, tzinfo=TZ)
    running = await build(lambda _site: influx, settings, SITES, WEEK,
                          load_calendar(settings.reports), steps.append, at=cut)
    hours = 2 * 24 + 10
    got = row(table(running, "sites"), "甲机关")
    assert got["用电量"] == pytest.approx(50.0 * hours, abs=1e-3)
    assert got["数据"] == "完整" and got["覆盖率"] == pytest.approx(1.0)
    assert got["同比"] == pytest.approx(0.25, abs=1e-9)
    assert "本期尚未结束" in running.subtitle
    assert [r[0] for r in table(running, "incomplete").rows] == []  # 8 October is to come


def test_public_body_facts_of_the_campus_and_their_checks() -> None:
    campus = load_site(REPO / "config" / "site.yaml")
    found = facts(campus)
    # No area or head count in the file: the buildings' planning figures, added up.
    assert found.kind == "office" and found.area_source == "各建筑面积之和"
    assert found.area == sum(p.floor_area_m2 or 0 for p in campus.places)
    assert found.persons == sum(p.occupants or 0 for p in campus.places)
    with pytest.raises(ValidationError, match="students"):
        site("x", "x", {"kind": "office", "staff": 1, "students": 5}, [])
    with pytest.raises(ValidationError, match="inpatients"):
        site("x", "x", {"kind": "school", "staff": 1, "inpatients": 5}, [])
    hospital = site("h", "医院", {"kind": "hospital", "staff": 800, "students": 50,
                                  "inpatients": 600, "visitors": 150}, [])
    assert hospital.site.public_body is not None
    assert hospital.site.public_body.persons == 800 + 50 + 600 + 150


def test_period_option() -> None:
    assert parse_period("2026-10", TZ).label == "2026-10"
    assert parse_period("2026-W41", TZ) == WEEK
    assert parse_period("2026-10-01..2026-10-15", TZ).kind == "range"
    with pytest.raises(ValueError, match="YYYY-MM"):
        parse_period("2026-13", TZ)


def test_command_over_the_shipped_sites_folder(influx_server: InfluxServer,
                                               own_influx: InfluxServer, unique: str,
                                               tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                               capsys: pytest.CaptureFixture[str]) -> None:
    """`facility report district` over config/sites (the campus, a school, a hospital),
    the school's points on a second InfluxDB (influx.routes): the school's and hospital's
    total meters have data, each on its server; the campus's meters have none."""
    database = f"district_{unique}"
    monkeypatch.setenv("FACILITY_INFLUX_URL", influx_server.url)
    monkeypatch.setenv("FACILITY_INFLUX_DATABASE", database)
    monkeypatch.setenv("FACILITY_INFLUX_ROUTES", json.dumps(
        [{"name": "schools", "sites": ["panyu-school-*"], "url": own_influx.url}]))
    monkeypatch.setenv("FACILITY_SITES_DIR", str(REPO / "config" / "sites"))
    monkeypatch.setenv("FACILITY_STATE_URL", f"sqlite:///{tmp_path / 'state.sqlite'}")
    sites = {p.stem: load_site(p) for p in (REPO / "config" / "sites").glob("*.yaml")
             if not p.name.endswith(".endpoints.yaml")}
    span = (START - 3600 * 10**9, END + 3600 * 10**9)
    meters = [(own_influx.url, "panyu-school-shiqiao",
               Meter("em-school-shiqiao-total", lambda t: 12.0, *span)),
              (influx_server.url, "panyu-hospital-central",
               Meter("em-hospital-central-total", lambda t: 100.0, *span))]

    async def write() -> None:
        for url, site_id, meter in meters:
            async with InfluxClient(InfluxSettings(url=url, database=database)) as influx:
                await influx.ensure_database()
                await ensure_downsampling(influx)  # as ingest does on every server
                await write_lines(influx, meter_lines(sites[site_id], meter, skip=sampled))

    asyncio.run(write())
    assert main(["report", "district", "--period", "2026-W41", "--out", str(tmp_path),
                 "--format", "html", "--format", "xlsx", "--no-progress"]) == 0
    assert str(tmp_path / "district-2026-W41.xlsx") in capsys.readouterr().out
    html = (tmp_path / "district-2026-W41.html").read_text(encoding="utf-8")
    assert "番禺区市桥第一小学" in html and "中小学校排名" in html and "医院排名" in html
    # Each site's energy, read from its own server.
    assert f"{12.0 * 168:,.1f}" in html and f"{100.0 * 168:,.1f}" in html
    # The campus's meters have no data here: listed as missing, not ranked.
    assert "主楼总表（em-main-total）：缺表（无数据）" in html
    assert main(["report", "district", "--period", "2026-13", "--out", str(tmp_path)]) == 2
