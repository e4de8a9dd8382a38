"""Assemble the energy-saving report (reports.model.Report) from the three periods'
data: every figure with its formula, every table with its coverage column."""

from __future__ import annotations

import asyncio
import math
from collections.abc import Callable, Mapping, Sequence
from datetime import datetime, timedelta
from zoneinfo import ZoneInfo

from facility import labels
from facility.influx import InfluxClient
from facility.schema import BUCKET_NS
from facility.settings import Settings
from facility.site import SiteConfig
from reports import charts
from reports.calendar import WorkCalendar
from reports.charging import charging_sessions
from reports.counters import MeterEnergy
from reports.energy import (
    KGCE_PER_KWH,
    LOAD_ORDER,
    NIGHT,
    OFFICE,
    REST,
    Building,
    PeriodData,
    anomalies,
    buildings_of,
    change,
    classify,
    demand_series,
    joint_coverage,
    load_period,
    sessions,
    split,
    total,
)
from reports.model import Chart, Column, Figure, Report, Section, Table
from reports.periods import Period, same_length, until_now

Step = Callable[[str], None]

F_ENERGY = ("电量 E = Σ 各15分钟区间电能表累计读数增量；"
            "读数下降视为表计清零（其后读数即清零后电量）"
            "或换表（跨换表的一步不计并列入数据质量）；"
            "数据缺口两端读数之差计入总量，但不分配到时段")
F_KGCE = f"折标准煤 = E × {KGCE_PER_KWH} kgce/kWh（GB/T 2589—2020，电力当量值）"
F_AREA = "单位面积能耗 = 建筑能耗（kgce）÷ 建筑面积（m²）；单位面积电耗 = E ÷ 建筑面积"
F_PERSON = "人均能耗 = 建筑能耗（kgce）÷ 用能人数"
F_SPLIT = ("工作时间电量 = Σ 工作时间内15分钟区间电量；非工作时间 = 工作日夜间 + 周末及法定节假日；"
           "跨缺口电量单列（未分配时段）")
F_DEMAND = "最大需量 = max（15分钟区间电量 ÷ 0.25 h），只取各相关表计读数完整的区间"
F_MOM = "环比 = （本期 − 上期）÷ 上期 × 100%"
F_YOY = "同比 = （本期 − 去年同期）÷ 去年同期 × 100%"
F_COVER = ("数据覆盖率 = 有完整读数的15分钟区间数 ÷ 期内15分钟区间总数"
           "（多块表相加时取各表均完整的区间）")
F_OTHER = "其他（未分项）= 总表电量 − Σ 分项表电量"


async def build(influx: InfluxClient, settings: Settings, site: SiteConfig, period: Period,
                calendar: WorkCalendar, step: Step, *, at: datetime | None = None) -> Report:
    """The report of `period` as of `at` (default now): a period still in progress is read
    up to the 15-minute interval in progress, and compared with the same stretch of the
    previous period and of the year before."""
    tz = ZoneInfo(site.site.timezone)
    moment = at or datetime.now(tz)
    whole = period
    period = until_now(whole, moment)
    # The three periods are independent reads: InfluxDB answers them on its cores at once.
    now, prev, year = await asyncio.gather(
        load_period(influx, settings, site, period, step, chargers=True),
        load_period(influx, settings, site, same_length(whole.previous(), period), step),
        load_period(influx, settings, site, same_length(whole.year_before(), period), step))
    report = Report(
        kind="energy",
        title=f"{site.site.name}公共机构能耗统计与节能分析报告",
        subtitle=f"统计期：{_period_text(period)}",
        generated_at=moment.astimezone(tz).strftime("%Y-%m-%d %H:%M"),
    )
    classes = classify(now.buckets(), calendar, tz)
    context = _Context(site, calendar, tz, now, prev, year, classes)
    ev = context.ev()
    ev.tables += await charging_sessions(influx, site, period)  # the OCPP chargers' sessions
    step("charging sessions read")
    report.sections = [
        context.summary(),
        context.by_building(),
        context.by_load(),
        context.off_hours(),
        context.demand(),
        ev,
        context.anomalies_section(),
        context.quality(),
    ]
    step("figures computed")
    report.method = context.method()
    return report


