"""The one label table: the Chinese word an operator reads for each state, status and
name the system keeps as an id (severities and their order, alert states, command actions
and statuses, approval, bollard positions, charger statuses, device families, qualities,
availability, screen delivery, roles, history actions).

The rules engine (screen and PA texts), the shift and energy reports, the Grafana boards
and the API use it, and the control-room page loads it once at start from GET
/api/labels; nobody keeps a copy of these words. A key with no word reads as itself
(`label()`), so a new status shows up as its id rather than as nothing;
tests/test_labels.py says every enum member has a word.
"""

from __future__ import annotations

from collections.abc import Mapping
from types import MappingProxyType

from facility.messages import (
    SEVERITY_RANK,
    AckStatus,
    AlertState,
    Availability,
    CommandStatus,
    Family,
    Quality,
    Severity,
)

# Worst first (from facility.messages.SEVERITY_RANK, the one order).
SEVERITY_ORDER: tuple[Severity, ...] = tuple(sorted(SEVERITY_RANK, key=SEVERITY_RANK.__getitem__,
                                                    reverse=True))

SEVERITY: Mapping[str, str] = MappingProxyType({
    Severity.CRITICAL: "紧急", Severity.MAJOR: "严重", Severity.MINOR: "一般",
    Severity.WARNING: "预警", Severity.INFO: "提示"})

ALERT_STATE: Mapping[str, str] = MappingProxyType({
    AlertState.ACTIVE_UNACK: "未确认", AlertState.ACTIVE_ACK: "已确认",
    AlertState.RTN_UNACK: "已恢复待确认", AlertState.SHELVED: "已搁置",
    AlertState.SUPPRESSED: "已抑制", AlertState.OUT_OF_SERVICE: "已停用",
    AlertState.NORMAL: "已关闭"})

# Actions an operator took on an alert, as its history records them (docs/rules.md).
HISTORY_ACTION: Mapping[str, str] = MappingProxyType({
    "acknowledged": "确认", "comment": "备注", "shelved": "搁置", "unshelved": "取消搁置",
    "out_of_service": "停用", "returned_to_service": "恢复使用"})

COMMAND_ACTION: Mapping[str, str] = MappingProxyType({
    "raise": "升起", "lower": "降下", "raise_all": "全部升起", "lower_all": "全部降下",
    "emergency_rise": "紧急升起", "reset_faults": "故障复位",
    # OCPP chargers (csms/, POST /api/chargers/{device}/commands)
    "remote_start_transaction": "远程启动充电", "remote_stop_transaction": "远程停止充电",
    "unlock_connector": "解锁充电枪", "change_availability": "设置可用状态",
    "reset": "重启充电桩", "trigger_message": "请求上报", "get_configuration": "读取配置",
    "change_configuration": "修改配置",
    # an OCPP command's parameter, as "<action>:<value>" (the page's choices and lists)
    "reset:soft": "软重启（先结束充电）", "reset:hard": "硬重启（立即断电重启）",
    "change_availability:inoperative": "停用", "change_availability:operative": "恢复可用",
    "trigger_message:StatusNotification": "上报状态", "trigger_message:MeterValues": "上报计量数据",
    "trigger_message:Heartbeat": "上报心跳", "trigger_message:BootNotification": "上报启动信息",
    "trigger_message:DiagnosticsStatusNotification": "上报诊断上传状态",
    "trigger_message:FirmwareStatusNotification": "上报固件升级状态"})

