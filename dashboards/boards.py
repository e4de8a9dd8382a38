"""The campus dashboards: control-room overview, bollards, fire safety, drainage and rain,
EV charging, and energy. Titles are Chinese (operators read Chinese); every query is
InfluxQL against the data as ingest stores it (see ingest/convert.py).

Long energy ranges read the 15-minute rollups (retention policy `rollup`, see
facility/schema.py) rather than raw points.
"""

from __future__ import annotations

from collections.abc import Callable

from grafana_foundation_sdk.builders import dashboard

from dashboards.influxql import InfluxQL as Q
from dashboards.panels import (
    board,
    graph,
    grid,
    ids,
    mapping,
    row,
    single,
    tag_variable,
    timeline,
)
from facility import labels

# State words come from the label table (the page, the screens and the reports use the same);
# the boards add only a colour per state.
GREEN, RED, ORANGE, BLUE, GREY = "green", "red", "orange", "blue", "text"
BOLLARD_STATES = mapping(labels.BOLLARD, down=BLUE, rising=ORANGE, up=GREEN, lowering=ORANGE,
                         fault=RED)
FIRE_STATES = mapping(labels.DEVICE_STATE, normal=GREEN, pre_alarm=ORANGE, alarm=RED,
                      fault=ORANGE, disabled=GREY)
EV_STATES = mapping(labels.EV_STATUS, available=GREEN, preparing=BLUE, charging=BLUE,
                    suspended_evse=ORANGE, suspended_ev=ORANGE, finishing=BLUE, reserved=BLUE,
                    unavailable=GREY, faulted=RED)
ON_OFF = mapping(labels.RUNNING, true=GREEN, false=GREY)
PLC = "\"device\" = 'bollard-plc-south'"
UNITS = "\"controller\" = 'bollard-plc-south'"
ROLLUP = '"rollup"."energy_15m"'
LOCAL = "tz('Asia/Shanghai')"


def overview() -> dashboard.Dashboard:
    n = ids()
    d = board("facility-overview", "控制室总览", ["control-room"], refresh="10s",
              description="番禺区行政办公中心安防控制室：设备在线、升降柱、火警、积水、充电桩、用电一屏总览")
    d.with_row(row(n, "当前状态"))
    d.with_panel(single(n, "离线设备", "none", Q(
        'SELECT count("online") FROM (SELECT last("online") AS "online" FROM "device_status" '
        'WHERE $timeFilter GROUP BY "device") WHERE "online" = false'),
        description="最近一次状态为离线的设备数（device_status）", no_value="0"))
    d.with_panel(single(n, "在线设备", "none", Q(
        'SELECT count("online") FROM (SELECT last("online") AS "online" FROM "device_status" '
        'WHERE $timeFilter GROUP BY "device") WHERE "online" = true')))
    d.with_panel(single(n, "升起的升降柱", "none", Q(
        f'SELECT last("bollards_up") FROM "bollard" WHERE {PLC} AND $timeFilter')))
    d.with_panel(single(n, "故障升降柱", "none", Q(
        f'SELECT last("bollards_fault") FROM "bollard" WHERE {PLC} AND $timeFilter')))
    d.with_panel(single(n, "火警报警点数", "none", Q(
        'SELECT sum("alarms") FROM (SELECT last("alarm_count") AS "alarms" FROM "fire" '
        "WHERE \"kind\" = 'fire_panel' AND $timeFilter GROUP BY \"device\")"),
        description="各火灾报警控制器当前报警点数之和"))
    d.with_panel(single(n, "故障充电桩", "none", Q(
        'SELECT count("status") FROM (SELECT last("status") AS "status" FROM "ev_charger" '
        "WHERE $timeFilter GROUP BY \"device\") WHERE \"status\" = 'faulted'"), no_value="0"))
    d.with_row(row(n, "趋势"))
    d.with_panel(graph(n, "最高积水水位", "lengthcm", Q(
        'SELECT max("water_level") FROM "drainage" WHERE $timeFilter '
        'GROUP BY time($__interval), "place" fill(none)').alias("$tag_place")))
    d.with_panel(graph(n, "园区总功率（各建筑总表之和）", "kwatt", Q(
        'SELECT sum("p") FROM (SELECT mean("power_total") AS "p" FROM "energy" '
        "WHERE \"load\" = 'total' AND $timeFilter GROUP BY time($__interval), \"device\" "
        'fill(none)) WHERE $timeFilter GROUP BY time($__interval)').alias("园区总功率")))
    d.with_row(row(n, "事件与设备"))
    d.with_panel(grid(n, "最近设备事件", Q(
        'SELECT "name", "text", "family", "device" FROM "device_event" WHERE $timeFilter '
        "ORDER BY time DESC LIMIT 50"), width=12, height=10))
    d.with_panel(grid(n, "设备在线状态", Q(
        'SELECT last("state") AS "状态", last("reason") AS "原因" FROM "device_status" '
        'WHERE $timeFilter GROUP BY "family", "device"'), width=12, height=10))
    d.with_panel(grid(n, "无法入库的消息（死信）", Q(
        'SELECT "reason", "topic", "source" FROM "dead_letter" WHERE $timeFilter '
        "ORDER BY time DESC LIMIT 20"), height=6))
    return d


