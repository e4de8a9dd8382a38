"""The district energy report: the energy of every public body of a district (区内公共机构
节能), each a site with its own meters, side by side: kWh and kgce, per m² and per person,
office hours against nights and rest days, the ranking within each kind of public body,
the change against the same period last year, and which sites' data is incomplete.

It reads each site's 15-minute rollups as the campus report does (reports/rollups.py,
reports/counters.py: resets, replacements and gaps alike) and uses the campus report's
coefficient and time classes (reports/energy.py), so one site reads the same in both.

What a site is measured by comes from its site file, not from whatever data turns up: per
building its `load: total` meters, or all its sub-meters when it has none. A site is
complete when every one of those meters has a reading in every 15-minute interval of the
period; a site that is not is listed with what is missing and is left out of the ranking
(its measured energy is still shown), so a site with a dead meter never ranks as frugal.
"""

from __future__ import annotations

import asyncio
import math
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from zoneinfo import ZoneInfo

from facility import labels
from facility.influx import InfluxClient
from facility.messages import Family
from facility.schema import BUCKET_NS, ENERGY, sync_rollups
from facility.settings import Settings
from facility.site import PlaceKind, PublicBodyKind, SiteConfig
from reports import charts, periods
from reports.calendar import WorkCalendar
from reports.counters import MeterEnergy
from reports.energy import KGCE_PER_KWH, NIGHT, OFFICE, REST, change, classify, split, total
from reports.model import Chart, Column, Figure, Report, Section, Table
from reports.periods import Period, same_length, until_now
from reports.rollups import energies, read_buckets

Step = Callable[[str], None]
# The one seam for routing reads by site: the InfluxDB client that holds a site's data.
# One client for all sites today; a routing table by site plugs in here.
InfluxFor = Callable[[str], InfluxClient]
READS_AT_ONCE = 8  # sites read side by side (each reads weekly slices in parallel)
CHART_PER_KIND = 15  # bars per kind of public body in the ranking chart

F_ENERGY = ("站点电量 E = Σ 构成站点的电能表电量（各建筑总表；无总表的建筑取其分项表），"
            "每表电量 = Σ 各15分钟区间累计读数增量（清零、换表、缺口规则同园区能耗报告）")
F_KGCE = f"综合能耗 = E × {KGCE_PER_KWH} kgce/kWh（GB/T 2589—2020，电力当量值）"
F_AREA = "单位建筑面积能耗 = 综合能耗（kgce）÷ 建筑面积（m²）；单位面积电耗 = E ÷ 建筑面积"
F_PERSON = ("人均综合能耗 = 综合能耗（kgce）÷ 用能人数；用能人数 = 职工 + 学生 + 住院人数 + "
            "外来人员（日均，按在场时间折算；GB/T 40498—2021 附录A）")
F_PERIOD = "以上强度均为统计期内的量（非全年），不同长度的统计期不可直接相比"
F_SPLIT = ("工作时间电量 = Σ 工作时间内15分钟区间电量；非工作时间 = 工作日夜间 + 周末及法定节假日；"
           "跨缺口电量单列（未分配时段）")
F_YOY = ("同比 = （本期 − 去年同期）÷ 去年同期 × 100%，只在两期数据都完整时计算；"
         "面积与人数取当前站点文件，故单位面积能耗、人均能耗的同比与电量同比相同")
F_COMPLETE = ("数据完整 = 构成站点的每块电能表在统计期内每个15分钟区间都有读数；"
              "缺表（站点文件有、数据库无读数）或有数据缺口即为不完整")
F_RANK = ("排名 = 同类公共机构中数据完整的站点按单位建筑面积能耗由低到高排列（1 为最低）；"
          "人均排名同理；数据不完整或缺面积/人数的站点不参与相应排名")
F_COVER = "数据覆盖率 = 构成站点的各表均有完整读数的15分钟区间数 ÷ 期内15分钟区间总数"