# A command's state as the API folds it: the gateway's CommandStatus and the API's own
# (approval, supersession, sent, no result).
COMMAND_STATUS: Mapping[str, str] = MappingProxyType({
    "awaiting_approval": "待审批", "rejected": "已驳回", "approval_expired": "审批超时",
    "superseded": "已被紧急升起取代", "sent": "已发送", "pending": "等待中",
    "no_result": "无回执",
    CommandStatus.ACCEPTED: "执行中", CommandStatus.DONE: "完成",
    CommandStatus.REFUSED: "拒绝执行", CommandStatus.FAILED: "失败",
    CommandStatus.TIMED_OUT: "超时未到位", CommandStatus.EXPIRED: "已过期",
    CommandStatus.DUPLICATE: "重复指令",
    # OCPP chargers: a state where the bollards' word does not fit ("charger:<status>")
    "charger:accepted": "已下发，等待充电桩应答", "charger:timed_out": "充电桩未应答（超时）",
    # the charge point's answer, which the central system (csms/service.py) puts in the
    # result's detail ("ocpp:<answer>"), and its own reasons, matched at the detail's start
    "ocpp:Accepted": "已接受", "ocpp:Rejected": "已拒绝", "ocpp:Unlocked": "已解锁",
    "ocpp:UnlockFailed": "解锁失败", "ocpp:NotSupported": "不支持此操作",
    "ocpp:NotImplemented": "未实现此操作", "ocpp:Scheduled": "已接受，充电结束后执行",
    "ocpp:RebootRequired": "已接受，重启后生效", "ocpp:no status": "应答未说明结果",
    "ocpp:sent": "已发给充电桩", "ocpp:charge point not connected": "充电桩未连接",
    "ocpp:no answer from the charge point": "充电桩未应答（超时）",
    "ocpp:CALLERROR": "充电桩回复协议错误",
    "ocpp:connection closed before the answer": "应答前连接已断开",
    "ocpp:arrived after its validity": "指令到达时已过期",
    "ocpp:this command id was already taken": "此指令编号已执行过，未再执行",
    "ocpp:connector": "充电枪号不在本桩范围内", "ocpp:parameter": "缺少必填参数",
    "ocpp:type must be": "类型无效", "ocpp:message": "上报类型无效",
    "ocpp:transaction_id": "充电交易号无效",
    "ocpp:transactions in progress": "该枪没有正在进行的充电（或不止一个），请指定交易号",
    "ocpp:no result from the gateway": "中央系统无回执"})

APPROVAL: Mapping[str, str] = MappingProxyType({
    "pending": "待审批", "not_required": "无需审批", "approved": "已审批",
    "rejected": "已驳回", "expired": "审批超时"})

BOLLARD: Mapping[str, str] = MappingProxyType({
    "up": "升起", "down": "降下", "rising": "上升中", "lowering": "下降中", "fault": "故障"})

EV_STATUS: Mapping[str, str] = MappingProxyType({
    "available": "空闲", "preparing": "准备中", "charging": "充电中",
    "suspended_evse": "暂停(桩)", "suspended_ev": "暂停(车)", "finishing": "结束中",
    "reserved": "已预约", "unavailable": "不可用", "faulted": "故障"})

FAMILY: Mapping[str, str] = MappingProxyType({
    Family.BOLLARD: "升降柱", Family.ENERGY: "能耗计量", Family.FIRE: "消防",
    Family.EV_CHARGER: "充电桩", Family.DRAINAGE: "排水", Family.GAS: "化粪池气体",
    Family.GATEWAY: "网关", "": "其他"})

QUALITY: Mapping[str, str] = MappingProxyType({
    Quality.GOOD: "正常", Quality.STALE: "数据过期", Quality.COMM_FAILURE: "通信故障",
    Quality.DEVICE_ERROR: "设备报错", Quality.BAD_VALUE: "数值异常"})

AVAILABILITY: Mapping[str, str] = MappingProxyType({
    Availability.ONLINE: "在线", Availability.OFFLINE: "离线"})

# A screen's or PA zone's confirmation of a message ("pending": none yet).
DELIVERY: Mapping[str, str] = MappingProxyType({
    AckStatus.SHOWN: "已确认显示", AckStatus.DUPLICATE: "已确认",
    AckStatus.REJECTED: "拒收", "pending": "待确认"})

ROLE: Mapping[str, str] = MappingProxyType({
    "viewer": "观察员", "operator": "值班员", "supervisor": "值班长", "admin": "管理员"})