def bollards() -> dashboard.Dashboard:
    n = ids()
    d = board("facility-bollards", "南门防暴恐升降柱", ["bollard"], refresh="5s", span="now-1h")
    d.with_panel(single(n, "控制模式", "none", Q(
        f'SELECT last("mode") FROM "bollard" WHERE {PLC} AND $timeFilter'),
        mappings=mapping(labels.BOLLARD_MODE, auto=GREEN, manual=ORANGE, maintenance=ORANGE,
                         emergency=RED)))
    d.with_panel(single(n, "紧急升起", "none", Q(
        f'SELECT last("emergency_rise") FROM "bollard" WHERE {PLC} AND $timeFilter'),
        mappings=mapping(labels.EMERGENCY_RISE, idle=GREEN, rising=RED, complete=RED)))
    d.with_panel(single(n, "供电", "none", Q(
        f'SELECT last("power") FROM "bollard" WHERE {PLC} AND $timeFilter'),
        mappings=mapping(labels.POWER_SUPPLY, mains=GREEN, ups=ORANGE, ups_low=RED)))
    d.with_panel(single(n, "UPS电量", "percent", Q(
        f'SELECT last("ups_charge") FROM "bollard" WHERE {PLC} AND $timeFilter')))
    d.with_panel(single(n, "系统压力", "pressurebar", Q(
        f'SELECT last("supply_pressure") FROM "bollard" WHERE {PLC} AND $timeFilter')))
    d.with_panel(single(n, "柜内温度", "celsius", Q(
        f'SELECT last("cabinet_temperature") FROM "bollard" WHERE {PLC} AND $timeFilter')))
    d.with_panel(timeline(n, "各升降柱状态", Q(
        f'SELECT last("state") FROM "bollard" WHERE {UNITS} AND $timeFilter '
        'GROUP BY time($__interval), "device" fill(previous)').alias("$tag_device"),
        BOLLARD_STATES, height=16))
    d.with_panel(graph(n, "升起 / 降下 / 故障数量", "none",
                       Q(f'SELECT last("bollards_up") FROM "bollard" WHERE {PLC} AND $timeFilter '
                         "GROUP BY time($__interval) fill(none)").alias("升起"),
                       Q(f'SELECT last("bollards_down") FROM "bollard" WHERE {PLC} AND '
                         "$timeFilter GROUP BY time($__interval) fill(none)").alias("降下"),
                       Q(f'SELECT last("bollards_fault") FROM "bollard" WHERE {PLC} AND '
                         "$timeFilter GROUP BY time($__interval) fill(none)").alias("故障")))
    d.with_panel(graph(n, "液压压力", "pressurebar", Q(
        f'SELECT mean("hydraulic_pressure") FROM "bollard" WHERE {UNITS} AND $timeFilter '
        'GROUP BY time($__interval), "device" fill(none)').alias("$tag_device")))
    d.with_panel(graph(n, "电机电流", "amp", Q(
        f'SELECT max("motor_current") FROM "bollard" WHERE {UNITS} AND $timeFilter '
        'GROUP BY time($__interval), "device" fill(none)').alias("$tag_device")))
    d.with_panel(graph(n, "油温", "celsius", Q(
        f'SELECT mean("oil_temperature") FROM "bollard" WHERE {UNITS} AND $timeFilter '
        'GROUP BY time($__interval), "device" fill(none)').alias("$tag_device")))
    d.with_panel(grid(n, "故障代码与动作次数", Q(
        'SELECT last("fault_code") AS "故障代码", last("cycle_count") AS "动作次数", '
        f'last("position") AS "位置" FROM "bollard" WHERE {UNITS} AND $timeFilter '
        'GROUP BY "device"')))
    return d