@dataclass(frozen=True, slots=True)
class Facts:
    """A site's floor area and persons, and where each came from (the formula says)."""

    kind: PublicBodyKind
    area: float | None
    area_source: str
    persons: int | None
    persons_source: str


def facts(site: SiteConfig) -> Facts:
    """The site file's public body; without an area or head count, the sum of its
    buildings' (`floor_area_m2`, `occupants` of places of kind building)."""
    body = site.site.public_body
    kind = body.kind if body else PublicBodyKind.OTHER
    buildings = [p for p in site.places if p.kind is PlaceKind.BUILDING]
    area, area_source = (body.floor_area_m2, "站点文件") if body and body.floor_area_m2 \
        else (None, "")
    if area is None:
        areas = [p.floor_area_m2 for p in buildings if p.floor_area_m2]
        if areas:
            area, area_source = math.fsum(areas), "各建筑面积之和"
    persons = body.persons if body else None
    persons_source = "站点文件" if persons else ""
    if not persons:
        people = [p.occupants for p in buildings if p.occupants]
        persons, persons_source = (sum(people), "各建筑用能人数之和") if people else (None, "")
    return Facts(kind, area, area_source, persons, persons_source)


def basis(site: SiteConfig) -> dict[str, list[str]]:
    """Per building, the ids of the meters whose sum is its energy: its `load: total`
    meters, else all its sub-meters (as the campus report sums a building)."""
    totals: dict[str, list[str]] = {}
    subs: dict[str, list[str]] = {}
    for device in site.devices:
        if device.family is not Family.ENERGY:
            continue
        tags = site.base_tags(device)
        building = tags.get("building") or device.place
        target = totals if tags.get("load") == "total" else subs
        target.setdefault(building, []).append(device.id)
    return {b: totals.get(b) or subs[b] for b in sorted(set(totals) | set(subs))}


@dataclass(slots=True)
class SiteData:
    """One site's meters in one period, by meter id (only the meters its file names)."""

    site: SiteConfig
    period: Period
    meters: dict[str, MeterEnergy]
    expected: list[str]

    @property
    def present(self) -> list[MeterEnergy]:
        return [self.meters[m] for m in self.expected if m in self.meters]

    @property
    def missing_meters(self) -> list[str]:
        return [m for m in self.expected if m not in self.meters]

    @property
    def complete(self) -> bool:
        return bool(self.expected) and not self.missing_meters and \
            not any(self.meters[m].gaps for m in self.expected)

    @property
    def kwh(self) -> float:
        return total(self.present)

    def coverage(self) -> float:
        buckets = len(range(*self.period.ns(), BUCKET_NS))
        if not buckets or self.missing_meters or not self.expected:
            return 0.0
        common = set.intersection(*(m.covered for m in self.present))
        return len(common) / buckets


async def read_period(influx_for: InfluxFor, settings: Settings, sites: list[SiteConfig],
                      period: Period, step: Step) -> dict[str, SiteData]:
    """Every site's meters over `period`: each InfluxDB's rollups are checked against its
    raw data once (late data), then each site's rollups are read, a few sites at a time."""
    start, end = period.ns()
    options = settings.reports
    clients: dict[int, InfluxClient] = {}
    for site in sites:
        client = influx_for(site.site.id)
        clients[id(client)] = client
    for client in clients.values():
        await sync_rollups(client, ENERGY, start - BUCKET_NS, end, options)
    step(f"rollups checked for {period.label}")
    gate = asyncio.Semaphore(READS_AT_ONCE)

    async def one(site: SiteConfig) -> SiteData:
        expected = [m for ms in basis(site).values() for m in ms]
        async with gate:
            rows = await read_buckets(influx_for(site.site.id), ENERGY, site.site.id,
                                      start, end, options)
        meters = {device.id: meter for device, meter in energies(rows, start, end).items()
                  if device.id in expected and meter.energy}
        return SiteData(site, period, meters, expected)

    found = await asyncio.gather(*(one(site) for site in sites))
    step(f"energy meters read for {period.label}")
    return {data.site.site.id: data for data in found}


