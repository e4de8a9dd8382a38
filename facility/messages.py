"""The canonical message contract, version 1.

Every service builds and reads messages through these frozen structs; each one checks
itself when it is built or decoded, so a bad message fails at its edge with a reason.
Payloads on the wire are JSON (UTF-8). Times are integer nanoseconds since the Unix epoch.
"""

from __future__ import annotations

import base64
import re
from enum import StrEnum
from functools import lru_cache
from typing import Annotated, Any, TypeVar

import msgspec

from facility.errors import Refused
from facility.lineprotocol import MAX_EXACT_INT, exact_as_float
from facility.scalar import Scalar as Scalar  # re-exported: the contract's value type
from facility.topics import check_id

SCHEMA_VERSION = 1


# Value, tag and parameter names: lower snake case, so they are safe as InfluxDB field
# and tag keys and in InfluxQL without quoting.
NAME_PATTERN = re.compile(r"[a-z][a-z0-9_]{0,63}")
# Names the storage layer uses itself; a device value may not take them.
RESERVED_VALUE_NAMES = frozenset({"time", "quality", "seq", "gateway"})
RESERVED_TAG_NAMES = frozenset({"time", "device", "site", "family", "gateway"})
MAX_TAG_VALUE = 256
MAX_STRING_VALUE = 4096
# 2000-01-01 .. 2200-01-01: anything outside is a clock or unit error, not a reading.
MIN_TS = 946_684_800 * 10**9
MAX_TS = 7_258_118_400 * 10**9


class Family(StrEnum):
    BOLLARD = "bollard"
    ENERGY = "energy"
    FIRE = "fire"
    EV_CHARGER = "ev_charger"
    DRAINAGE = "drainage"
    GAS = "gas"
    GATEWAY = "gateway"


class Quality(StrEnum):
    GOOD = "good"
    STALE = "stale"  # the device's own sample time is older than its freshness limit
    COMM_FAILURE = "comm_failure"  # no answer: transport failure or timeout
    DEVICE_ERROR = "device_error"  # the device answered with an exception
    BAD_VALUE = "bad_value"  # answered, but a value was out of range or not a number


class Availability(StrEnum):
    ONLINE = "online"
    OFFLINE = "offline"


class CommandStatus(StrEnum):
    ACCEPTED = "accepted"  # the gateway took it and is acting on it
    DONE = "done"  # the device's feedback confirms the target state
    REFUSED = "refused"  # interlock, mode or policy refused it; nothing moved
    FAILED = "failed"  # the write or the device failed
    TIMED_OUT = "timed_out"  # written, but feedback did not confirm in time
    EXPIRED = "expired"  # arrived after its validity; not executed
    DUPLICATE = "duplicate"  # this command id was already executed


class ContractError(Refused):
    """A message that breaks the contract."""


@lru_cache(maxsize=8192)
def check_name(name: str, what: str = "name") -> str:
    if not isinstance(name, str) or NAME_PATTERN.fullmatch(name) is None:
        raise ContractError(f"{what} {name!r} must match {NAME_PATTERN.pattern}")
    return name


def _check_ts(ts: int, what: str = "ts") -> None:
    if not MIN_TS <= ts <= MAX_TS:
        raise ContractError(f"{what} {ts} is not nanoseconds between 2000 and 2200")


def _check_scalar(name: str, value: Scalar) -> None:
    if type(value) is float:
        if value - value != 0.0:  # inf - inf and nan - nan are nan
            raise ContractError(f"value {name!r} is {value}, not a finite number")
    elif type(value) is str and len(value) > MAX_STRING_VALUE:
        raise ContractError(f"value {name!r} is longer than {MAX_STRING_VALUE} characters")
    elif type(value) is int and not -MAX_EXACT_INT <= value <= MAX_EXACT_INT \
            and not exact_as_float(value):
        raise ContractError(f"value {name!r} is {value}, which a float field cannot hold "
                            "exactly")


@lru_cache(maxsize=8192)
def _check_names(names: tuple[str, ...], reserved: frozenset[str]) -> None:
    # A device sends the same set of names every time: check each set once.
    for name in names:
        check_name(name, "value name")
        if name in reserved:
            raise ContractError(f"value name {name!r} is reserved")


