"""The one label table: the Chinese word an operator reads for each state, status and
name the system keeps as an id (severities and their order, alert states, command actions
and statuses, approval, bollard positions, charger statuses, device families, qualities,
availability, screen delivery, roles, history actions).

The rules engine (screen and PA texts), the shift report and the API use it, and the
control-room page loads it once at start from GET /api/labels; nobody keeps a copy of
these words. A key with no word reads as itself (`label()`), so a new status shows up as
its id rather than as nothing; tests/test_labels.py says every enum member has a word.
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
    "emergency_rise": "紧急升起", "reset_faults": "故障复位"})

# A command's state as the API folds it: the gateway's CommandStatus and the API's own
# (approval, supersession, sent, no result).
COMMAND_STATUS: Mapping[str, str] = MappingProxyType({
    "awaiting_approval": "待审批", "rejected": "已驳回", "approval_expired": "审批超时",
    "superseded": "已被紧急升起取代", "sent": "已发送", "pending": "等待中",
    "no_result": "无回执",
    CommandStatus.ACCEPTED: "执行中", CommandStatus.DONE: "完成",
    CommandStatus.REFUSED: "拒绝执行", CommandStatus.FAILED: "失败",
    CommandStatus.TIMED_OUT: "超时未到位", CommandStatus.EXPIRED: "已过期",
    CommandStatus.DUPLICATE: "重复指令"})

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

TABLES: Mapping[str, Mapping[str, str]] = MappingProxyType({
    "severity": SEVERITY, "alert_state": ALERT_STATE, "history_action": HISTORY_ACTION,
    "command_action": COMMAND_ACTION, "command_status": COMMAND_STATUS,
    "approval": APPROVAL, "bollard": BOLLARD, "ev_status": EV_STATUS, "family": FAMILY,
    "quality": QUALITY, "availability": AVAILABILITY, "delivery": DELIVERY, "role": ROLE})


def label(table: Mapping[str, str], key: str) -> str:
    """The word for `key`, or the key itself when the table has none."""
    return table.get(key, key)


def as_json() -> dict[str, object]:
    """The whole table as the page loads it: each table by name (plain string keys), the
    severity rank and the severity order, worst first."""
    out: dict[str, object] = {name: {str(k): v for k, v in table.items()}
                              for name, table in TABLES.items()}
    out["severity_rank"] = {str(k): v for k, v in SEVERITY_RANK.items()}
    out["severity_order"] = [str(s) for s in SEVERITY_ORDER]
    return out


# People in the loop (duty/): what a person's phone, mailbox or group robot says. Kept
# apart from TABLES (the page's own words) as the messages leave the platform.
DUTY_EVENT: Mapping[str, str] = MappingProxyType({
    "raised": "新告警", "escalated": "已升级", "acknowledged": "已确认", "cleared": "已恢复",
    "handover": "交接班", "workorder": "维修工单", "sla": "工单超时"})

DUTY_TEXT: Mapping[str, str] = MappingProxyType({
    "ack_prompt": "请点击确认（仅限本人，{minutes}分钟内有效）：",
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
    "verified": "已验证", "closed": "已关闭"})

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
