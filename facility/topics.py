"""Canonical MQTT topic names: the only place a topic string is built or parsed.

Layout (version 1)::

    facility/v1/{site}/telemetry/{family}/{device}
    facility/v1/{site}/status/{family}/{device}         retained
    facility/v1/{site}/event/{family}/{device}
    facility/v1/{site}/command/{family}/{device}
    facility/v1/{site}/command-result/{family}/{device}
    facility/v1/{site}/alert/{alert_id}
    facility/v1/{site}/display/{display_id}             retained
    facility/v1/{site}/broadcast/{zone}
    facility/v1/{site}/deadletter/{source}
    facility/v1/{site}/drill/{drill_id}
    facility/v1/{site}/link/{bridge}                    retained; "1" up, "0" down

The link topic is the one Mosquitto writes itself: a site broker's bridge to the centre
publishes "1" there when it connects and leaves "0" as its will (facility/bridge.py).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from enum import StrEnum

from facility.errors import Refused

ROOT = "facility"
VERSION = "v1"
PREFIX = f"{ROOT}/{VERSION}"

# Identifiers that become topic levels and InfluxDB tags: no MQTT wildcards, no '/',
# nothing a shell or a query would need to quote.
ID_PATTERN = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,63}")


class TopicError(Refused):
    """A topic or topic segment that the contract does not allow."""


class Kind(StrEnum):
    TELEMETRY = "telemetry"
    STATUS = "status"
    EVENT = "event"
    COMMAND = "command"
    COMMAND_RESULT = "command-result"
    ALERT = "alert"
    DISPLAY = "display"
    DISPLAY_ACK = "display-ack"
    BROADCAST = "broadcast"
    DEADLETTER = "deadletter"
    DRILL = "drill"
    LINK = "link"  # a site broker's bridge to the centre: "1"/"0", written by Mosquitto


_DEVICE_KINDS = frozenset(
    {Kind.TELEMETRY, Kind.STATUS, Kind.EVENT, Kind.COMMAND, Kind.COMMAND_RESULT}
)


def check_id(value: str, what: str = "identifier") -> str:
    """Return value if it is a legal identifier, else raise TopicError naming it."""
    if not isinstance(value, str) or ID_PATTERN.fullmatch(value) is None:
        raise TopicError(
            f"{what} {value!r} is not a valid identifier "
            "(1-64 of A-Z a-z 0-9 _ . -, starting with a letter or digit)"
        )
    return value


def _device_topic(kind: Kind, site: str, family: str, device: str) -> str:
    check_id(site, "site")
    check_id(family, "family")
    check_id(device, "device")
    return f"{PREFIX}/{site}/{kind}/{family}/{device}"


def telemetry(site: str, family: str, device: str) -> str:
    return _device_topic(Kind.TELEMETRY, site, family, device)


def status(site: str, family: str, device: str) -> str:
    return _device_topic(Kind.STATUS, site, family, device)


def event(site: str, family: str, device: str) -> str:
    return _device_topic(Kind.EVENT, site, family, device)


def command(site: str, family: str, device: str) -> str:
    return _device_topic(Kind.COMMAND, site, family, device)


def command_result(site: str, family: str, device: str) -> str:
    return _device_topic(Kind.COMMAND_RESULT, site, family, device)


def _single(kind: Kind, site: str, name: str, what: str) -> str:
    check_id(site, "site")
    check_id(name, what)
    return f"{PREFIX}/{site}/{kind}/{name}"


def alert(site: str, alert_id: str) -> str:
    return _single(Kind.ALERT, site, alert_id, "alert id")


def display(site: str, display_id: str) -> str:
    return _single(Kind.DISPLAY, site, display_id, "display id")


def display_ack(site: str, display_id: str) -> str:
    return _single(Kind.DISPLAY_ACK, site, display_id, "display id")


def broadcast(site: str, zone: str) -> str:
    return _single(Kind.BROADCAST, site, zone, "zone")


def deadletter(site: str, source: str) -> str:
    return _single(Kind.DEADLETTER, site, source, "source")


def drill(site: str, drill_id: str) -> str:
    return _single(Kind.DRILL, site, drill_id, "drill id")


def link(site: str, bridge: str) -> str:
    """The retained state of a site's bridge to the centre (its notification topic)."""
    return _single(Kind.LINK, site, bridge, "bridge")