# The names of the values devices report (readings, as the page's detail and charts show).
VALUE: Mapping[str, str] = MappingProxyType({
    "alarm_count": "报警点数", "backup_power": "备用电源", "battery": "电池电压",
    "bollard_count": "升降柱数量", "bollards_down": "降下数量", "bollards_fault": "故障数量",
    "bollards_up": "升起数量", "cabinet_temperature": "控制柜温度",
    "cable_temperature_1": "线缆温度1", "cable_temperature_2": "线缆温度2",
    "cmd_ack_seq": "指令确认序号", "cmd_result": "指令结果", "connector": "充电枪号",
    "connector_temperature": "充电枪温度", "current": "电流", "current_a": "A相电流",
    "current_b": "B相电流", "current_c": "C相电流", "cycle_count": "动作次数",
    "door_open": "柜门打开", "emergency_rise": "紧急升起", "energy_export": "反向电量",
    "energy_import": "正向电量", "error_code": "故障代码", "fault_code": "故障代码",
    "fault_count": "故障点数", "frame_counter": "帧计数", "frequency": "频率",
    "h2s": "硫化氢", "heartbeat": "心跳", "hydraulic_pressure": "液压压力",
    "main_power": "主电源", "mains_present": "市电", "mode": "运行模式",
    "motor_current": "电机电流", "nh3": "氨气", "oil_temperature": "油温",
    "position": "位置", "power": "功率", "power_a": "A相功率", "power_b": "B相功率",
    "power_c": "C相功率", "power_factor": "功率因数", "power_total": "总有功功率",
    "pump_current": "水泵电流", "pump_fault": "水泵故障", "pump_run_hours": "水泵运行时长",
    "pump_running": "水泵运行", "rain_rate": "雨强", "rain_total": "累计雨量",
    "reactive_power_total": "总无功功率", "residual_current": "剩余电流",
    "residual_current_alarm": "剩余电流报警", "rssi": "信号强度", "session_energy": "本次充电量",
    "smoke": "烟雾浓度", "snr": "信噪比", "state": "状态", "status": "状态",
    "supply_pressure": "供油压力", "target": "目标位置", "temperature": "温度",
    "temperature_alarm": "温度报警", "ups_charge": "UPS电量", "vehicle_on_loop": "地感有车",
    "voltage": "电压", "voltage_a": "A相电压", "voltage_b": "B相电压", "voltage_c": "C相电压",
    "water_level": "水位",
    # OCPP chargers (csms/meter.py)
    "connector_status": "充电枪状态", "vendor_error_code": "厂家故障代码", "info": "附加信息",
    "transaction_id": "充电交易号", "soc": "车辆电量", "power_offered": "可用功率",
    "current_offered": "可用电流", "context": "采样类型",
    # OCPP 1.6 configuration keys (GetConfiguration's answer, as the page lists it)
    "HeartbeatInterval": "心跳间隔", "MeterValueSampleInterval": "计量采样间隔",
    "MeterValuesSampledData": "计量采样项", "ConnectionTimeOut": "插枪等待超时",
    "ClockAlignedDataInterval": "整点对齐采样间隔", "NumberOfConnectors": "充电枪数量",
    "LocalAuthorizeOffline": "离线本地授权", "AuthorizeRemoteTxRequests": "远程启动需授权"})

# The state a fire detector or panel reports (a reading's `state` value).
DEVICE_STATE: Mapping[str, str] = MappingProxyType({
    "normal": "正常", "pre_alarm": "预警", "alarm": "火警", "fault": "故障",
    "disabled": "已屏蔽"})

# Device events (fire panels, chargers, ...) by name.
EVENT: Mapping[str, str] = MappingProxyType({
    "fire_alarm": "火警", "pre_alarm": "预警", "fault": "故障", "fault_restore": "故障恢复",
    "restore": "复位", "disabled": "屏蔽", "enabled": "解除屏蔽", "state_change": "状态变化",
    # OCPP chargers (csms/service.py)
    "status_change": "状态变化", "boot": "启动上线", "transaction_started": "开始充电",
    "transaction_stopped": "结束充电", "data_transfer": "厂家数据",
    "firmware_status": "固件升级状态", "diagnostics_status": "诊断上传状态"})

DEVICE_KIND: Mapping[str, str] = MappingProxyType({
    "smoke_detector": "感烟探测器", "heat_detector": "感温探测器", "fire_panel": "火灾报警控制器",
    "electrical_fire_monitor": "电气火灾监控", "bollard": "升降柱", "plc": "升降柱控制器",
    "water_level": "水位计", "rain_gauge": "雨量计", "sump_pump": "排涝泵",
    "gas_sensor": "气体探测器", "ac_charger": "交流充电桩", "dc_charger": "直流充电桩",
    "meter": "电能表", "gateway": "网关"})

# A device's colour on the campus plan (from its alerts, its own reading, its status).
PLAN_STATE: Mapping[str, str] = MappingProxyType({
    "ok": "正常", "warn": "预警", "alarm": "告警", "fault": "故障", "degraded": "数据异常",
    "offline": "离线", "unknown": "无数据"})

# An incident as the page lists it.
INCIDENT_STATE: Mapping[str, str] = MappingProxyType({
    "active": "进行中", "cleared": "已恢复", "closed": "已关闭"})

# A site's link to the centre (its broker's bridge, facility/bridge.py): its state, and
# what the rules engine's one "site unreachable" alert says (rules/kinds/site_link.py).
SITE_LINK: Mapping[str, str] = MappingProxyType({
    "up": "链路正常", "down": "链路中断",
    "unreachable_text": "与区中心的链路中断，站点数据暂存于站点代理，恢复后按序补传",
    "restored": "与区中心的链路已恢复"})

