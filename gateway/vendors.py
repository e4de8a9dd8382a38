"""Vendor MQTT payloads to canonical readings and events, by mappings that are data.

A mapping file (config/vendors/<vendor>.yaml; its schema: facility/vendormaps.py) lists
message shapes: the topic filter they arrive on, how to find the device key, the sample
time, the values and the events.
Paths are JMESPath expressions over the document {"topic": [levels...], "payload": {...}}.

`VendorDecoder.decode` is total: whatever the topic and the bytes, it returns an Output or
raises MappingError (the gateway dead-letters the message with the reason). Nothing else
escapes it, and what it returns obeys the message contract.

Dead letter (MappingError): a payload that is over MAX_PAYLOAD, not UTF-8 JSON, nested too
deeply or holds a number beyond a double (1e309); no known device; a required field that
is missing or of the wrong type (a string where a number belongs, a float where an integer
belongs); a sample time that is missing, of the wrong type or does not parse ("yesterday"),
since then the payload is not the shape the mapping describes; an event without a name
from its map or without an id.

Per-value error (the value is left out, the reason goes in the reading's `errors` and the
quality is BAD_VALUE; the other values stay good): a value outside its plausible range, an
enum word the map does not know, a string longer than the contract allows, an integer a
float field cannot hold exactly (|n| > 2**53 and float(n) != n: InfluxDB stores every
number as a float and the value must not be altered), and a scale or offset whose result
is not a finite number. A scaled value is the exact decimal (the payload's number times
the scale plus the offset), then the nearest double, as on the Modbus side; a scaled
integer whose decimal no double holds is a per-value error too. A reading left with no
value at all is a dead letter.

Sample time: a time that parses but lies outside 2000..2200 (a reset clock at 1970, year
9999, a negative number) or more than max_clock_skew ahead of the receive time is a device
clock fault, not a bad reading: the receive time is used and `errors["time"]` says why
(`attrs["time_error"]` on an event, which has no errors); the quality stays as the values
make it. A time older than stale_after marks the reading
STALE.

Identifiers taken from vendor data (event ids): a text that already is a valid id
(facility.topics.ID_PATTERN) is kept as it is, so existing data keeps its ids; any other
text (Chinese, punctuation, empty, too long) becomes `<ascii slug>.<blake2b digest>` of its
UTF-8 bytes (see safe_id): valid, the same in every process, and two different texts give
different ids. An event's vendor text longer than the contract allows is cut to fit
and ends with "…" (the event itself matters more than the end of its text).
"""

from __future__ import annotations

import hashlib
import math
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from decimal import MAX_EMAX, MAX_PREC, MIN_EMIN, Context, Decimal, Inexact, Rounded
from typing import Any
from zoneinfo import ZoneInfo

import msgspec

from facility.errors import Refused
from facility.messages import (
    MAX_STRING_VALUE,
    MAX_TS,
    MIN_TS,
    NAME_PATTERN,
    ContractError,
    Event,
    Family,
    Quality,
    Reading,
    Scalar,
)
from facility.site import Device, SiteConfig
from facility.topics import ID_PATTERN, TopicError
from facility.topics import matches as topic_matches
from facility.vendormaps import MessageSpec, TimeSpec, ValueSpec, VendorMapping, compile_path


class MappingError(Refused):
    """The payload does not fit its vendor mapping; the message says why."""


MAX_PAYLOAD = 64 * 1024  # a device report is a few hundred bytes; more is a bug or an attack


@dataclass
class Output:
    device: Device
    device_id: str
    reading: Reading | None
    events: list[Event] = field(default_factory=list)


@dataclass
class _Compiled:
    spec: MessageSpec
    key: Any
    time: Any | None
    values: list[tuple[str, ValueSpec, Any]]
    event_name: Any | None
    event_id: Any | None
    event_text: Any | None
    event_attrs: list[tuple[str, ValueSpec, Any]]


@dataclass
class _EventParts:
    name: str
    id: str
    attrs: dict[str, Scalar]
    text: str