def _check_values(values: dict[str, Scalar], reserved: frozenset[str]) -> None:
    _check_names(tuple(values), reserved)
    for name, value in values.items():
        _check_scalar(name, value)


@lru_cache(maxsize=8192)
def _check_tag_items(items: tuple[tuple[str, str], ...]) -> None:
    for key, value in items:
        check_name(key, "tag name")
        if key in RESERVED_TAG_NAMES:
            raise ContractError(f"tag name {key!r} is reserved")
        if not value or len(value) > MAX_TAG_VALUE:
            raise ContractError(f"tag {key!r} must be 1..{MAX_TAG_VALUE} characters")


def _check_tags(tags: dict[str, str]) -> None:
    if tags:
        _check_tag_items(tuple(tags.items()))


@lru_cache(maxsize=65536)
def _check_source(site: str, device: str, gateway: str) -> None:
    check_id(site, "site")
    check_id(device, "device")
    if gateway:
        check_id(gateway, "gateway")


def _check_version(v: int) -> None:
    if v != SCHEMA_VERSION:
        raise ContractError(f"schema version {v} is not supported (this is v{SCHEMA_VERSION})")


class Reading(msgspec.Struct, frozen=True, kw_only=True):
    """One sample of a device: its values with units, and how far to trust them."""

    site: str
    family: Family
    device: str
    ts: int
    values: dict[str, Scalar]
    units: dict[str, str] = {}
    quality: Quality = Quality.GOOD
    tags: dict[str, str] = {}
    gateway: str = ""
    seq: int = 0  # per-gateway sequence number, to count loss end to end
    errors: dict[str, str] = {}  # values left out of this reading, and why
    drill: str = ""  # the drill (演练) this reading belongs to, when a drill caused it
    v: int = SCHEMA_VERSION

    def __post_init__(self) -> None:
        # The hot path of every service: what repeats per device is checked once (cached).
        if self.v != SCHEMA_VERSION:
            _check_version(self.v)
        _check_source(self.site, self.device, self.gateway)
        if not MIN_TS <= self.ts <= MAX_TS:
            _check_ts(self.ts)
        _check_values(self.values, RESERVED_VALUE_NAMES)
        _check_tags(self.tags)
        if self.units and not self.units.keys() <= self.values.keys():
            extra = sorted(self.units.keys() - self.values.keys())
            raise ContractError(f"unit given for {extra[0]!r}, which has no value")
        if not self.values and self.quality is Quality.GOOD:
            raise ContractError("a good reading must carry at least one value")


class DeviceStatus(msgspec.Struct, frozen=True, kw_only=True):
    """Whether a device (or a gateway) is reachable. Published retained."""

    site: str
    family: Family
    device: str
    ts: int
    state: Availability
    reason: str = ""
    gateway: str = ""
    v: int = SCHEMA_VERSION

    def __post_init__(self) -> None:
        _check_version(self.v)
        check_id(self.site, "site")
        check_id(self.device, "device")
        if self.gateway:
            check_id(self.gateway, "gateway")
        _check_ts(self.ts)


class Event(msgspec.Struct, frozen=True, kw_only=True):
    """A discrete happening reported by a device: fire alarm, fault, restore."""

    site: str
    family: Family
    device: str
    ts: int
    id: str  # unique per event, so a redelivered event is recognised
    name: str  # e.g. fire_alarm, pre_alarm, fault, restore, status_change
    attrs: dict[str, Scalar] = {}
    text: str = ""  # the vendor's own message, often Chinese
    gateway: str = ""
    seq: int = 0
    drill: str = ""  # the drill (演练) this event belongs to, when a drill caused it
    v: int = SCHEMA_VERSION

    def __post_init__(self) -> None:
        _check_version(self.v)
        check_id(self.site, "site")
        check_id(self.device, "device")
        check_id(self.id, "event id")
        check_name(self.name, "event name")
        if self.gateway:
            check_id(self.gateway, "gateway")
        _check_ts(self.ts)
        _check_values(self.attrs, frozenset())
        if len(self.text) > MAX_STRING_VALUE:
            raise ContractError("event text is too long")