def fire() -> dashboard.Dashboard:
    n = ids()
    d = board("facility-fire", "消防安全", ["fire"], refresh="10s")
    d.with_panel(grid(n, "火灾报警控制器", Q(
        'SELECT last("state") AS "状态", last("alarm_count") AS "报警", '
        'last("fault_count") AS "故障", last("main_power") AS "主电", '
        'last("backup_power") AS "备电" FROM "fire" '
        "WHERE \"kind\" = 'fire_panel' AND $timeFilter GROUP BY \"device\", \"place\""),
        height=7))
    d.with_panel(timeline(n, "探测器状态", Q(
        'SELECT last("state") FROM "fire" WHERE "kind" =~ /_detector$/ AND $timeFilter '
        'GROUP BY time($__interval), "device" fill(previous)').alias("$tag_device"),
        FIRE_STATES, height=12))
    d.with_panel(graph(n, "烟感浓度", "none", Q(
        "SELECT max(\"smoke\") FROM \"fire\" WHERE \"kind\" = 'smoke_detector' AND $timeFilter "
        'GROUP BY time($__interval), "device" fill(none)').alias("$tag_device"),
        description="dB/m"))
    d.with_panel(graph(n, "感温探测器温度", "celsius", Q(
        "SELECT max(\"temperature\") FROM \"fire\" WHERE \"kind\" = 'heat_detector' AND "
        '$timeFilter GROUP BY time($__interval), "device" fill(none)').alias("$tag_device")))
    d.with_panel(graph(n, "剩余电流（电气火灾监控）", "none", Q(
        'SELECT max("residual_current") FROM "fire" WHERE "kind" = '
        "'electrical_fire_monitor' AND $timeFilter GROUP BY time($__interval), \"place\" "
        "fill(none)").alias("$tag_place"), description="mA；配电房、电动自行车充电棚"))
    d.with_panel(graph(n, "电缆温度", "celsius", Q(
        'SELECT max("cable_temperature_1") FROM "fire" WHERE "kind" = '
        "'electrical_fire_monitor' AND $timeFilter GROUP BY time($__interval), \"place\" "
        "fill(none)").alias("$tag_place")))
    d.with_panel(grid(n, "消防事件", Q(
        'SELECT "name", "text", "device" FROM "device_event" WHERE "family" = \'fire\' '
        "AND $timeFilter ORDER BY time DESC LIMIT 50")))
    return d