def missing_text(data: SiteData, tz: ZoneInfo) -> list[str]:
    """What is missing, meter by meter: no data at all, or hours without readings per day."""
    out: list[str] = []
    for meter_id in data.expected:
        name = _device_name(data.site, meter_id)
        meter = data.meters.get(meter_id)
        if meter is None:
            out.append(f"{name}：{labels.DATA_STATUS['no_meter_data']}")
            continue
        hours: dict[str, float] = {}
        for a, b in meter.gaps:
            t = a
            while t < b:
                moment = datetime.fromtimestamp(t / 1e9, tz)
                midnight = datetime.combine(moment.date() + timedelta(days=1),
                                            datetime.min.time(), tz)
                upto = min(b, int(midnight.timestamp()) * 10**9)
                day = moment.strftime("%m-%d")
                hours[day] = hours.get(day, 0.0) + (upto - t) / 3.6e12
                t = upto
        if hours:
            days = "、".join(f"{d} 缺 {h:.2f} 小时" if h < 24 else f"{d} 全天"
                            for d, h in sorted(hours.items()))
            out.append(f"{name}：{labels.DATA_STATUS['gap']} {days}")
    if not data.expected:
        out.append("站点文件中没有电能表")
    return out


def _device_name(site: SiteConfig, device_id: str) -> str:
    name = site.device(device_id).name
    return f"{name}（{device_id}）" if name else device_id


@dataclass(slots=True)
class Row:
    """One site's figures in the report."""

    id: str
    name: str
    facts: Facts
    now: SiteData
    year: SiteData
    parts: dict[str, float]
    kwh: float = 0.0
    rank_area: int | None = None
    rank_person: int | None = None
    missing: list[str] = field(default_factory=list)

    @property
    def kgce(self) -> float:
        return self.kwh * KGCE_PER_KWH

    @property
    def per_area(self) -> float | None:
        return self.kgce / self.facts.area if self.facts.area else None

    @property
    def per_person(self) -> float | None:
        return self.kgce / self.facts.persons if self.facts.persons else None

    @property
    def year_kwh(self) -> float | None:
        return self.year.kwh if self.year.present else None

    @property
    def yoy(self) -> float | None:
        if not (self.now.complete and self.year.complete):
            return None
        return change(self.kwh, self.year.kwh)

    @property
    def off_share(self) -> float | None:
        allocated = self.parts[OFFICE] + self.parts[NIGHT] + self.parts[REST]
        return (self.parts[NIGHT] + self.parts[REST]) / allocated if allocated else None


def rank(rows: list[Row]) -> None:
    """Within each kind of public body, complete sites by kgce/m² and by kgce/person,
    lowest first (ties keep the site id order)."""
    for kind in {r.facts.kind for r in rows}:
        same = sorted((r for r in rows if r.facts.kind is kind and r.now.complete),
                      key=lambda r: r.id)
        by_area = sorted((r for r in same if r.per_area is not None),
                         key=lambda r: r.per_area or 0.0)
        for index, row in enumerate(by_area, start=1):
            row.rank_area = index
        by_person = sorted((r for r in same if r.per_person is not None),
                           key=lambda r: r.per_person or 0.0)
        for index, row in enumerate(by_person, start=1):
            row.rank_person = index