class Command(msgspec.Struct, frozen=True, kw_only=True):
    """An order to a device, e.g. raise a bollard. Valid only until expires_at."""

    id: str
    site: str
    family: Family
    device: str
    action: str
    issued_at: int
    expires_at: int
    issued_by: str
    reason: str
    params: dict[str, Scalar] = {}
    approved_by: str = ""
    v: int = SCHEMA_VERSION

    def __post_init__(self) -> None:
        _check_version(self.v)
        check_id(self.id, "command id")
        check_id(self.site, "site")
        check_id(self.device, "device")
        check_name(self.action, "action")
        _check_ts(self.issued_at, "issued_at")
        _check_ts(self.expires_at, "expires_at")
        if self.expires_at <= self.issued_at:
            raise ContractError("a command must expire after it is issued")
        if not self.issued_by:
            raise ContractError("a command must say who issued it")
        if not self.reason.strip():
            raise ContractError("a command must carry a reason")
        _check_values(self.params, frozenset())


class CommandResult(msgspec.Struct, frozen=True, kw_only=True):
    id: str  # the command's id
    site: str
    family: Family
    device: str
    ts: int
    status: CommandStatus
    detail: str = ""
    gateway: str = ""
    v: int = SCHEMA_VERSION

    def __post_init__(self) -> None:
        _check_version(self.v)
        check_id(self.id, "command id")
        check_id(self.site, "site")
        check_id(self.device, "device")
        _check_ts(self.ts)


class DeadLetter(msgspec.Struct, frozen=True, kw_only=True):
    """A message a service could not use, with the reason, kept for a person to read."""

    source: str  # the service that refused it
    ts: int
    topic: str
    reason: str
    payload: str  # UTF-8 text, or base64 when payload_encoding says so
    payload_encoding: str = "utf-8"
    size: int = 0
    v: int = SCHEMA_VERSION

    MAX_KEPT = 16 * 1024

    @classmethod
    def of(cls, source: str, ts: int, topic: str, reason: str, raw: bytes) -> DeadLetter:
        kept = raw[: cls.MAX_KEPT]
        try:
            text, encoding = kept.decode("utf-8"), "utf-8"
        except UnicodeDecodeError:
            text, encoding = base64.b64encode(kept).decode("ascii"), "base64"
        return cls(
            source=source,
            ts=ts,
            topic=topic,
            reason=reason[:1024],
            payload=text,
            payload_encoding=encoding,
            size=len(raw),
        )


_encoder = msgspec.json.Encoder()
_decoders: dict[type[Any], msgspec.json.Decoder[Any]] = {}

M = TypeVar("M")


def encode(message: msgspec.Struct) -> bytes:
    return _encoder.encode(message)


def decode(payload: bytes | str, kind: type[M]) -> M:
    """Decode and validate; raise ContractError with the reason for any bad payload."""
    decoder = _decoders.get(kind)
    if decoder is None:
        decoder = _decoders[kind] = msgspec.json.Decoder(kind)
    try:
        decoded: M = decoder.decode(payload)  # the cache holds each kind's own decoder
        return decoded
    except (msgspec.ValidationError, msgspec.DecodeError) as exc:
        version = _version_of(payload)
        if version is not None and version != SCHEMA_VERSION:
            raise ContractError(f"schema version {version} is not supported "
                                f"(this is v{SCHEMA_VERSION})") from None
        raise ContractError(str(exc)) from None


class _Envelope(msgspec.Struct):
    v: int = SCHEMA_VERSION


def _version_of(payload: bytes | str) -> int | None:
    """The schema version a payload claims, when decoding it failed (for a clear reason)."""
    try:
        return msgspec.json.decode(payload, type=_Envelope).v
    except (msgspec.ValidationError, msgspec.DecodeError):
        return None


def to_builtins(message: msgspec.Struct) -> dict[str, Any]:
    result = msgspec.to_builtins(message)
    assert isinstance(result, dict)
    return result


# --- Readings decoded on the hot path (rules engine, issue 14) --------------------------------
# Additive: the contract above is unchanged. Reading.__post_init__ checks every value in
# Python (finite, string length, integer range): about half of a reading's decoding.
# WireReading has msgspec check those in C while decoding, with bounds at least as strict
# as the contract's (JSON has no NaN or Infinity, and msgspec refuses a number beyond a
# float), and checks the rest as Reading does. Whatever it refuses, decode_reading() gives
# to decode(payload, Reading): the contract decides, with its own reason (an integer above
# 2**53 that a float holds exactly is allowed there, not here).
# tests/test_messages_wire.py holds the two to the same answers.

