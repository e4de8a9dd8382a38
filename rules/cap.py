"""Emergencies as CAP 1.2 documents (OASIS Common Alerting Protocol), for other warning
systems. One document per incident version: msgType Alert when it starts, Update (with
`references` to the earlier ones) when it changes, and Update with responseType AllClear
and urgency Past when it is over."""

from __future__ import annotations

from datetime import datetime
from functools import cache
from pathlib import Path
from typing import Any
from xml.etree import ElementTree as ET
from zoneinfo import ZoneInfo

from facility.messages import Severity
from rules.clock import NS

NAMESPACE = "urn:oasis:names:tc:emergency:cap:1.2"
SCHEMA = Path(__file__).with_name("cap12.xsd")
CAP_SEVERITY = {Severity.CRITICAL: "Extreme", Severity.MAJOR: "Severe",
                Severity.MINOR: "Moderate", Severity.WARNING: "Minor", Severity.INFO: "Unknown"}
CAP_URGENCY = {Severity.CRITICAL: "Immediate", Severity.MAJOR: "Immediate",
               Severity.MINOR: "Expected", Severity.WARNING: "Expected",
               Severity.INFO: "Unknown"}


def cap_time(ns: int, timezone: str) -> str:
    """CAP's dateTime: no fractions, explicit offset (e.g. 2026-11-28T09:15:02+08:00)."""
    return datetime.fromtimestamp(ns // NS, ZoneInfo(timezone)).isoformat(timespec="seconds")


def build(*, identifier: str, sender: str, sent: int, timezone: str, msg_type: str,
          references: list[str], incident: str, category: str, response: str, event: str,
          severity: Severity, headline: str, description: str, instruction: str,
          sender_name: str, area_desc: str, zones: list[str], over: bool,
          status: str = "Actual", expires: int = 0) -> str:
    ET.register_namespace("", NAMESPACE)

    def el(parent: ET.Element, tag: str, text: str | None = None) -> ET.Element:
        child = ET.SubElement(parent, f"{{{NAMESPACE}}}{tag}")
        if text is not None:
            child.text = text
        return child

    root = ET.Element(f"{{{NAMESPACE}}}alert")
    el(root, "identifier", identifier)
    el(root, "sender", sender)
    el(root, "sent", cap_time(sent, timezone))
    el(root, "status", status)
    el(root, "msgType", msg_type)
    el(root, "scope", "Public")
    if references:
        el(root, "references", " ".join(references))
    el(root, "incidents", incident)
    info = el(root, "info")
    el(info, "language", "zh-CN")
    el(info, "category", category)
    el(info, "event", event)
    el(info, "responseType", "AllClear" if over else response)
    el(info, "urgency", "Past" if over else CAP_URGENCY[severity])
    el(info, "severity", CAP_SEVERITY[severity])
    el(info, "certainty", "Observed")
    if expires:
        el(info, "expires", cap_time(expires, timezone))
    el(info, "senderName", sender_name)
    el(info, "headline", headline)
    el(info, "description", description)
    if instruction:
        el(info, "instruction", instruction)
    area = el(info, "area")
    el(area, "areaDesc", area_desc)
    for zone in zones:
        geocode = el(area, "geocode")
        el(geocode, "valueName", "facility-zone")
        el(geocode, "value", zone)
    return ET.tostring(root, encoding="unicode", xml_declaration=False)


def reference(sender: str, identifier: str, sent: int, timezone: str) -> str:
    return f"{sender},{identifier},{cap_time(sent, timezone)}"


@cache
def _schema() -> Any:
    import xmlschema

    return xmlschema.XMLSchema(str(SCHEMA))


def validate(document: str) -> None:
    """Raise ValueError when a document does not follow the CAP 1.2 schema."""
    import xmlschema

    try:
        _schema().validate(document)
    except xmlschema.XMLSchemaValidationError as exc:
        raise ValueError(f"not a valid CAP 1.2 document: {exc.reason} at {exc.path}") from None