class VendorDecoder:
    """Decodes one vendor's messages for the devices of one site and gateway."""

    def __init__(self, mapping: VendorMapping, site: SiteConfig, gateway_id: str,
                 clock_ns: Callable[[], int]) -> None:
        self.mapping = mapping
        self.site = site
        self.gateway_id = gateway_id
        self.clock_ns = clock_ns
        self.tz = ZoneInfo(site.site.timezone)
        self.devices = {d.mqtt.key: d for d in site.devices_of(gateway_id)
                        if d.mqtt is not None and d.mqtt.vendor == mapping.vendor}
        self.tags = {d.id: site.base_tags(d) for d in self.devices.values()}
        self.messages = [self._compile(m) for m in mapping.messages]
        self.last_values: dict[tuple[str, str], Scalar] = {}

    @staticmethod
    def _compile(m: MessageSpec) -> _Compiled:
        ev = m.event
        return _Compiled(
            spec=m,
            key=compile_path(m.key),
            time=compile_path(m.time.path) if m.time else None,
            values=[(n, v, compile_path(v.path)) for n, v in m.values.items()],
            event_name=compile_path(ev.name.path) if ev else None,
            event_id=compile_path(ev.id) if ev else None,
            event_text=compile_path(ev.text) if ev and ev.text else None,
            event_attrs=[(n, v, compile_path(v.path)) for n, v in ev.attrs.items()] if ev else [],
        )

    def matches(self, topic: str) -> bool:
        return any(topic_matches(m.spec.topic, topic) for m in self.messages)

    def decode(self, topic: str, payload: bytes, seq: Callable[[], int]) -> Output:
        """The message's reading and events; MappingError (and nothing else) if it does not
        fit. seq is called once per message returned, only when the whole payload fits."""
        compiled = next((m for m in self.messages if topic_matches(m.spec.topic, topic)),
                        None)
        if compiled is None:
            raise MappingError(f"no {self.mapping.vendor} message shape for topic {_show(topic)}")
        if len(payload) > MAX_PAYLOAD:
            raise MappingError(f"payload of {len(payload)} bytes is over {MAX_PAYLOAD}")
        try:
            body = msgspec.json.decode(payload)
        except msgspec.MsgspecError as exc:  # ValidationError: 1e309, ints over 4300 digits
            raise MappingError(f"payload is not JSON: {exc}") from None
        except RecursionError:
            raise MappingError("payload is not JSON: nested too deeply") from None
        doc = {"topic": topic.split("/"), "payload": body}
        key = _search(compiled.key, doc, "device key")
        if not isinstance(key, str) or not key:
            raise MappingError(f"no device key at {compiled.spec.key!r}")
        device = self.devices.get(key)
        if device is None:
            raise MappingError(f"unknown {self.mapping.vendor} device {_show(key)}")
        now = self.clock_ns()
        ts, quality, errors = self._time(compiled, doc, now)
        values: dict[str, Scalar] = {}
        units: dict[str, str] = {}
        for name, spec, expr in compiled.values:
            value, error = _extract(name, spec, expr, doc)
            if error is not None:
                errors[name] = error
                quality = Quality.BAD_VALUE if quality is Quality.GOOD else quality
            elif value is not None:
                values[name] = value
                if spec.unit:
                    units[name] = spec.unit
        if not values and compiled.event_name is None:
            raise MappingError("; ".join(["payload carries none of the mapped values",
                                          *(f"{k}: {v}" for k, v in errors.items())]))
        event = self._event(compiled, doc) if compiled.event_name is not None else None
        if event is not None and "time" in errors:
            event.attrs["time_error"] = errors["time"]  # an event has no errors of its own
        changes = [(name, self.last_values.get((device.id, name)), values[name])
                   for name in compiled.spec.change_events if name in values]
        # Everything fits: only now take sequence numbers and remember values, so a dead
        # letter leaves no gap in seq and no trace in the change detection.
        family = Family(device.family)
        site = self.site.site.id
        out = Output(device, device.id, None)
        try:
            if values:
                out.reading = Reading(
                    site=site, family=family, device=device.id, ts=ts, values=values,
                    units=units, quality=quality, tags=self.tags[device.id],
                    gateway=self.gateway_id, seq=seq(), errors=errors)
            if event is not None:
                out.events.append(Event(
                    site=site, family=family, device=device.id, ts=ts, id=event.id,
                    name=event.name, attrs=event.attrs, text=event.text,
                    gateway=self.gateway_id, seq=seq()))
            for name, previous, current in changes:
                if previous is not None and previous != current:
                    out.events.append(Event(
                        site=site, family=family, device=device.id, ts=ts,
                        id=safe_id(f"{device.id}.{name}.{ts}"), name=f"{name}_change",
                        attrs={"from": previous, "to": current},
                        gateway=self.gateway_id, seq=seq()))
        except (ContractError, TopicError) as exc:  # a check above is missing: still refuse
            raise MappingError(f"output breaks the contract: {exc}") from None
        for name, _, current in changes:
            self.last_values[(device.id, name)] = current
        return out

    def _time(self, compiled: _Compiled, doc: Any, now: int) -> tuple[int, Quality, dict[str, str]]:
        spec = compiled.spec.time
        if spec is None:
            return now, Quality.GOOD, {}
        raw = _search(compiled.time, doc, "time")
        ts = _parse_time(raw, spec, self.tz)
        if ts is None:
            why = f"device time {_show(raw)} is outside 2000..2200; receive time used"
            return now, Quality.GOOD, {"time": why}
        if ts > now + int(self.mapping.max_clock_skew * 1e9):
            ahead = (ts - now) / 1e9
            why = f"device clock {ahead:.0f}s ahead; receive time used"
            return now, Quality.GOOD, {"time": why}
        if now - ts > self.mapping.stale_after * 1e9:
            return ts, Quality.STALE, {}
        return ts, Quality.GOOD, {}

    def _event(self, compiled: _Compiled, doc: Any) -> _EventParts:
        spec = compiled.spec.event
        assert spec is not None
        name, error = _extract("event", spec.name, compiled.event_name, doc)
        if error is not None or not isinstance(name, str):
            raise MappingError(f"event name: {error or 'missing'}")
        if NAME_PATTERN.fullmatch(name) is None:
            raise MappingError(f"event name {_show(name)} is not a lower snake case name")
        raw_id = _search(compiled.event_id, doc, "event id")
        if isinstance(raw_id, bool) or not isinstance(raw_id, str | int) or raw_id == "":
            raise MappingError(f"no event id at {spec.id!r}")
        attrs: dict[str, Scalar] = {}
        for attr, vspec, expr in compiled.event_attrs:
            value, error = _extract(attr, vspec, expr, doc)
            if error is not None:
                raise MappingError(f"event attribute {attr!r}: {error}")
            if value is not None:
                attrs[attr] = value
        text = _search(compiled.event_text, doc, "event text") if compiled.event_text else ""
        text = text if isinstance(text, str) else ""
        if len(text) > MAX_STRING_VALUE:
            text = text[:MAX_STRING_VALUE - 1] + "…"
        return _EventParts(name=name, id=safe_id(_int_text(raw_id)), attrs=attrs, text=text)