_WireScalar = (bool | Annotated[int, msgspec.Meta(ge=-MAX_EXACT_INT, le=MAX_EXACT_INT)] | float
               | Annotated[str, msgspec.Meta(max_length=MAX_STRING_VALUE)])


class WireReading(Reading, frozen=True, kw_only=True):
    """A Reading decoded by decode_reading(): the same fields and checks."""

    ts: Annotated[int, msgspec.Meta(ge=MIN_TS, le=MAX_TS)]
    values: dict[str, _WireScalar]

    def __post_init__(self) -> None:
        # Reading's checks less the per-value ones, which the types above did.
        if self.v != SCHEMA_VERSION:
            _check_version(self.v)
        _check_source(self.site, self.device, self.gateway)
        _check_names(tuple(self.values), RESERVED_VALUE_NAMES)
        _check_tags(self.tags)
        if self.units and not self.units.keys() <= self.values.keys():
            raise ContractError("unit for a value it does not carry")  # decode() says which
        if not self.values and self.quality is Quality.GOOD:
            raise ContractError("a good reading must carry at least one value")


_wire_decoder = msgspec.json.Decoder(WireReading)


def decode_reading(payload: bytes | str) -> Reading:
    """decode(payload, Reading), at about half the cost for a reading that keeps the
    contract; the same ContractError (from decode itself) for one that does not."""
    try:
        reading: Reading = _wire_decoder.decode(payload)
        return reading
    except (msgspec.ValidationError, msgspec.DecodeError):
        return decode(payload, Reading)


# --- Alerts, display and broadcast messages (rules engine, issue 3) -------------------------
# Appended; the structs above are unchanged. Topics: alert/{alert_id} (AlertMessage),
# display/{display_id} retained (DisplayMessage), display-ack/{endpoint_id} (DisplayAck),
# broadcast/{pa_zone} (Broadcast), command/alert/{target} (AlertOperation) and
# command-result/alert/{target} (AlertOperationResult).


class Severity(StrEnum):
    """ThingsBoard's alarm severities; `info` is a report item, never a siren."""

    CRITICAL = "critical"
    MAJOR = "major"
    MINOR = "minor"
    WARNING = "warning"
    INFO = "info"


SEVERITY_RANK = {Severity.CRITICAL: 5, Severity.MAJOR: 4, Severity.MINOR: 3,
                 Severity.WARNING: 2, Severity.INFO: 1}


class AlertState(StrEnum):
    """ISA-18.2 / IEC 62682 alarm states (the 'effective' state an operator sees)."""

    NORMAL = "normal"  # condition clear and acknowledged: the alert is closed
    ACTIVE_UNACK = "active_unack"  # unacknowledged alarm
    ACTIVE_ACK = "active_ack"  # acknowledged alarm
    RTN_UNACK = "rtn_unack"  # returned to normal, unacknowledged
    SHELVED = "shelved"  # temporarily removed from service by an operator, with an expiry
    SUPPRESSED = "suppressed"  # suppressed by design: maintenance, topology, a parent alarm
    OUT_OF_SERVICE = "out_of_service"  # removed from service (repair), by a person