async def build(influx_for: InfluxFor, settings: Settings, sites: list[SiteConfig],
                period: Period, calendar: WorkCalendar, step: Step, *,
                at: datetime | None = None, title: str = "区内公共机构") -> Report:
    """The district report of `period` as of `at` (default now) over `sites` (the site
    files of the district, e.g. facility.catalog's district loader), each read from the
    InfluxDB `influx_for` gives for its id."""
    if not sites:
        raise ValueError("没有站点")
    ids = [s.site.id for s in sites]
    if len(set(ids)) != len(ids):
        raise ValueError(f"站点重复：{ids}")
    tz = ZoneInfo(sites[0].site.timezone)
    moment = at or datetime.now(tz)
    whole = period
    period = until_now(whole, moment)
    year_period = same_length(whole.year_before(), period)
    now, year = await asyncio.gather(
        read_period(influx_for, settings, sites, period, step),
        read_period(influx_for, settings, sites, year_period, step))
    rows: list[Row] = []
    for site in sorted(sites, key=lambda s: s.site.id):
        site_tz = ZoneInfo(site.site.timezone)
        data = now[site.site.id]
        classes = classify(list(range(*period.ns(), BUCKET_NS)), calendar, site_tz)
        row = Row(site.site.id, site.site.name, facts(site), data, year[site.site.id],
                  split(data.present, classes), data.kwh)
        row.missing = missing_text(data, site_tz)
        rows.append(row)
    rank(rows)
    step("figures computed")
    report = Report(kind="district", title=f"{title}能耗统计与节能对标报告",
                    subtitle=f"统计期：{_period_text(period)}；去年同期：{year_period.label}",
                    generated_at=moment.astimezone(tz).strftime("%Y-%m-%d %H:%M"))
    report.sections = [_summary(rows), _sites(rows), _ranking(rows), _kinds(rows),
                       _off_hours(rows, calendar), _incomplete(rows)]
    report.method = _method(calendar, sites, period)
    return report


def _period_text(period: Period) -> str:
    last = (period.full_end or period.end) - timedelta(microseconds=1)
    text = f"{period.start:%Y年%m月%d日} 至 {last:%Y年%m月%d日}（{period.label}）"
    if period.in_progress:
        text += f"；本期尚未结束，数据截至 {period.end:%m月%d日 %H:%M}，去年同期取相同时长"
    return text


def _kind(row: Row) -> str:
    return labels.label(labels.PUBLIC_BODY_KIND, row.facts.kind)


def _status(row: Row) -> str:
    return labels.DATA_STATUS["complete" if row.now.complete else "incomplete"]


def _summary(rows: list[Row]) -> Section:
    complete = [r for r in rows if r.now.complete]
    kwh = math.fsum(r.kwh for r in rows)
    kgce = kwh * KGCE_PER_KWH
    with_area = [r for r in complete if r.facts.area]
    area = math.fsum(r.facts.area or 0.0 for r in with_area)
    area_kgce = math.fsum(r.kgce for r in with_area)
    with_people = [r for r in complete if r.facts.persons]
    people = sum(r.facts.persons or 0 for r in with_people)
    people_kgce = math.fsum(r.kgce for r in with_people)
    office = math.fsum(r.parts[OFFICE] for r in rows)
    off = math.fsum(r.parts[NIGHT] + r.parts[REST] for r in rows)
    both = [r for r in rows if r.now.complete and r.year.complete]
    mine, theirs = math.fsum(r.kwh for r in both), math.fsum(r.year.kwh for r in both)
    yoy = change(mine, theirs) if both else None
    names = "、".join(r.name for r in both) or "无"
    cover = math.fsum(r.now.coverage() for r in rows) / len(rows)
    figures = [
        Figure("站点数", f"{len(rows)}（数据完整 {len(complete)}）", "个",
               F_COMPLETE),
        Figure("总用电量（全部站点）", kwh, "kWh",
               f"Σ 各站点电量 E = {kwh:,.1f} kWh；含数据不完整站点已测得的电量；"
               "覆盖率为各站点覆盖率的平均", cover),
        Figure("综合能耗（折标准煤）", kgce, "kgce",
               f"{kwh:,.1f} kWh × {KGCE_PER_KWH} = {kgce:,.1f} kgce", cover),
        Figure("单位建筑面积能耗（数据完整站点）", area_kgce / area if area else None,
               "kgce/m²", f"Σ 综合能耗 {area_kgce:,.1f} kgce ÷ Σ 建筑面积 {area:,.0f} m²"
               f"（{len(with_area)} 个数据完整且有面积的站点）", 1.0 if with_area else None, 3),
        Figure("人均综合能耗（数据完整站点）", people_kgce / people if people else None,
               "kgce/人", f"Σ 综合能耗 {people_kgce:,.1f} kgce ÷ Σ 用能人数 {people:,} 人"
               f"（{len(with_people)} 个数据完整且有人数的站点）", 1.0 if with_people else None,
               2),
        Figure("工作时间用电", office, "kWh", f"{F_SPLIT}；占已分配电量 "
               f"{_share(office, office + off)}", cover),
        Figure("非工作时间用电（夜间、周末及节假日）", off, "kWh",
               f"Σ 各站点（工作日夜间 + 周末及节假日）= {off:,.1f} kWh；"
               f"占已分配电量 {_share(off, office + off)}", cover),
        Figure("去年同期用电量（可比站点）", theirs if both else None, "kWh",
               f"两期数据都完整的站点：{names}"),
        Figure("同比（可比站点）", "—" if yoy is None else f"{yoy * 100:+.1f}%", "",
               f"（{mine:,.1f} − {theirs:,.1f}）÷ {theirs:,.1f} × 100%；{F_YOY}"),
    ]
    return Section("一、总体情况", figures=figures)