# What the page says for an answer of the API that is not a success (the server's
# detail is for the log; the operator reads these).
HTTP_STATUS: Mapping[str, str] = MappingProxyType({
    "400": "请求有误", "401": "登录已失效", "403": "无权限：不在您的角色或负责区域内",
    "404": "对象不存在", "409": "与当前状态冲突，操作未执行", "422": "输入有误",
    "429": "尝试次数过多，请稍后再试", "500": "服务器内部错误",
    "503": "服务暂不可用，操作未执行", "504": "规则引擎未及时响应", "0": "网络不通"})

# The aggregates a trend chart can ask InfluxDB for.
AGGREGATE: Mapping[str, str] = MappingProxyType({
    "mean": "平均值", "min": "最小值", "max": "最大值", "last": "末值", "first": "首值",
    "count": "次数"})

# Words the page does not show (so they are not in TABLES): the Grafana boards' value
# mappings (dashboards/boards.py) and the energy report's loads (reports/energy_report.py).
# The bollard PLC's mode, its emergency rise and its power supply, as its readings say.
BOLLARD_MODE: Mapping[str, str] = MappingProxyType({
    "auto": "自动", "manual": "手动", "maintenance": "维护", "emergency": "紧急"})

# A bollard's fault code as the PLC reports it (docs/devices/bollard-plc.md).
BOLLARD_FAULT: Mapping[str, str] = MappingProxyType({
    "none": "无", "pressure_low": "液压不足", "motor_overload": "电机过载",
    "position_sensor": "位置传感器故障", "travel_timeout": "行程超时",
    "oil_overtemperature": "油温过高", "obstruction": "遇阻"})

EMERGENCY_RISE: Mapping[str, str] = MappingProxyType({
    "idle": "未触发", "rising": "上升中", "complete": "已完成"})

POWER_SUPPLY: Mapping[str, str] = MappingProxyType({
    "mains": "市电", "ups": "UPS", "ups_low": "UPS低电量"})

# A pump's running flag (a bool reading, as InfluxDB and Grafana spell it).
RUNNING: Mapping[str, str] = MappingProxyType({"true": "运行", "false": "停止"})

# The energy sub-meters' `load` tag; "other": the main meter less the sub-meters.
LOAD: Mapping[str, str] = MappingProxyType({
    "total": "总表", "lighting": "照明", "hvac": "空调", "lifts": "电梯",
    "canteen": "饭堂厨房", "ev_charging": "电动汽车充电", "ebike_charging": "电动自行车充电",
    "other": "其他（总表减分项）"})

# A site's kind of public body (facility.site.PublicBodyKind), as the public
# institutions' energy statistics name them; the district energy report ranks within each.
PUBLIC_BODY_KIND: Mapping[str, str] = MappingProxyType({
    "office": "机关", "school": "中小学校", "university": "高等学校", "hospital": "医院",
    "venue": "场馆", "other": "其他公共机构"})

# Whether a site's meter data covers the whole period (the district energy report).
DATA_STATUS: Mapping[str, str] = MappingProxyType({
    "complete": "完整", "incomplete": "不完整", "no_meter_data": "缺表（无数据）",
    "gap": "数据缺口", "no_area": "缺建筑面积", "no_persons": "缺用能人数",
    "not_ranked": "不参与排名"})

# A site's connection to the centre in the district overview (api/district.py): its
# gateways' statuses, and the site broker's bridge (the link topic) where it has one.
CONNECTIVITY: Mapping[str, str] = MappingProxyType({
    "online": "在线", "partial": "部分离线", "offline": "离线",
    "unreachable": "链路中断", "unknown": "未知"})

TABLES: Mapping[str, Mapping[str, str]] = MappingProxyType({
    "severity": SEVERITY, "alert_state": ALERT_STATE, "history_action": HISTORY_ACTION,
    "command_action": COMMAND_ACTION, "command_status": COMMAND_STATUS,
    "approval": APPROVAL, "bollard": BOLLARD, "ev_status": EV_STATUS, "family": FAMILY,
    "quality": QUALITY, "availability": AVAILABILITY, "delivery": DELIVERY, "role": ROLE,
    "value": VALUE, "device_state": DEVICE_STATE, "event": EVENT, "device_kind": DEVICE_KIND,
    "http_status": HTTP_STATUS, "aggregate": AGGREGATE, "plan_state": PLAN_STATE,
    "incident_state": INCIDENT_STATE, "connectivity": CONNECTIVITY,
    "public_body_kind": PUBLIC_BODY_KIND})