class AlertMessage(msgspec.Struct, frozen=True, kw_only=True):
    """One state change of an alert, published on alert/{alert_id} (QoS 1).

    `source` is what the alert is about: a device, a gateway, a place (correlation rules)
    or an output endpoint. `active` is the process condition; `acknowledged` the
    operator's; `state` the ISA-18.2 state derived from both and from shelving and
    suppression."""

    id: str
    site: str
    rule: str
    source: str
    ts: int
    state: AlertState
    active: bool
    acknowledged: bool
    severity: Severity
    priority: int  # 1 most urgent .. 5
    transition: str  # raised, acknowledged, cleared, shelved, escalated, ...
    family: str = ""
    place: str = ""
    zone: str = ""
    incident: str = ""
    title: str = ""
    text: str = ""
    value: Scalar | None = None
    raised_at: int = 0
    by: str = ""  # who caused this transition, for operator actions
    comment: str = ""
    shelved_until: int = 0
    suppressed_by: str = ""
    escalation: int = 0  # escalation level reached (0: not escalated)
    escalated_to: str = ""
    chattering: bool = False
    category: str = ""  # alarm (annunciated) or report
    late_s: int = 0  # raised by an input this many seconds old (a backlog after an outage)
    # The highest level the alert reached (kept until it closes); `severity` and `value`
    # are the level and value now. None/0 from a sender before these fields.
    peak_severity: Severity | None = None
    peak_priority: int = 0
    drill: str = ""  # raised by a drill (演练): its id; empty for a real alert
    v: int = SCHEMA_VERSION

    def __post_init__(self) -> None:
        _check_version(self.v)
        check_id(self.id, "alert id")
        check_id(self.site, "site")
        check_id(self.rule, "rule id")
        check_id(self.source, "source")
        _check_ts(self.ts)
        if not 1 <= self.priority <= 5:
            raise ContractError(f"priority {self.priority} is not 1..5")
        if self.value is not None:
            _check_scalar("value", self.value)


class DisplayKind(StrEnum):
    NORMAL = "normal"  # the screen's ordinary content
    ALERT = "alert"  # an alert below emergency level
    EMERGENCY = "emergency"  # pre-empts everything below it
    ALL_CLEAR = "all_clear"


class DisplayMessage(msgspec.Struct, frozen=True, kw_only=True):
    """What one screen or terminal must show now; retained on display/{display_id}.

    A new `id` is new content; the same id re-sent (a retry) must not be shown twice."""

    id: str
    site: str
    display: str
    ts: int
    kind: DisplayKind
    priority: int  # 1 most urgent .. 9 (normal content)
    text: str
    short_text: str = ""
    title: str = ""
    colour: str = ""  # red, orange, yellow, blue, green, white; empty: the screen's default
    incident: str = ""
    alert: str = ""
    drill: str = ""  # a drill's (演练) message: its id; the text says 演练 too
    v: int = SCHEMA_VERSION

    def __post_init__(self) -> None:
        _check_version(self.v)
        check_id(self.id, "message id")
        check_id(self.site, "site")
        check_id(self.display, "display id")
        _check_ts(self.ts)
        if not 1 <= self.priority <= 9:
            raise ContractError(f"priority {self.priority} is not 1..9")
        if len(self.text) > MAX_STRING_VALUE:
            raise ContractError("display text is too long")


class Broadcast(msgspec.Struct, frozen=True, kw_only=True):
    """A public-address announcement (text to speech) for one PA zone, on broadcast/{zone}."""

    id: str
    site: str
    zone: str  # the PA zone (an endpoint id of kind pa_zone)
    ts: int
    kind: DisplayKind
    priority: int
    text: str  # what the text-to-speech says
    repeat: int = 1
    chime: bool = True
    incident: str = ""
    alert: str = ""
    drill: str = ""  # a drill's (演练) announcement: its id; the text says 演练 too
    v: int = SCHEMA_VERSION

    def __post_init__(self) -> None:
        _check_version(self.v)
        check_id(self.id, "broadcast id")
        check_id(self.site, "site")
        check_id(self.zone, "zone")
        _check_ts(self.ts)
        if not 1 <= self.priority <= 9:
            raise ContractError(f"priority {self.priority} is not 1..9")
        if not 1 <= self.repeat <= 10:
            raise ContractError(f"repeat {self.repeat} is not 1..10")
        if not self.text.strip():
            raise ContractError("a broadcast needs text")


class AckStatus(StrEnum):
    SHOWN = "shown"  # on screen (or announced, for a PA zone) now
    DUPLICATE = "duplicate"  # this id was already shown or announced; not repeated
    REJECTED = "rejected"  # the endpoint cannot show it (detail says why)


class DisplayAck(msgspec.Struct, frozen=True, kw_only=True):
    """An endpoint confirms a DisplayMessage or Broadcast, on display-ack/{endpoint_id}."""

    site: str
    endpoint: str
    message: str  # the DisplayMessage or Broadcast id
    ts: int
    status: AckStatus = AckStatus.SHOWN
    detail: str = ""
    v: int = SCHEMA_VERSION

    def __post_init__(self) -> None:
        _check_version(self.v)
        check_id(self.site, "site")
        check_id(self.endpoint, "endpoint id")
        check_id(self.message, "message id")
        _check_ts(self.ts)