def drainage() -> dashboard.Dashboard:
    n = ids()
    d = board("facility-drainage", "排水、降雨与化粪池气体", ["drainage"], refresh="1m",
              span="now-24h")
    d.with_panel(graph(n, "积水点水位", "lengthcm", Q(
        "SELECT mean(\"water_level\") FROM \"drainage\" WHERE \"kind\" = 'water_level' AND "
        '$timeFilter GROUP BY time($__interval), "place" fill(none)').alias("$tag_place"),
        description="东北角雨水口（错接污水管）、西门排水管（地铁施工沉降）、南门排水管（树根堵塞）"))
    d.with_panel(graph(n, "水位上涨速率", "none", Q(
        "SELECT derivative(mean(\"water_level\"), 10m) FROM \"drainage\" WHERE \"kind\" = "
        "'water_level' AND $timeFilter GROUP BY time($__interval), \"place\" fill(none)")
        .alias("$tag_place"), description="cm / 10 min"))
    d.with_panel(graph(n, "雨强", "none", Q(
        "SELECT mean(\"rain_rate\") FROM \"drainage\" WHERE \"kind\" = 'rain_gauge' AND "
        "$timeFilter GROUP BY time($__interval) fill(none)").alias("雨强 mm/h"),
        description="mm/h"))
    d.with_panel(graph(n, "小时降雨量", "lengthmm", Q(
        "SELECT non_negative_difference(last(\"rain_total\")) FROM \"drainage\" WHERE "
        "\"kind\" = 'rain_gauge' AND $timeFilter GROUP BY time(1h) fill(none)")
        .alias("小时降雨量"), bars=True, description="雨量计累计值的小时增量"))
    d.with_panel(timeline(n, "排涝泵运行", Q(
        "SELECT last(\"pump_running\") FROM \"drainage\" WHERE \"kind\" = 'sump_pump' AND "
        '$timeFilter GROUP BY time($__interval), "device" fill(previous)').alias("$tag_device"),
        ON_OFF, height=6))
    d.with_panel(graph(n, "排涝泵电流", "amp", Q(
        "SELECT mean(\"pump_current\") FROM \"drainage\" WHERE \"kind\" = 'sump_pump' AND "
        '$timeFilter GROUP BY time($__interval), "device" fill(none)').alias("$tag_device")))
    d.with_panel(graph(n, "化粪池硫化氢 / 氨气", "ppm",
                       Q('SELECT max("h2s") FROM "gas" WHERE $timeFilter GROUP BY '
                         'time($__interval), "device" fill(none)').alias("H2S $tag_device"),
                       Q('SELECT max("nh3") FROM "gas" WHERE $timeFilter GROUP BY '
                         'time($__interval), "device" fill(none)').alias("NH3 $tag_device"),
                       description="西副楼化粪池（异味复发预警）"))
    d.with_panel(grid(n, "传感器电池与信号", Q(
        'SELECT last("battery") AS "电池V", last("rssi") AS "RSSI", last("snr") AS "SNR" '
        'FROM "drainage", "gas" WHERE $timeFilter GROUP BY "device"')))
    return d


def ev_charging() -> dashboard.Dashboard:
    n = ids()
    d = board("facility-ev", "电动汽车充电", ["ev_charger"], refresh="30s", span="now-24h")
    d.with_panel(timeline(n, "充电桩状态", Q(
        'SELECT last("status") FROM "ev_charger" WHERE $timeFilter '
        'GROUP BY time($__interval), "device" fill(previous)').alias("$tag_device"),
        EV_STATES, height=9))
    d.with_panel(graph(n, "充电总功率", "kwatt", Q(
        'SELECT sum("p") FROM (SELECT mean("power") AS "p" FROM "ev_charger" WHERE $timeFilter '
        'GROUP BY time($__interval), "device" fill(none)) WHERE $timeFilter '
        "GROUP BY time($__interval)").alias("充电总功率")))
    d.with_panel(graph(n, "各桩充电功率", "kwatt", Q(
        'SELECT mean("power") FROM "ev_charger" WHERE $timeFilter '
        'GROUP BY time($__interval), "device" fill(none)').alias("$tag_device")))
    d.with_panel(graph(n, "充电接口温度", "celsius", Q(
        'SELECT max("connector_temperature") FROM "ev_charger" WHERE $timeFilter '
        'GROUP BY time($__interval), "device" fill(none)').alias("$tag_device")))
    d.with_panel(graph(n, "每日充电用电（充电计量表）", "kwatth", Q(
        f'SELECT non_negative_difference(last("c_last")) FROM {ROLLUP} WHERE "load" = '
        f"'ev_charging' AND $timeFilter GROUP BY time(1d), \"device\" fill(none) {LOCAL}")
        .alias("$tag_device"), bars=True, description="读15分钟汇总；当日末读数 − 前日末读数"))
    d.with_panel(grid(n, "充电桩明细", Q(
        'SELECT last("status") AS "状态", last("error_code") AS "故障码", '
        'last("session_energy") AS "本次电量kWh", max("connector_temperature") AS "最高温度" '
        'FROM "ev_charger" WHERE $timeFilter GROUP BY "device", "place"')))
    return d