_SLUG_DROP = re.compile(r"[^A-Za-z0-9_.-]+")
_DIGEST_BYTES = 10  # 80 bits: 20 hex digits, leaving 43 characters of readable slug


def safe_id(text: str) -> str:
    """A valid identifier for any text: the text itself when it already is one, else an
    ASCII slug of it and a digest of its UTF-8 bytes (stable across processes, and
    different texts give different ids)."""
    if ID_PATTERN.fullmatch(text) is not None:
        return text
    digest = hashlib.blake2b(text.encode("utf-8", "surrogatepass"),
                             digest_size=_DIGEST_BYTES).hexdigest()
    slug = _SLUG_DROP.sub("_", text).lstrip("_.-")[:63 - 2 * _DIGEST_BYTES]
    return f"{slug}.{digest}" if slug else digest


def _int_text(value: str | int) -> str:
    if isinstance(value, str):
        return value
    try:
        return str(value)
    except ValueError:  # over sys.get_int_max_str_digits() (msgspec refuses those anyway)
        return hex(value)  # power-of-two bases have no digit limit


def _show(raw: Any, limit: int = 60) -> str:
    """A short repr for reasons: a value from the payload may be 64 KiB."""
    try:
        text = repr(raw)
    except ValueError:  # an int over the str() digit limit
        text = f"<integer of {raw.bit_length()} bits>"
    return _cut(text, limit)


def _cut(text: str, limit: int = 200) -> str:
    return text if len(text) <= limit else text[:limit - 1] + "…"


def _search(expr: Any, doc: Any, what: str) -> Any:
    # join() on a number and the like raise JMESPathTypeError (a ValueError); to_string()
    # of a deeply nested value can exhaust the stack.
    try:
        return expr.search(doc)
    except (ValueError, RecursionError) as exc:
        raise MappingError(f"{what}: {_cut(str(exc))}") from None


_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