class AlertAction(StrEnum):
    ACKNOWLEDGE = "acknowledge"
    COMMENT = "comment"
    SHELVE = "shelve"
    UNSHELVE = "unshelve"
    OUT_OF_SERVICE = "out_of_service"
    RETURN_TO_SERVICE = "return_to_service"
    MAINTENANCE = "maintenance"  # a device in maintenance: its alerts suppressed by design
    END_MAINTENANCE = "end_maintenance"
    SET_CONTENT = "set_content"  # a screen's normal content
    SHOW_MESSAGE = "show_message"  # a manual message on a screen, with a priority
    WITHDRAW_MESSAGE = "withdraw_message"  # the manual message goes; the screen moves on
    RELOAD = "reload"  # re-read the rule files


class AlertOperation(msgspec.Struct, frozen=True, kw_only=True):
    """An operator's action, on command/alert/{target} (target: alert id, device id or
    endpoint id; 'rules' for reload). The result comes on command-result/alert/{target}."""

    id: str
    site: str
    action: AlertAction
    target: str
    by: str
    ts: int
    comment: str = ""
    until: int = 0  # shelve and maintenance expiry (ns)
    text: str = ""  # set_content, show_message
    priority: int = 0  # show_message: 1 most urgent .. 9, like automatic messages
    v: int = SCHEMA_VERSION

    def __post_init__(self) -> None:
        _check_version(self.v)
        check_id(self.id, "operation id")
        check_id(self.site, "site")
        check_id(self.target, "target")
        _check_ts(self.ts)
        if not self.by.strip():
            raise ContractError("an operation must say who did it")
        if self.action is AlertAction.SHOW_MESSAGE and (
                not 1 <= self.priority <= 9 or not self.text.strip()):
            raise ContractError("a manual message needs text and a priority 1..9")
        if self.until:
            _check_ts(self.until, "until")


class AlertOperationResult(msgspec.Struct, frozen=True, kw_only=True):
    id: str  # the operation's id
    site: str
    target: str
    ts: int
    ok: bool
    detail: str = ""
    state: str = ""  # the alert's state after the operation, when it names an alert
    v: int = SCHEMA_VERSION


# --- Drills (演练, issue 16) ------------------------------------------------------------------
# Appended; a compatible v1 change: the optional `drill` fields above default to "" (a real
# message) and a v1 reader that predates them ignores them. Topic: drill/{drill_id}.


class DrillScenario(StrEnum):
    FIRE = "fire"  # a fire at a place: detectors, the panel, the electrical-fire monitors
    RAINSTORM = "rainstorm"  # heavy rain: a drain floods, pumps start
    GATEWAY_LOSS = "gateway-loss"  # a gateway loses its devices (their link is cut)
    BOLLARD_FAULT = "bollard-fault"  # a south-gate bollard faults


class Drill(msgspec.Struct, frozen=True, kw_only=True):
    """A drill (演练) started by a person, on drill/{id}: the simulators play its scenario,
    and the rules engine marks every alert of its `sources` or `places` raised while it
    lasts (until `ends_at`) as this drill's, so its screens and PA say 演练."""

    id: str
    site: str
    scenario: DrillScenario
    ts: int  # when it was started
    ends_at: int  # the scenario stops (the fire is out, the link is back) at this time
    by: str
    place: str = ""  # where it happens (fire, rainstorm), or the gateway / bollard
    sources: list[str] = []  # the devices (and gateways) whose alerts belong to the drill
    places: list[str] = []  # the places whose alerts (correlations) belong to it
    params: dict[str, Scalar] = {}
    v: int = SCHEMA_VERSION

    def __post_init__(self) -> None:
        _check_version(self.v)
        check_id(self.id, "drill id")
        check_id(self.site, "site")
        _check_ts(self.ts)
        _check_ts(self.ends_at, "ends_at")
        if self.ends_at <= self.ts:
            raise ContractError("a drill must end after it starts")
        if not self.by.strip():
            raise ContractError("a drill must say who started it")
        for item in (*self.sources, *self.places):
            check_id(item, "drill source")
        _check_values(self.params, frozenset())