def energy() -> dashboard.Dashboard:
    n = ids()
    d = board("facility-energy", "能耗监测", ["energy"], refresh="1m", span="now-7d",
              description="实时监测用；正式统计数据以能耗报告（facility report energy）为准")
    d.with_variable(tag_variable("building", "建筑", "energy", "building"))
    d.with_variable(tag_variable("load", "分项", "energy", "load", "\"load\" != 'total'"))
    by_building = "\"building\" =~ /^$building$/"
    d.with_panel(single(n, "园区当前功率", "kwatt", Q(
        'SELECT sum("p") FROM (SELECT last("power_total") AS "p" FROM "energy" WHERE '
        "\"load\" = 'total' AND $timeFilter GROUP BY \"device\")"), width=6))
    d.with_panel(graph(n, "各建筑功率（总表）", "kwatt", Q(
        f"SELECT mean(\"power_total\") FROM \"energy\" WHERE \"load\" = 'total' AND {by_building} "
        'AND $timeFilter GROUP BY time($__interval), "building", "device" fill(none)')
        .alias("$tag_building"), width=18))
    d.with_panel(graph(n, "分项功率", "kwatt", Q(
        f"SELECT mean(\"power_total\") FROM \"energy\" WHERE \"load\" != 'total' AND "
        f'"load" =~ /^$load$/ AND {by_building} AND $timeFilter '
        'GROUP BY time($__interval), "building", "load" fill(none)')
        .alias("$tag_building $tag_load"), width=24))
    d.with_panel(graph(n, "逐日用电量（各建筑）", "kwatth", Q(
        f'SELECT non_negative_difference(last("c_last")) FROM {ROLLUP} WHERE "load" = '
        f"'total' AND {by_building} AND $timeFilter GROUP BY time(1d), \"building\", "
        f'"device" fill(none) {LOCAL}').alias("$tag_building"), bars=True,
        description="读15分钟汇总；当日末读数 − 前日末读数（表计清零日不准，以报告为准）"))
    d.with_panel(graph(n, "白天 / 夜间用电", "kwatth", Q(
        f'SELECT non_negative_difference(last("c_last")) FROM {ROLLUP} WHERE "load" = '
        f"'total' AND {by_building} AND $timeFilter GROUP BY time(12h), \"building\", "
        '"device" fill(none)').alias("$tag_building"), bars=True,
        description="每根柱12小时：08:00–20:00 为白天，20:00–次日08:00 为夜间（北京时间）"))
    d.with_panel(graph(n, "逐日分项用电", "kwatth", Q(
        f'SELECT non_negative_difference(last("c_last")) FROM {ROLLUP} WHERE "load" != '
        f"'total' AND \"load\" =~ /^$load$/ AND {by_building} AND $timeFilter "
        f'GROUP BY time(1d), "load", "device" fill(none) {LOCAL}').alias("$tag_load $tag_device"),
        bars=True))
    d.with_panel(graph(n, "夜间基础负荷（每日最低15分钟平均功率）", "kwatt", Q(
        f"SELECT min(\"p_mean\") FROM {ROLLUP} WHERE \"load\" = 'total' AND {by_building} AND "
        f'$timeFilter GROUP BY time(1d), "building", "device" fill(none) {LOCAL}')
        .alias("$tag_building"), description="无人时段仍在运行的负荷；越低越好"))
    d.with_panel(grid(n, "电能表读数", Q(
        'SELECT last("energy_import") AS "累计电量kWh", last("power_total") AS "功率kW", '
        f'last("power_factor") AS "功率因数" FROM "energy" WHERE {by_building} AND '
        '$timeFilter GROUP BY "building", "load", "device"')))
    return d


DASHBOARDS: tuple[Callable[[], dashboard.Dashboard], ...] = (
    overview, bollards, fire, drainage, ev_charging, energy)