def _parse_time(raw: Any, spec: TimeSpec, tz: ZoneInfo) -> int | None:
    """Nanoseconds; None for a time that parses but is outside MIN_TS..MAX_TS.

    Raises MappingError for a time of the wrong type or one that does not parse."""
    number = isinstance(raw, int | float) and not isinstance(raw, bool)
    if spec.format in ("unix_s", "unix_ms") and number:
        per = 1_000_000_000 if spec.format == "unix_s" else 1_000_000
        if isinstance(raw, float):
            # Compare before scaling: 1e300 * 1e9 is inf, and int(inf) raises.
            if not MIN_TS / per <= raw <= MAX_TS / per:
                return None
            ts = int(Decimal(repr(raw)) * per)  # exact: 1795828502.123 is .123 s, not .1229998
        else:
            ts = raw * per
        return ts if MIN_TS <= ts <= MAX_TS else None
    if spec.format not in ("iso8601", "local") or not isinstance(raw, str):
        raise MappingError(f"time at {spec.path!r} is {_show(raw)}, not {spec.format}")
    try:
        parsed = datetime.fromisoformat(raw) if spec.format == "iso8601" \
            else datetime.strptime(raw, spec.local_format)
        if parsed.tzinfo is None:
            parsed = parsed.replace(tzinfo=tz)
        delta = parsed - _EPOCH
    except (ValueError, OverflowError) as exc:
        raise MappingError(f"time at {spec.path!r}: {_cut(str(exc))}") from None
    ts = (delta.days * 86_400 + delta.seconds) * 1_000_000_000 + delta.microseconds * 1000
    return ts if MIN_TS <= ts <= MAX_TS else None


_EXACT = 2**53  # every integer up to this is a float exactly


def _exact_as_float(value: int) -> bool:
    if -_EXACT <= value <= _EXACT:
        return True
    try:
        return float(value) == value
    except OverflowError:
        return False


# Enough precision that a product and a sum are never rounded (Inexact would raise).
_DECIMAL = Context(prec=MAX_PREC, Emax=MAX_EMAX, Emin=MIN_EMIN, traps=[Inexact, Rounded])


def _scaled(raw: int | float, spec: ValueSpec) -> tuple[float, str | None]:
    """raw × scale + offset as exact decimals (6890 × 0.001 is 6.89, not 6.890000000000001,
    as on the Modbus side), then the nearest double; (nan, why) if that cannot be stored."""
    number = Decimal(raw) if isinstance(raw, int) else Decimal(repr(raw))
    exact = _DECIMAL.add(_DECIMAL.multiply(number, Decimal(repr(spec.scale))),
                         Decimal(repr(spec.offset)))
    value = float(exact)  # correctly rounded; inf beyond the double range, no exception
    if not math.isfinite(value):
        return math.nan, f"{_show(raw)} scaled is not a finite number"
    # A scaled integer is an exact decimal: one a double cannot hold is refused, not rounded.
    if isinstance(raw, int) and Decimal(repr(value)) != exact:
        return math.nan, f"{_show(raw)} scaled has more digits than a float field holds"
    return value, None


def _extract(name: str, spec: ValueSpec, expr: Any, doc: Any) -> tuple[Scalar | None, str | None]:
    """(value, None); (None, None) for an absent optional value; (None, reason) for a bad one.

    Raises MappingError when a required value is missing or has the wrong type.
    """
    raw = _search(expr, doc, name)
    if raw is None:
        if spec.optional:
            return None, None
        raise MappingError(f"{name}: nothing at {spec.path!r}")
    if spec.bit is not None:
        if not isinstance(raw, int) or isinstance(raw, bool):
            raise MappingError(f"{name}: {spec.path!r} is {_show(raw)}, not an integer")
        return bool((raw >> spec.bit) & 1), None
    if spec.type == "bool":
        if isinstance(raw, bool):
            return raw, None
        if type(raw) is int and raw in (0, 1):
            return bool(raw), None
        raise MappingError(f"{name}: {spec.path!r} is {_show(raw)}, not a boolean")
    if spec.type == "string":
        if not isinstance(raw, str):
            raise MappingError(f"{name}: {spec.path!r} is {_show(raw)}, not a string")
        if spec.map is not None:
            if raw not in spec.map:
                return None, f"unknown value {_show(raw)}"
            return spec.map[raw], None
        if len(raw) > MAX_STRING_VALUE:
            return None, f"text of {len(raw)} characters is over {MAX_STRING_VALUE}"
        return raw, None
    if isinstance(raw, bool) or not isinstance(raw, int | float):
        raise MappingError(f"{name}: {spec.path!r} is {_show(raw)}, not a number")
    if spec.type == "integer" and not isinstance(raw, int):
        raise MappingError(f"{name}: {spec.path!r} is {_show(raw)}, not an integer")
    if isinstance(raw, int) and not _exact_as_float(raw):
        return None, f"integer {_show(raw)} cannot be stored exactly (as a float)"
    if not math.isfinite(raw):
        return None, "not a finite number"
    value: int | float = raw
    if (spec.scale, spec.offset) != (1.0, 0.0):
        value, error = _scaled(raw, spec)
        if error is not None:
            return None, error
    if spec.valid is not None and not spec.valid[0] <= value <= spec.valid[1]:
        return None, f"{_show(value)} outside plausible range {list(spec.valid)}"
    return value, None