def _sites(rows: list[Row]) -> Section:
    table = Table("sites", "各站点能耗", [
        Column("站点", kind="text"), Column("机构类型", kind="text"), Column("用电量", "kWh"),
        Column("综合能耗", "kgce"), Column("建筑面积", "m²", 0),
        Column("单位面积电耗", "kWh/m²", 3), Column("单位面积能耗", "kgce/m²", 4),
        Column("用能人数", "人", 0), Column("人均综合能耗", "kgce/人", 3),
        Column("去年同期", "kWh"), Column("同比", kind="percent"),
        Column("数据", kind="text"), Column("覆盖率", kind="coverage")],
        formulas=[F_ENERGY, F_KGCE, F_AREA, F_PERSON, F_PERIOD, F_YOY, F_COMPLETE, F_COVER])
    for r in rows:
        f = r.facts
        table.rows.append([r.name, _kind(r), r.kwh, r.kgce, f.area,
                           r.kwh / f.area if f.area else None, r.per_area, f.persons,
                           r.per_person, r.year_kwh, r.yoy, _status(r), r.now.coverage()])
    sourced = [f"{r.name}：面积取{r.facts.area_source}，人数取{r.facts.persons_source}"
               for r in rows if "之和" in r.facts.area_source + r.facts.persons_source]
    if sourced:
        table.notes.append("站点文件未给出机构面积或人数的，取其建筑之和：" + "；".join(sourced))
    return Section("二、各站点能耗", tables=[table])


def _ranking(rows: list[Row]) -> Section:
    section = Section("三、同类机构排名", intro="按机构类型分组，组内只比较数据完整的站点。")
    for kind in PublicBodyKind:
        mine = [r for r in rows if r.facts.kind is kind]
        if not mine:
            continue
        table = Table(f"rank_{kind.value}", f"{labels.PUBLIC_BODY_KIND[kind]}排名", [
            Column("单位面积排名", kind="text"), Column("站点", kind="text"),
            Column("单位面积能耗", "kgce/m²", 4), Column("人均排名", kind="text"),
            Column("人均综合能耗", "kgce/人", 3), Column("非工作时间占比", kind="percent"),
            Column("同比", kind="percent"), Column("数据", kind="text")],
            formulas=[F_RANK, F_AREA, F_PERSON, "非工作时间占比 = 非工作时间电量 ÷ "
                      "（工作时间 + 非工作时间电量）", F_YOY])
        ordered = sorted(mine, key=lambda r: (r.rank_area is None, r.rank_area or 0,
                                              r.rank_person is None, r.rank_person or 0, r.id))
        for r in ordered:
            not_ranked = labels.DATA_STATUS["not_ranked"]
            table.rows.append([str(r.rank_area) if r.rank_area else not_ranked, r.name,
                               r.per_area, str(r.rank_person) if r.rank_person else not_ranked,
                               r.per_person, r.off_share, r.yoy, _status(r)])
        section.tables.append(table)
    section.charts.append(_intensity_chart(rows))
    return section