def parse_link(topic: str) -> tuple[str, str]:
    """(site, bridge) of a link topic; TopicError for any other topic."""
    parsed = parse(topic)
    if parsed.kind is not Kind.LINK:
        raise TopicError(f"not a link topic: {topic!r}")
    return parsed.site, parsed.name


def device_topic(kind: Kind, site: str, family: str, device: str) -> str:
    """The topic of one device's messages of a device kind (telemetry, status, ...)."""
    if kind not in _DEVICE_KINDS:
        raise TopicError(f"{kind} is not a kind of device message")
    return _device_topic(kind, site, family, device)


def is_kind(topic: str, kind: Kind, site: str | None = None) -> bool:
    """Whether topic is a canonical topic of this kind (and of this site, if given).

    A cheap check of the prefix, site and kind levels only, for dispatching: the rest
    of the topic is checked by parse() where it is used."""
    parts = topic.split("/", 4)
    return (len(parts) == 5 and parts[0] == ROOT and parts[1] == VERSION
            and parts[3] == kind and (site is None or parts[2] == site))


def matches(topic_filter: str, topic: str) -> bool:
    """Whether a topic matches a subscription filter (MQTT 5.0 section 4.7): '+' is one
    level, '#' the rest and its parent level; a filter that starts with a wildcard does
    not match a '$' topic. Vendor mappings route by it (tested against paho-mqtt's)."""
    if topic.startswith("$") and topic_filter[:1] in ("+", "#"):
        return False
    wanted = topic_filter.split("/")
    levels = topic.split("/")
    for i, level in enumerate(wanted):
        if level == "#":
            return True
        if i >= len(levels) or (level != "+" and level != levels[i]):
            return False
    return len(wanted) == len(levels)


def shared(group: str, topic_filter: str) -> str:
    """An MQTT v5 shared subscription: the broker gives each message to one member."""
    return f"$share/{check_id(group, 'shared subscription group')}/{topic_filter}"


ACL_SUBSTITUTIONS = frozenset({"%u", "%c"})  # Mosquitto: the client's user name, its id


def acl_filter(kind: Kind, site: str = "+", *names: str) -> str:
    """A topic filter for Mosquitto's ACL file: like subscription(), levels left out are
    '+', and a name level may also be '%u' or '%c' (substituted by the broker)."""
    width = 2 if kind in _DEVICE_KINDS else 1
    if len(names) > width:
        raise TopicError(f"{kind} topics have {width} name level(s), not {len(names)}")
    levels = [*names, *["+"] * (width - len(names))]
    parts = [PREFIX, _level(site, "site"), str(kind)]
    parts += [n if n in ACL_SUBSTITUTIONS else _level(n, "name") for n in levels]
    return "/".join(parts)


def subscription(kind: Kind, site: str = "+", family: str = "+", device: str = "+") -> str:
    """A subscription filter for one kind of message; '+' leaves a level open."""
    parts = [PREFIX, _level(site, "site"), str(kind)]
    if kind in _DEVICE_KINDS:
        parts += [_level(family, "family"), _level(device, "device")]
    else:
        parts.append(_level(device, "name"))
    return "/".join(parts)


def _level(value: str, what: str) -> str:
    return value if value == "+" else check_id(value, what)


@dataclass(frozen=True, slots=True)
class ParsedTopic:
    kind: Kind
    site: str
    family: str | None
    name: str  # device id for device kinds; alert id, display id, zone or source otherwise


def parse(topic: str) -> ParsedTopic:
    """Split a canonical topic into its parts; raise TopicError for anything else."""
    parts = topic.split("/")
    if len(parts) < 5 or parts[0] != ROOT or parts[1] != VERSION:
        raise TopicError(f"not a {PREFIX} topic: {topic!r}")
    try:
        kind = Kind(parts[3])
    except ValueError:
        raise TopicError(f"unknown message kind {parts[3]!r} in {topic!r}") from None
    site = check_id(parts[2], "site")
    if kind in _DEVICE_KINDS:
        if len(parts) != 6:
            raise TopicError(f"{kind} topic needs family and device: {topic!r}")
        return ParsedTopic(kind, site, check_id(parts[4], "family"), check_id(parts[5], "device"))
    if len(parts) != 5:
        raise TopicError(f"{kind} topic has one name level: {topic!r}")
    return ParsedTopic(kind, site, None, check_id(parts[4], "name"))