def label(table: Mapping[str, str], key: str) -> str:
    """The word for `key`, or the key itself when the table has none."""
    return table.get(key, key)


def as_json() -> dict[str, object]:
    """The whole table as the page loads it: each table by name (plain string keys), the
    severity rank and the severity order, worst first, and the drill words."""
    out: dict[str, object] = {name: {str(k): v for k, v in table.items()}
                              for name, table in TABLES.items()}
    out["severity_rank"] = {str(k): v for k, v in SEVERITY_RANK.items()}
    out["severity_order"] = [str(s) for s in SEVERITY_ORDER]
    # Drills (演练, below): the scenarios' names and the marks a drill's texts carry.
    out["drill"] = dict(DRILL)
    out["drill_prefix"] = DRILL_PREFIX
    out["drill_speech_prefix"] = DRILL_SPEECH_PREFIX
    return out


# People in the loop (duty/): what a person's phone, mailbox or group robot says. Kept
# apart from TABLES (the page's own words) as the messages leave the platform.
DUTY_EVENT: Mapping[str, str] = MappingProxyType({
    "raised": "新告警", "escalated": "已升级", "acknowledged": "已确认", "cleared": "已恢复",
    "handover": "交接班", "workorder": "维修工单", "sla": "工单超时"})

DUTY_TEXT: Mapping[str, str] = MappingProxyType({
    "ack_prompt": "请点击确认（仅限本人，{minutes}分钟内有效）：",
    "reply_prompt": "或回复短信：确认 {code}",
    "reply_unknown": "未找到与此确认码对应的待确认告警",
    "escalated_after": "{minutes}分钟内无人确认，已升级通知：",
    "acked_by": "已由{who}确认",
    "cleared": "告警已恢复",
    "place": "地点", "time": "时间", "severity": "级别", "system": "系统",
    "notified": "已通知", "nobody": "（无人值班）",
    "ack_done": "已确认，谢谢。规则引擎已记录：{who}",
    "ack_used": "此确认链接已使用过",
    "ack_expired": "此确认链接已过期，请登录控制室页面确认",
    "ack_invalid": "确认链接无效",
    "workorder_opened": "新维修工单{id}：{place} {device}，{fault}，优先级{priority}",
    "workorder_sla": "维修工单{id}已超过处理时限（{hours}小时）未解决",
    "still_faulty": "设备仍处于故障状态（{fault}），不能标记为已解决",
    "not_normal_long": "设备恢复正常不足{minutes}分钟"})

WORKORDER_STATE: Mapping[str, str] = MappingProxyType({
    "open": "待派单", "assigned": "已派单", "in_progress": "维修中", "resolved": "已修复",
    "verified": "已验证", "closed": "已关闭",
    # the timeline's other steps
    "opened": "开单", "linked": "关联重复故障", "reopened": "重新打开", "sla_missed": "超时"})

WORKORDER_KIND: Mapping[str, str] = MappingProxyType({
    "fault": "设备故障", "request": "人工报修", "hotline": "12345热线"})

WORKORDER_PRIORITY: Mapping[str, str] = MappingProxyType({
    "1": "紧急", "2": "高", "3": "中", "4": "低"})

TEAM_KIND: Mapping[str, str] = MappingProxyType({
    "control_room": "安防监控中心", "standby": "应急抢修队", "contractor": "维保单位",
    "leaders": "值班领导"})

CHANNEL: Mapping[str, str] = MappingProxyType({
    "wecom": "企业微信", "dingtalk": "钉钉", "feishu": "飞书", "email": "电子邮件",
    "sms": "短信", "webhook": "Webhook", "apprise": "通知"})

# Screens and PA zones: what a screen with nothing to show says, and the alert raised
# when an endpoint does not confirm what it was sent ({name}: the endpoint's name).
ENDPOINT_TEXT: Mapping[str, str] = MappingProxyType({
    "empty": "（无内容）", "silent": "{name}未确认显示/播报内容"})

# Drills (演练): every screen and PA text of a drill starts with DRILL_PREFIX, and the
# scenarios have names (the command line, the API, the page).
DRILL_PREFIX = "【演练】"
DRILL_SPEECH_PREFIX = "演练，演练。"  # said before a drill's announcement
DRILL: Mapping[str, str] = MappingProxyType({
    "fire": "火警演练", "rainstorm": "暴雨内涝演练", "gateway-loss": "网关失联演练",
    "bollard-fault": "升降柱故障演练", "drill": "演练", "started": "演练已开始",
    "ended": "演练已结束"})