def _intensity_chart(rows: list[Row]) -> Chart:
    """kgce/m² of the ranked sites, kind by kind, in rank order (at most CHART_PER_KIND
    of each kind, so a district of hundreds of sites still fits a page; the table has all)."""
    ranked = sorted((r for r in rows if r.rank_area is not None),
                    key=lambda r: (list(PublicBodyKind).index(r.facts.kind), r.rank_area or 0))
    shown = [r for r in ranked if (r.rank_area or 0) <= CHART_PER_KIND]
    names = [f"{_kind(r)}·{r.rank_area} {r.name}" for r in shown]
    values = [r.per_area or 0.0 for r in shown]
    caption = "数据完整站点的单位建筑面积能耗，按机构类型分组、组内按排名排列；" + F_AREA
    if len(shown) < len(ranked):
        caption += f"；每类只画前 {CHART_PER_KIND} 名，全部见排名表"
    data = Table("chart_intensity", "图：单位建筑面积能耗（按类型排名）",
                 [Column("站点", kind="text"), Column("机构类型", kind="text"),
                  Column("排名", digits=0), Column("单位面积能耗", "kgce/m²", 4)],
                 rows=[[r.name, _kind(r), r.rank_area, r.per_area] for r in ranked],
                 formulas=[F_RANK, F_AREA])
    png = charts.horizontal_bars("单位建筑面积能耗（kgce/m²）", names, values, "kgce/m²", 4)
    return Chart("单位建筑面积能耗排名", png, caption, data)


def _kinds(rows: list[Row]) -> Section:
    table = Table("kinds", "分类型汇总（数据完整站点）", [
        Column("机构类型", kind="text"), Column("站点数", digits=0),
        Column("数据完整", digits=0), Column("用电量", "kWh"), Column("综合能耗", "kgce"),
        Column("建筑面积", "m²", 0), Column("单位面积能耗", "kgce/m²", 4),
        Column("用能人数", "人", 0), Column("人均综合能耗", "kgce/人", 3),
        Column("去年同期", "kWh"), Column("同比", kind="percent")],
        formulas=["类型汇总只含数据完整的站点；单位面积能耗 = Σ 综合能耗 ÷ Σ 建筑面积"
                  "（有面积的站点）；人均综合能耗 = Σ 综合能耗 ÷ Σ 用能人数（有人数的站点）",
                  F_YOY + "；类型同比只含两期都完整的站点"])
    for kind in PublicBodyKind:
        mine = [r for r in rows if r.facts.kind is kind]
        if not mine:
            continue
        full = [r for r in mine if r.now.complete]
        area_rows = [r for r in full if r.facts.area]
        area = math.fsum(r.facts.area or 0.0 for r in area_rows)
        person_rows = [r for r in full if r.facts.persons]
        people = sum(r.facts.persons or 0 for r in person_rows)
        both = [r for r in full if r.year.complete]
        theirs = math.fsum(r.year.kwh for r in both)
        kwh = math.fsum(r.kwh for r in full)
        table.rows.append([
            labels.PUBLIC_BODY_KIND[kind], len(mine), len(full), kwh, kwh * KGCE_PER_KWH,
            area or None,
            math.fsum(r.kgce for r in area_rows) / area if area else None, people or None,
            math.fsum(r.kgce for r in person_rows) / people if people else None,
            theirs if both else None,
            change(math.fsum(r.kwh for r in both), theirs) if both else None])
    return Section("四、分类型汇总", tables=[table])