def _period_text(period: Period) -> str:
    last = (period.full_end or period.end) - timedelta(microseconds=1)
    text = f"{period.start:%Y年%m月%d日} 至 {last:%Y年%m月%d日}（{period.label}）"
    if period.in_progress:
        text += (f"；本期尚未结束，数据截至 {period.end:%m月%d日 %H:%M}"
                 f"（不含进行中的15分钟区间，未到的时间不计为数据缺口），"
                 f"上期与去年同期取相同时长")
    return text


def _pct(value: float | None) -> str:
    return "—" if value is None else f"{value * 100:+.1f}%"


class _Context:
    def __init__(self, site: SiteConfig, calendar: WorkCalendar, tz: ZoneInfo, now: PeriodData,
                 prev: PeriodData, year: PeriodData, classes: dict[int, str]) -> None:
        self.site, self.calendar, self.tz = site, calendar, tz
        self.now, self.prev, self.year = now, prev, year
        self.classes = classes
        self.n = len(now.buckets())
        self.buildings = buildings_of(now)
        self.prev_buildings = buildings_of(prev)
        self.year_buildings = buildings_of(year)

    # Names from the site file; ids where the file does not know them.
    def place_name(self, place_id: str) -> str:
        try:
            return self.site.place(place_id).name
        except StopIteration:
            return place_id

    def device_name(self, device_id: str) -> str:
        try:
            return self.site.device(device_id).name or device_id
        except StopIteration:
            return device_id

    def area(self, building: str) -> float | None:
        try:
            return self.site.place(building).floor_area_m2
        except StopIteration:
            return None

    def occupants(self, building: str) -> int | None:
        try:
            return self.site.place(building).occupants
        except StopIteration:
            return None

    def campus_meters(self, buildings: dict[str, Building]) -> list[MeterEnergy]:
        return [m for b in buildings.values() for m in b.basis]

    def _time(self, t: int) -> str:
        return datetime.fromtimestamp(t / 1e9, self.tz).strftime("%m-%d %H:%M")

    def _comparable(self, buildings: dict[str, Building], data: PeriodData
                    ) -> tuple[float | None, float | None, float, str]:
        """(this period, that period, that coverage, which buildings) over the buildings
        with data in both periods, so a comparison never sets unlike against unlike."""
        both = sorted(set(buildings) & set(self.buildings))
        if not both:
            return None, None, 0.0, "无可比建筑"
        mine = total(m for b in both for m in self.buildings[b].basis)
        theirs = [m for b in both for m in buildings[b].basis]
        names = "、".join(self.place_name(b) for b in both)
        return mine, total(theirs), joint_coverage(theirs, len(data.buckets())), names

    # Sections ---------------------------------------------------------------------
    def summary(self) -> Section:
        meters = self.campus_meters(self.buildings)
        kwh = total(meters)
        cover = joint_coverage(meters, self.n)
        kgce = kwh * KGCE_PER_KWH
        measured = [b for b in self.buildings if self.area(b)]
        area = math.fsum(self.area(b) or 0.0 for b in measured)
        people = sum(self.occupants(b) or 0 for b in measured)
        kgce_measured = total(m for b in measured for m in self.buildings[b].basis) * KGCE_PER_KWH
        parts = split(meters, self.classes)
        allocated = parts[OFFICE] + parts[NIGHT] + parts[REST]
        off = parts[NIGHT] + parts[REST]
        demand = self._campus_demand()
        peak_t = max(demand, key=lambda t: demand[t]) if demand else None
        prev_mine, prev_kwh, prev_cover, prev_names = self._comparable(self.prev_buildings,
                                                                      self.prev)
        year_mine, year_kwh, year_cover, year_names = self._comparable(self.year_buildings,
                                                                      self.year)
        ev_meters = [m for d, m in self.now.meters.items() if d.load == "ev_charging"]
        ev_kwh = total(ev_meters)
        figures = [
            Figure("总用电量", kwh, "kWh",
                   f"{F_ENERGY}；园区 = Σ 各建筑（总表，无总表的建筑取分项表之和）"
                   f" = {kwh:,.1f} kWh", cover),
            Figure("综合能耗（折标准煤）", kgce, "kgce", f"{kwh:,.1f} kWh × {KGCE_PER_KWH} = "
                   f"{kgce:,.1f} kgce（GB/T 2589—2020 当量值）", cover),
            Figure("单位建筑面积能耗", kgce_measured / area if area else None, "kgce/m²",
                   f"{kgce_measured:,.1f} kgce ÷ {area:,.0f} m²（有面积数据的建筑）", cover, 3),
            Figure("人均能耗", kgce_measured / people if people else None, "kgce/人",
                   f"{kgce_measured:,.1f} kgce ÷ {people:,} 人（有人数数据的建筑）", cover, 2),
            Figure("工作时间用电", parts[OFFICE], "kWh",
                   f"{F_SPLIT}；工作时间：{self.calendar.describe()}；占已分配电量 "
                   f"{_share(parts[OFFICE], allocated)}", cover),
            Figure("非工作时间用电（夜间、周末及节假日）", off, "kWh",
                   f"工作日夜间 {parts[NIGHT]:,.1f} + 周末及节假日 {parts[REST]:,.1f}"
                   f" = {off:,.1f} kWh；"
                   f"占已分配电量 {_share(off, allocated)}", cover),
            Figure("跨数据缺口电量（未分配时段）", parts["unallocated"], "kWh",
                   "缺口前最后读数与缺口后首个读数之差，已计入总量，不计入工作/非工作时间", cover),
            Figure("园区最大需量", demand[peak_t] if peak_t is not None else None, "kW",
                   f"{F_DEMAND}；出现于 {self._time(peak_t) if peak_t is not None else '—'}",
                   len(demand) / self.n if self.n else None),
            Figure("上期用电量（可比建筑）", prev_kwh, "kWh",
                   f"上期 {self.prev.period.label}，口径同本期；可比建筑：{prev_names}",
                   prev_cover),
            Figure("环比", _pct(change(prev_mine or 0.0, prev_kwh)), "",
                   f"{F_MOM}，只含两期都有数据的建筑（本期 {prev_mine or 0:,.1f} kWh）；"
                   "覆盖率不同时仅供参考", min(cover, prev_cover)),
            Figure("去年同期用电量（可比建筑）", year_kwh, "kWh",
                   f"去年同期 {self.year.period.label}，口径同本期；可比建筑：{year_names}",
                   year_cover),
            Figure("同比", _pct(change(year_mine or 0.0, year_kwh)), "",
                   f"{F_YOY}，只含两期都有数据的建筑（本期 {year_mine or 0:,.1f} kWh）；"
                   "覆盖率不同时仅供参考", min(cover, year_cover)),
            Figure("电动汽车充电用电（计量表）", ev_kwh, "kWh",
                   "Σ 分项为 ev_charging 的电能表电量（含在所在建筑总表内）",
                   joint_coverage(ev_meters, self.n) if ev_meters else None),
        ]
        section = Section("一、总体情况", figures=figures)
        section.charts.append(self._daily_chart())
        return section

    def _campus_demand(self) -> dict[int, float]:
        return demand_series(self.campus_meters(self.buildings))

    def by_building(self) -> Section:
        table = Table("buildings", "分建筑能耗", [
            Column("建筑", kind="text"), Column("用电量", "kWh"), Column("折标准煤", "kgce"),
            Column("建筑面积", "m²", 0), Column("单位面积电耗", "kWh/m²", 2),
            Column("单位面积能耗", "kgce/m²", 3), Column("用能人数", "人", 0),
            Column("人均能耗", "kgce/人", 2), Column("上期", "kWh"), Column("环比", kind="percent"),
            Column("去年同期", "kWh"), Column("同比", kind="percent"),
            Column("计量表", kind="text"), Column("覆盖率", kind="coverage")],
            formulas=[F_ENERGY, F_KGCE, F_AREA, F_PERSON, F_MOM, F_YOY, F_COVER,
                      "建筑电量 = 该建筑总表电量（分项表不重复相加）；无总表的建筑 = Σ 分项表电量"])
        for building_id in sorted(self.buildings):
            building = self.buildings[building_id]
            kwh = total(building.basis)
            kgce = kwh * KGCE_PER_KWH
            area, people = self.area(building_id), self.occupants(building_id)
            prev = self.prev_buildings.get(building_id)
            year = self.year_buildings.get(building_id)
            prev_kwh = total(prev.basis) if prev else None
            year_kwh = total(year.basis) if year else None
            source = labels.LOAD["total"] if building.totals else "分项表之和"
            table.rows.append([
                self.place_name(building_id), kwh, kgce, area, kwh / area if area else None,
                kgce / area if area else None, people, kgce / people if people else None,
                prev_kwh, change(kwh, prev_kwh), year_kwh, change(kwh, year_kwh), source,
                joint_coverage(building.basis, self.n)])
        return Section("二、分建筑能耗", tables=[table])

    def _load_totals(self, buildings: dict[str, Building]) -> dict[str, list[MeterEnergy]]:
        out: dict[str, list[MeterEnergy]] = {}
        for building in buildings.values():
            for load, meters in building.subs.items():
                out.setdefault(load, []).extend(meters)
        return out

    def _other(self, buildings: dict[str, Building]) -> float:
        return math.fsum(total(b.totals) - total(m for ms in b.subs.values() for m in ms)
                         for b in buildings.values() if b.totals)

    def by_load(self) -> Section:
        loads = self._load_totals(self.buildings)
        prev_loads = self._load_totals(self.prev_buildings)
        year_loads = self._load_totals(self.year_buildings)
        campus = total(self.campus_meters(self.buildings))
        table = Table("loads", "分项能耗", [
            Column("分项", kind="text"), Column("用电量", "kWh"), Column("折标准煤", "kgce"),
            Column("占总用电", kind="percent"), Column("工作时间", "kWh"),
            Column("非工作时间", "kWh"), Column("上期", "kWh"), Column("环比", kind="percent"),
            Column("去年同期", "kWh"), Column("同比", kind="percent"), Column("表计数", digits=0),
            Column("覆盖率", kind="coverage")],
            formulas=[F_ENERGY, F_KGCE, "占总用电 = 分项电量 ÷ 园区总用电量", F_SPLIT, F_OTHER,
                      F_MOM, F_YOY, F_COVER])
        names, values = [], []
        order = [k for k in LOAD_ORDER if k in loads] + sorted(set(loads) - set(LOAD_ORDER))
        for load in order:
            meters = loads[load]
            kwh = total(meters)
            parts = split(meters, self.classes)
            prev_kwh = total(prev_loads[load]) if load in prev_loads else None
            year_kwh = total(year_loads[load]) if load in year_loads else None
            table.rows.append([labels.label(labels.LOAD, load), kwh, kwh * KGCE_PER_KWH,
                               kwh / campus if campus else None, parts[OFFICE],
                               parts[NIGHT] + parts[REST], prev_kwh, change(kwh, prev_kwh),
                               year_kwh, change(kwh, year_kwh), len(meters),
                               joint_coverage(meters, self.n)])
            names.append(labels.label(labels.LOAD, load))
            values.append(kwh)
        other = self._other(self.buildings)
        with_totals = [m for b in self.buildings.values() if b.totals
                       for m in b.totals + [x for ms in b.subs.values() for x in ms]]
        table.rows.append([labels.LOAD["other"], other, other * KGCE_PER_KWH,
                           other / campus if campus else None, None, None,
                           self._other(self.prev_buildings) or None,
                           change(other, self._other(self.prev_buildings)),
                           self._other(self.year_buildings) or None,
                           change(other, self._other(self.year_buildings)), None,
                           joint_coverage(with_totals, self.n)])
        if other < 0:
            table.notes.append("“其他”为负：分项表电量大于总表，请检查表计接线或两者的数据覆盖率。")
        names.append(labels.LOAD["other"])
        values.append(other)
        png = charts.horizontal_bars("分项用电量（kWh）", names, values, "kWh")
        chart = Chart("分项用电量", png, F_OTHER,
                      _series("chart_loads", "图：分项用电量", "分项", names,
                              {"用电量": values}, "kWh", [F_ENERGY, F_OTHER]))
        return Section("三、分项能耗", tables=[table], charts=[chart])

    def off_hours(self) -> Section:
        table = Table("off_hours", "非工作时间用电（无人时段）", [
            Column("建筑", kind="text"), Column("工作时间", "kWh"), Column("工作日夜间", "kWh"),
            Column("周末及节假日", "kWh"), Column("非工作时间占比", kind="percent"),
            Column("非工作时间平均功率", "kW", 1), Column("未分配（跨缺口）", "kWh"),
            Column("覆盖率", kind="coverage")],
            formulas=[F_SPLIT, f"工作时间：{self.calendar.describe()}",
                      "非工作时间占比 = 非工作时间电量 ÷（工作时间 + 非工作时间电量）",
                      "非工作时间平均功率 = 非工作时间电量 ÷ 有数据的非工作时间小时数", F_COVER])
        categories, office, night, rest = [], [], [], []
        off_buckets = {t for t, c in self.classes.items() if c != OFFICE}
        for building_id in sorted(self.buildings):
            meters = self.buildings[building_id].basis
            parts = split(meters, self.classes)
            off = parts[NIGHT] + parts[REST]
            allocated = off + parts[OFFICE]
            common = set.intersection(*(m.covered for m in meters)) if meters else set()
            off_hours = len(common & off_buckets) * BUCKET_NS / 3.6e12
            table.rows.append([self.place_name(building_id), parts[OFFICE], parts[NIGHT],
                               parts[REST], off / allocated if allocated else None,
                               off / off_hours if off_hours else None, parts["unallocated"],
                               joint_coverage(meters, self.n)])
            categories.append(self.place_name(building_id))
            office.append(parts[OFFICE])
            night.append(parts[NIGHT])
            rest.append(parts[REST])
        holidays = self.calendar.holidays_between(self.now.period.start.date(),
                                                  self.now.period.end.date())
        if holidays:
            table.notes.append("期内法定节假日：" + "、".join(f"{d:%m-%d}{n}" for d, n in holidays)
                               + f"（日历：{self.calendar.source}）")
        stacks = {"工作时间": office, "工作日夜间": night, "周末及节假日": rest}
        chart = Chart("工作时间与非工作时间用电", charts.stacked_bars(
            "工作时间与非工作时间用电（kWh）", categories, stacks, "kWh"), F_SPLIT,
            _series("chart_office_hours", "图：工作时间与非工作时间用电", "建筑", categories,
                    stacks, "kWh", [F_SPLIT]))
        return Section("四、工作时间与非工作时间", intro="非工作时间的用电即无人办公时段的用电，"
                       "是节能管理的重点。", tables=[table], charts=[chart, self._profile_chart()])

    def demand(self) -> Section:
        table = Table("demand", "最大需量", [
            Column("对象", kind="text"), Column("最大需量", "kW"), Column("出现时间", kind="text"),
            Column("瞬时最大功率", "kW"), Column("覆盖率", kind="coverage")],
            formulas=[F_DEMAND, "瞬时最大功率 = 期内电能表上报有功功率的最大值"
                      "（多块表时取各表最大值之和）", F_COVER])
        campus = self._campus_demand()
        rows = [("园区合计", campus, self.campus_meters(self.buildings))]
        rows += [(self.place_name(b), demand_series(self.buildings[b].basis),
                  self.buildings[b].basis) for b in sorted(self.buildings)]
        for label, series, meters in rows:
            peak_t = max(series, key=lambda t: series[t]) if series else None
            powers = [m.power_max for m in meters if m.power_max is not None]
            table.rows.append([label, series[peak_t] if peak_t is not None else None,
                               self._time(peak_t) if peak_t is not None else "—",
                               math.fsum(powers) if powers else None,
                               len(series) / self.n if self.n else None])
        return Section("五、最大需量", tables=[table])

    def ev(self) -> Section:
        table = Table("ev_chargers", "电动汽车充电桩充电量", [
            Column("充电桩", kind="text"), Column("位置", kind="text"), Column("充电量", "kWh"),
            Column("充电次数", digits=0), Column("覆盖率", kind="coverage")],
            formulas=["充电量 = Σ 充电桩上报的本次充电电量（session_energy）的增量；"
                      "每次新会话计数清零，清零后的读数计入（同电能表清零规则）",
                      "充电次数 = 有充电电量（> 0.05 kWh）的连续15分钟区间段数，"
                      "段内会话电量清零再计一次", F_COVER])
        for device in sorted(self.now.chargers, key=lambda d: d.id):
            meter = self.now.chargers[device]
            table.rows.append([self.device_name(device.id), self.place_name(device.place),
                               meter.total, sessions(meter), meter.coverage])
        chargers_kwh = total(self.now.chargers.values())
        ev_meters = [m for d, m in self.now.meters.items() if d.load == "ev_charging"]
        figures = [Figure("充电桩上报充电量合计", chargers_kwh, "kWh", "Σ 各充电桩充电量",
                          joint_coverage(list(self.now.chargers.values()), self.n)
                          if self.now.chargers else None),
                   Figure("充电计量表电量", total(ev_meters), "kWh",
                          "Σ 分项为 ev_charging 的电能表电量；"
                          "与充电桩合计之差含线损及未接入平台的充电桩",
                          joint_coverage(ev_meters, self.n) if ev_meters else None)]
        if not self.now.chargers:
            table.notes.append("期内没有充电桩数据。")
        return Section("六、电动汽车充电", figures=figures, tables=[table])

    def anomalies_section(self) -> Section:
        table = Table("anomalies", "用电异常（前十）", [
            Column("表计", kind="text"), Column("建筑", kind="text"), Column("分项", kind="text"),
            Column("日期", kind="text"), Column("日类型", kind="text"), Column("当日电量", "kWh"),
            Column("同类日中位数", "kWh"), Column("超出", "kWh"),
            Column("超出比例", kind="percent"), Column("基准天数", digits=0)],
            formulas=["超出 = 当日电量 − 该表同类日（工作日/休息日）其余全天完整日电量的中位数",
                      "超出比例 = 超出 ÷ 中位数；只比较数据完整（96个15分钟区间）的日子，"
                      "基准至少3天",
                      "按超出电量从大到小排列"])
        for a in anomalies(self.now, self.calendar, self.tz):
            table.rows.append([self.device_name(a.device.id), self.place_name(a.device.building),
                               labels.label(labels.LOAD, a.device.load), a.day, a.day_type,
                               a.energy, a.baseline, a.excess,
                               a.excess / a.baseline if a.baseline > 0 else None,
                               a.days_in_baseline])
        if not table.rows:
            table.notes.append("没有可比较的异常日（需要至少3个同类完整日作基准）。")
        return Section("七、用电异常", tables=[table])

    def quality(self) -> Section:
        table = Table("data_quality", "数据质量与覆盖", [
            Column("表计", kind="text"), Column("设备编号", kind="text"),
            Column("建筑", kind="text"), Column("分项", kind="text"), Column("用电量", "kWh"),
            Column("跨缺口电量", "kWh"), Column("缺口数", digits=0), Column("缺口时长", "h"),
            Column("清零次数", digits=0), Column("换表/跳变", digits=0),
            Column("覆盖率", kind="coverage")],
            formulas=[F_COVER, "缺口：没有任何读数的连续15分钟区间；"
                      "清零：读数下降且下降后读数不超过"
                      "该表最大功率 × 间隔时间 × 1.5 + 1 kWh；换表/跳变：读数下降到更大的值，"
                      "或上升超过同一上限，该步不计电量"])
        events = Table("counter_events", "清零与换表记录", [
            Column("表计", kind="text"), Column("时间", kind="text"), Column("类型", kind="text"),
            Column("前读数", "kWh", 2), Column("后读数", "kWh", 2), Column("计入", "kWh", 2)],
            formulas=["清零：计入清零后读数；换表、跳变：不计入（电量未知），该区间不计覆盖"])
        kinds = {"reset": "清零", "replacement": "换表", "jump": "跳变"}
        for device in sorted(self.now.meters, key=lambda d: (d.building, d.load != "total", d.id)):
            meter = self.now.meters[device]
            gap_hours = sum(b - a for a, b in meter.gaps) / 3.6e12
            table.rows.append([
                self.device_name(device.id), device.id, self.place_name(device.building),
                labels.label(labels.LOAD, device.load), meter.total, meter.unallocated,
                len(meter.gaps), gap_hours, sum(1 for e in meter.events if e.kind == "reset"),
                sum(1 for e in meter.events if e.kind != "reset"), meter.coverage])
            for event in meter.events:
                events.rows.append([self.device_name(device.id), self._time(event.t),
                                    kinds[event.kind], event.before, event.after, event.counted])
        if self.now.rebuilt_days:
            table.notes.append(f"本次出报前，{self.now.rebuilt_days} 天的15分钟汇总数据因迟到数据"
                               "而重新计算（见“方法”）。")
        missing = [p.name for p in self.site.places if p.kind == "building"
                   and p.id not in self.buildings]
        if missing:
            table.notes.append("没有电能表数据的建筑：" + "、".join(missing))
        return Section("八、数据质量", tables=[table, events])

    def method(self) -> list[str]:
        return [
            "数据来源：InfluxDB 中各电能表的正向有功电能累计读数（energy_import，kWh）和有功功率"
            "（power_total，kW），以及充电桩上报的会话电量（session_energy）与功率；读取的是"
            "InfluxDB 连续查询生成的15分钟汇总（每区间的首、末、最小、最大读数及读数个数），"
            "出报前按天核对原始数据点数，不一致的日子在数据库内重新汇总（迟到数据由此计入）。",
            F_ENERGY + "。", F_KGCE + "。", F_AREA + "；" + F_PERSON + "。",
            "建筑面积与用能人数取自站点配置文件 config/site.yaml。",
            F_SPLIT + f"。工作时间：{self.calendar.describe()}；"
            f"节假日日历：{self.calendar.source}。",
            F_DEMAND + "。", F_MOM + "；" + F_YOY + "。上期、去年同期与本期口径相同。",
            F_COVER + "。缺口不插补，只报告。",
            "时间均为北京时间（" + self.site.site.timezone + "）。",
            *([f"本期尚未结束：只统计到 {self.now.period.end:%Y-%m-%d %H:%M} 为止已结束的15分钟区间"
               "（进行中的区间读数不全，不计入；之后的时间尚未发生，不计为数据缺口，"
               "覆盖率的分母也只含已结束的区间）；上期与去年同期取自各自开始起的相同时长。"]
              if self.now.period.in_progress else []),
        ]

    # Charts -----------------------------------------------------------------------
    def _daily_chart(self) -> Chart:
        days: list[str] = []
        day_index: dict[str, int] = {}
        moment = self.now.period.start
        while moment < self.now.period.end:
            day_index[moment.strftime("%m-%d")] = len(days)
            days.append(moment.strftime("%m-%d"))
            moment += timedelta(days=1)
        series: dict[str, list[float]] = {}
        for building_id in sorted(self.buildings):
            values = [0.0] * len(days)
            for meter in self.buildings[building_id].basis:
                for t, kwh in meter.energy.items():
                    key = datetime.fromtimestamp(t / 1e9, self.tz).strftime("%m-%d")
                    if key in day_index:
                        values[day_index[key]] += kwh
            series[self.place_name(building_id)] = values
        png = charts.stacked_bars("逐日用电量（kWh）", days, series, "kWh", rotate=len(days) > 10)
        formula = "逐日电量 = Σ 当日各15分钟区间已分配电量（跨缺口电量不含在内）"
        dates = []
        moment = self.now.period.start
        while moment < self.now.period.end:
            dates.append(moment.strftime("%Y-%m-%d"))
            moment += timedelta(days=1)
        totals = [math.fsum(v[i] for v in series.values()) for i in range(len(days))]
        return Chart("逐日用电量", png, formula,
                     _series("chart_daily", "图：逐日用电量（按建筑）", "日期", dates,
                             {**series, "合计": totals}, "kWh", [formula]))

    def _profile_chart(self) -> Chart:
        demand = self._campus_demand()
        per_slot = 24 * 4
        sums = {"工作日": [0.0] * per_slot, "休息日": [0.0] * per_slot}
        counts = {"工作日": [0] * per_slot, "休息日": [0] * per_slot}
        for t, kw in demand.items():
            moment = datetime.fromtimestamp(t / 1e9, self.tz)
            kind = "工作日" if self.calendar.is_workday(moment.date()) else "休息日"
            slot = moment.hour * 4 + moment.minute // 15
            sums[kind][slot] += kw
            counts[kind][slot] += 1
        series: dict[str, list[float | None]] = {
            kind: [s / c if c else None for s, c in zip(sums[kind], counts[kind], strict=True)]
            for kind in sums}
        labels = [f"{slot // 4:02d}:{slot % 4 * 15:02d}" for slot in range(per_slot)]
        png = charts.lines("园区平均负荷曲线（kW）", labels, series, "kW")
        formula = "各时刻平均需量 = 同类日同一15分钟区间园区需量的平均值"
        counted = {f"{kind}天数": [float(c) for c in counts[kind]] for kind in counts}
        return Chart("平均负荷曲线", png, formula,
                     _series("chart_load_curve", "图：园区平均负荷曲线（15分钟）", "时刻",
                             labels, {**series, **counted}, "kW",
                             [formula, "天数：该时刻参与平均的同类日数"
                                       "（该区间各表读数完整的日子）"]))


def _series(key: str, title: str, x_label: str, x: list[str],
            series: Mapping[str, Sequence[float | None]], unit: str,
            formulas: list[str]) -> Table:
    """The numbers a chart draws, one row per point of its axis (the workbook's sheet)."""
    table = Table(key, title, [Column(x_label, kind="text"),
                               *[Column(name, "" if name.endswith("天数") else unit,
                                        0 if name.endswith("天数") else 1)
                                 for name in series]], formulas=formulas)
    for index, label in enumerate(x):
        table.rows.append([label, *[values[index] for values in series.values()]])
    return table


def _share(part: float, whole: float) -> str:
    return f"{part / whole * 100:.1f}%" if whole else "—"