def _off_hours(rows: list[Row], calendar: WorkCalendar) -> Section:
    table = Table("off_hours", "工作时间与非工作时间用电", [
        Column("站点", kind="text"), Column("机构类型", kind="text"), Column("工作时间", "kWh"),
        Column("工作日夜间", "kWh"), Column("周末及节假日", "kWh"),
        Column("非工作时间占比", kind="percent"), Column("未分配（跨缺口）", "kWh"),
        Column("覆盖率", kind="coverage")],
        formulas=[F_SPLIT, f"工作时间：{calendar.describe()}（节假日日历：{calendar.source}）",
                  "非工作时间占比 = 非工作时间电量 ÷（工作时间 + 非工作时间电量）", F_COVER])
    for r in rows:
        table.rows.append([r.name, _kind(r), r.parts[OFFICE], r.parts[NIGHT], r.parts[REST],
                           r.off_share, r.parts["unallocated"], r.now.coverage()])
    table.notes.append("各类机构按同一办公时间划分；医院等全天运行的机构，非工作时间用电"
                       "含其正常业务用电，宜在同类中比较。")
    return Section("五、工作时间与非工作时间", tables=[table])


def _incomplete(rows: list[Row]) -> Section:
    table = Table("incomplete", "数据不完整的站点", [
        Column("站点", kind="text"), Column("机构类型", kind="text"),
        Column("缺失内容", kind="text"), Column("已测电量", "kWh"),
        Column("覆盖率", kind="coverage"), Column("处理", kind="text")],
        formulas=[F_COMPLETE, "不完整站点的已测电量照列于各站点表，但不参与排名与汇总强度"])
    for r in rows:
        lacks = list(r.missing)
        if not r.facts.area:
            lacks.append(labels.DATA_STATUS["no_area"])
        if not r.facts.persons:
            lacks.append(labels.DATA_STATUS["no_persons"])
        if not lacks:
            continue
        handling = "不参与排名" if not r.now.complete else \
            "不参与" + "、".join(x for x, gone in (("单位面积排名", not r.facts.area),
                                                 ("人均排名", not r.facts.persons)) if gone)
        table.rows.append([r.name, _kind(r), "；".join(lacks), r.kwh, r.now.coverage(),
                           handling])
    last_year = [f"{r.name}：" + "；".join(missing_text(r.year, ZoneInfo(r.now.site.site.timezone))
                                         or ["无"])
                 for r in rows if r.now.complete and not r.year.complete]
    if last_year:
        table.notes.append("去年同期数据不完整（不计算同比）：" + " | ".join(last_year))
    if not table.rows:
        table.notes.append("所有站点数据完整。")
    return Section("六、数据不完整的站点", tables=[table])


def _method(calendar: WorkCalendar, sites: list[SiteConfig], period: Period) -> list[str]:
    return [
        "数据来源：各站点 InfluxDB 中电能表的正向有功电能累计读数（energy_import，kWh）的15分钟"
        "汇总；出报前按天核对原始数据点数，不一致的日子重新汇总（迟到数据由此计入）。",
        F_ENERGY + "。", F_KGCE + "。", F_AREA + "；" + F_PERSON + "。", F_PERIOD + "。",
        "机构类型、建筑面积与用能人数取自各站点文件 site.public_body；未给出面积或人数的，"
        "取站点文件中各建筑（floor_area_m2、occupants）之和，并在表注中说明。",
        F_SPLIT + f"。工作时间：{calendar.describe()}；节假日日历：{calendar.source}。",
        F_COMPLETE + "。" + F_RANK + "。", F_YOY + "。", F_COVER + "。缺口不插补，只报告。",
        f"站点：{len(sites)} 个；时间为各站点所在时区（{sites[0].site.timezone}）。",
        *(["本期尚未结束：只统计到已结束的15分钟区间，去年同期取自其开始起的相同时长。"]
          if period.in_progress else []),
    ]


def _share(part: float, whole: float) -> str:
    return f"{part / whole * 100:.1f}%" if whole else "—"


def parse_period(text: str, tz: ZoneInfo) -> Period:
    """--period: a month (2026-10), an ISO week (2026-W41) or dates FROM..TO inclusive
    (2026-10-01..2026-10-15)."""
    text = text.strip()
    if ".." in text:
        first, last = text.split("..", 1)
        return periods.parse(tz, from_text=first, to_text=last)
    if "w" in text.lower():
        return periods.parse(tz, week_text=text)
    return periods.parse(tz, month_text=text)

