"""Hypothesis properties of the vendor decoder, per message shape of every vendor mapping.

Stored or refused: from a valid payload, any field the mapping reads replaced by any JSON
(huge integers, inf, NaN, subnormals, Unicode), or the payload replaced by any bytes, gives
readings and events that obey the contract, or a MappingError; never another exception.
Beside it, the positive property: valid field values (plausible ranges, known enum words,
fresh times) give exactly the values sent (times the scale), so refusing everything fails.
"""

from __future__ import annotations

import contextlib
import itertools
import json
import math
import os
import re
import subprocess
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any
from zoneinfo import ZoneInfo

import msgspec
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from paho.mqtt.client import topic_matches_sub

from facility import messages as m
from facility.site import load_site
from facility.topics import ID_PATTERN
from facility.vendormaps import MessageSpec, ValueSpec, VendorMapping, load_vendors
from gateway.vendors import MappingError, Output, VendorDecoder, safe_id
from tests.conftest import REPO, SITE_FILE

VENDORS = load_vendors(REPO / "config" / "vendors")
SITE = load_site(SITE_FILE)
NOW = 1_795_828_512 * 10**9  # 2026-11-28 01:15:12 UTC
CAMPUS = ZoneInfo("Asia/Shanghai")
PROPS = settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])

Path = tuple[str | int, ...]  # keys and list indexes into the payload


@dataclass
class Shape:
    """A valid message of one shape, and where in it the mapping reads."""

    vendor: str
    name: str
    topic: str
    base: dict[str, Any]
    writes: dict[str, Path]  # value (or event part) name -> where it is written
    time: Path
    key: Path | None = None  # the device key, when it is in the payload
    also_read: list[Path] = field(default_factory=list)  # containers the paths go through

    def reads(self) -> list[Path]:
        return [*self.writes.values(), self.time, *([self.key] if self.key else []),
                *self.also_read]


LOCAL = "2026-11-28 09:15:02"
GST_EVENT = {"panel": "FP-EB", "evt": "FAULT", "evtNo": 10235, "desc": "主电故障",
             "time": LOCAL}
EVENT_WRITES: dict[str, Path] = {"event": ("evt",), "panel": ("panel",), "number": ("evtNo",),
                                 "text": ("desc",)}
SHAPES = [
    Shape("gst-fire", "detector data", "gst/FP-EB/1/3/data",
          {"panel": "FP-EB", "loop": 1, "addr": 3, "devType": "SMOKE", "smoke": 0.021,
           "temp": 26.4, "state": "NORMAL", "time": LOCAL},
          {"smoke": ("smoke",), "temperature": ("temp",), "state": ("state",)}, ("time",)),
    Shape("gst-fire", "detector event", "gst/FP-EB/1/3/event",
          {**GST_EVENT, "loop": 1, "addr": 3}, EVENT_WRITES, ("time",)),
    Shape("gst-fire", "panel status", "gst/FP-EB/status",
          {"panel": "FP-EB", "alarmCount": 1, "faultCount": 0, "mainPower": 1,
           "backupPower": 1, "state": "ALARM", "time": LOCAL},
          {"state": ("state",), "alarm_count": ("alarmCount",), "fault_count": ("faultCount",),
           "main_power": ("mainPower",), "backup_power": ("backupPower",)}, ("time",)),
    Shape("gst-fire", "panel event", "gst/FP-EB/event", GST_EVENT, EVENT_WRITES, ("time",)),
    Shape("acrel-efm", "monitor report", "acrel/ARCM300-21030005/up",
          {"sn": "ARCM300-21030005", "ts": 1_795_828_502, "alarm": 1,
           "data": [{"ch": 1, "type": "IL", "val": 37, "unit": "mA"},
                    {"ch": 2, "type": "T", "val": 41.5, "unit": "℃"},
                    {"ch": 3, "type": "T", "val": 39.8, "unit": "℃"}]},
          {"residual_current": ("data", 0, "val"), "cable_temperature_1": ("data", 1, "val"),
           "cable_temperature_2": ("data", 2, "val"), "residual_current_alarm": ("alarm",),
           "temperature_alarm": ("alarm",)},
          ("ts",), key=("sn",),
          also_read=[("data",), ("data", 0), ("data", 0, "ch"), ("data", 1, "ch"),
                     ("data", 2, "ch")]),
    Shape("evcp", "charge point status", "evcp/PYGOV-PB-01/status",
          {"chargePointId": "PYGOV-PB-01", "connectorId": 1, "status": "Charging",
           "errorCode": "NoError", "vendorErrorCode": "", "power": 6890.0, "energy": 12345,
           "temperature": 41.2, "transactionId": 8812, "timestamp": "2026-11-28T01:15:02.123Z"},
          {"status": ("status",), "error_code": ("errorCode",), "power": ("power",),
           "session_energy": ("energy",), "connector_temperature": ("temperature",),
           "connector": ("connectorId",)},
          ("timestamp",), key=("chargePointId",)),
    Shape("chirpstack", "uplink", "application/app-1/device/a84041000181c301/event/up",
          {"deduplicationId": "6c1f", "time": "2026-11-28T01:15:02.123456+00:00",
           "deviceInfo": {"tenantName": "番禺行政中心", "devEui": "a84041000181c301"},
           "fCnt": 1234, "fPort": 2,
           "rxInfo": [{"gatewayId": "ac1f09fffe01a2b3", "rssi": -97, "snr": 6.5}],
           "object": {"water_level_cm": 12.3, "rain_mm_total": 1523.5, "rain_mm_per_h": 4.2,
                      "running": True, "current_a": 12.4, "fault": False, "run_hours": 1532.25,
                      "h2s_ppm": 3.2, "nh3_ppm": 7.0, "battery_v": 3.61}},
          {"water_level": ("object", "water_level_cm"), "rain_total": ("object", "rain_mm_total"),
           "rain_rate": ("object", "rain_mm_per_h"), "pump_running": ("object", "running"),
           "pump_current": ("object", "current_a"), "pump_fault": ("object", "fault"),
           "pump_run_hours": ("object", "run_hours"), "h2s": ("object", "h2s_ppm"),
           "nh3": ("object", "nh3_ppm"), "battery": ("object", "battery_v"),
           "rssi": ("rxInfo", 0, "rssi"), "snr": ("rxInfo", 0, "snr"),
           "frame_counter": ("fCnt",)},
          ("time",), key=("deviceInfo", "devEui"),
          also_read=[("object",), ("rxInfo",), ("rxInfo", 0), ("deviceInfo",)]),
]
SHAPE_IDS = [f"{s.vendor}/{s.name}" for s in SHAPES]


def spec_of(shape: Shape) -> tuple[VendorMapping, MessageSpec]:
    mapping = VENDORS[shape.vendor]
    return mapping, next(s for s in mapping.messages if s.name == shape.name)


def decoder_for(shape: Shape) -> VendorDecoder:
    return VendorDecoder(VENDORS[shape.vendor], SITE, "gw-iot", lambda: NOW)


def put(doc: Any, path: Path, value: Any) -> None:
    for step in path[:-1]:
        doc = doc[step]
    doc[path[-1]] = value


def get(doc: Any, path: Path) -> Any:
    for step in path:
        doc = doc[step]
    return doc


def fresh(base: dict[str, Any]) -> dict[str, Any]:
    copied = msgspec.json.decode(msgspec.json.encode(base))
    assert isinstance(copied, dict)
    return copied


def test_the_shapes_cover_every_mapping_and_every_field_it_reads() -> None:
    """The table above is complete: a new shape or a new path in a mapping fails here."""
    for vendor, mapping in VENDORS.items():
        names = {s.name for s in SHAPES if s.vendor == vendor}
        assert names == {s.name for s in mapping.messages}, vendor
    for shape in SHAPES:
        _, spec = spec_of(shape)
        exprs = [spec.key, *(v.path for v in spec.values.values())]
        if spec.time:
            exprs.append(spec.time.path)
        if spec.event:
            exprs += [spec.event.name.path, spec.event.id, spec.event.text or ""]
        read_fields = {p[0] for p in shape.reads()}
        for expr in exprs:
            for top in re.findall(r"payload\.(\w+)", expr):
                assert top in read_fields, f"{shape.name}: {expr!r} reads {top!r}"
        assert set(spec.values) <= set(shape.writes), shape.name
        assert topic_matches_sub(spec.topic, shape.topic)


# --- stored or refused ------------------------------------------------------------------

NASTY_NUMBERS = [2**53 + 1, -(2**63) - 1, 2**64 + 1, 10**30, -(10**400), 10**4300 - 1, 2**1000,
                 5e-324, -0.0, 1e308, -1e308, 2.2250738585072014e-308, math.inf, -math.inf,
                 math.nan, 0, -1, 1]
json_leaves = st.one_of(
    st.sampled_from(NASTY_NUMBERS),  # drawn as often as all the rest: the field reports
    st.one_of(
        st.none(), st.booleans(), st.integers(), st.integers(-(10**400), 10**400),
        st.floats(allow_nan=True, allow_infinity=True, allow_subnormal=True),
        st.text(max_size=20),
        st.sampled_from(["", "_", "海湾主机", "NORMAL", "Charging", "2026-11-28 09:15:02",
                         "9999-12-31T23:59:59Z", "\x00", "x" * 5000]),
    ),
)
json_values = st.recursive(
    json_leaves,
    lambda children: st.lists(children, max_size=4)
    | st.dictionaries(st.text(max_size=8), children, max_size=4),
    max_leaves=12)


def to_json(value: Any) -> str:
    """JSON text as a careless device might write it: NaN, Infinity and 1e309 included."""
    if isinstance(value, float) and not math.isfinite(value):
        return "NaN" if math.isnan(value) else ("1e309" if value > 0 else "-1e309")
    if isinstance(value, dict):
        return "{" + ",".join(f"{to_json(str(k))}:{to_json(v)}" for k, v in value.items()) + "}"
    if isinstance(value, list):
        return "[" + ",".join(to_json(v) for v in value) + "]"
    if isinstance(value, int) and not isinstance(value, bool):
        return str(value)
    return msgspec.json.encode(value).decode()


Decode = Callable[[Callable[[], int]], Output]  # a decode call, given the seq source


def check_output(decode: Decode) -> Output | None:
    """Run one decode: an Output whose messages obey the contract, or None if refused."""
    calls = itertools.count(1)
    try:
        out = decode(lambda: next(calls))
    except MappingError as exc:
        refused: str | None = str(exc)
    else:
        refused = None
    if refused is not None:
        # The decoder's own checks must refuse it, not the contract's backstop.
        assert "output breaks the contract" not in refused, refused
        return None
    messages: list[msgspec.Struct] = [*([out.reading] if out.reading else []), *out.events]
    assert messages, "an Output carries a reading or an event"
    assert next(calls) == len(messages) + 1, "one sequence number per message"
    for message in messages:
        again = m.decode(m.encode(message), type(message))
        assert again == message
    return out


@pytest.mark.parametrize("shape", SHAPES, ids=SHAPE_IDS)
@PROPS
@given(data=st.data())
def test_any_json_in_any_field_is_stored_or_refused(shape: Shape, data: st.DataObject) -> None:
    payload = fresh(shape.base)
    paths = shape.reads()
    for path in data.draw(st.lists(st.sampled_from(paths), min_size=1, max_size=3)):
        value = data.draw(json_values)
        with contextlib.suppress(KeyError, IndexError, TypeError):
            put(payload, path, value)  # unless an earlier replacement took the container
    raw = to_json(payload).encode("utf-8", "surrogatepass")
    decoder = decoder_for(shape)
    check_output(lambda seq_of: decoder.decode(shape.topic, raw, seq_of))


@pytest.mark.parametrize("shape", SHAPES, ids=SHAPE_IDS)
@PROPS
@given(payload=st.one_of(
    st.binary(max_size=300),
    json_values.map(lambda v: to_json(v).encode("utf-8", "surrogatepass")),
    st.integers(1, 20_000).map(lambda n: b"[" * n + b"]" * n)),
       level=st.text(max_size=12).filter(lambda t: not set(t) & set("/+#")))
def test_any_bytes_on_any_topic_level_are_stored_or_refused(
        shape: Shape, payload: bytes, level: str) -> None:
    parts = shape.topic.split("/")
    parts[1] = level or parts[1]  # the GST panel (the device key) or the vendor's own id
    decoder = decoder_for(shape)
    check_output(lambda seq_of: decoder.decode("/".join(parts), payload, seq_of))
    check_output(lambda seq_of: decoder.decode(shape.topic, payload, seq_of))


# --- the positive property: valid values come out exactly --------------------------------

def valid_raw(spec: ValueSpec) -> st.SearchStrategy[Any]:
    """Values a healthy device sends for this spec."""
    if spec.bit is not None:
        return st.integers(0, 2**32 - 1)
    if spec.type == "bool":
        return st.booleans() | st.sampled_from([0, 1])
    if spec.type == "string":
        if spec.map is not None:
            return st.sampled_from(sorted(spec.map))
        return st.text(max_size=60)
    lo, hi = spec.valid if spec.valid is not None else (-1e6, 1e6)
    lo, hi = sorted(((lo - spec.offset) / spec.scale, (hi - spec.offset) / spec.scale))
    ints = st.integers(math.ceil(lo), math.floor(hi))
    if spec.type == "integer":
        return ints
    floats = st.floats(lo, hi, allow_subnormal=True)
    return (ints | floats).filter(lambda x: in_range(expected_value(spec, x), spec))


def in_range(value: Any, spec: ValueSpec) -> bool:
    return spec.valid is None or spec.valid[0] <= value <= spec.valid[1]


def expected_value(spec: ValueSpec, raw: Any) -> Any:
    """What the reading must hold: the same value, a bit of it, the map's word, or the
    exact decimal times the scale plus the offset, nearest double."""
    if spec.bit is not None:
        return bool((raw >> spec.bit) & 1)
    if spec.type == "bool":
        return bool(raw)
    if spec.type == "string":
        return spec.map[raw] if spec.map is not None else raw
    if (spec.scale, spec.offset) == (1.0, 0.0):
        return raw
    number = Decimal(raw) if isinstance(raw, int) else Decimal(repr(raw))
    return float(number * Decimal(repr(spec.scale)) + Decimal(repr(spec.offset)))


def time_text(fmt: str, ns: int, data: st.DataObject) -> Any:
    seconds, rest = divmod(ns, 10**9)
    when = datetime.fromtimestamp(seconds, UTC) + timedelta(microseconds=rest // 1000)
    if fmt == "unix_s":
        return seconds
    if fmt == "local":
        return when.astimezone(CAMPUS).strftime("%Y-%m-%d %H:%M:%S")
    offset = data.draw(st.sampled_from([UTC, CAMPUS, ZoneInfo("America/Sao_Paulo")]))
    text = when.astimezone(offset).isoformat()
    return text.replace("+00:00", "Z") if data.draw(st.booleans()) else text


@pytest.mark.parametrize("shape", SHAPES, ids=SHAPE_IDS)
@PROPS
@given(data=st.data())
def test_valid_values_come_out_exactly(shape: Shape, data: st.DataObject) -> None:
    mapping, spec = spec_of(shape)
    payload = fresh(shape.base)
    # A fresh sample time: not stale, not ahead of the clock; whole seconds for the
    # formats that carry no fraction.
    assert spec.time is not None
    age = data.draw(st.integers(0, int(mapping.stale_after * 10**6) - 1)) * 1000
    ts = NOW - age
    if spec.time.format in ("unix_s", "local"):
        ts -= ts % 10**9
    put(payload, shape.time, time_text(spec.time.format, ts, data))
    sent: dict[str, Any] = {}
    for name, vspec in spec.values.items():
        if vspec.optional and data.draw(st.booleans()):
            put(payload, shape.writes[name], None)
            continue
        raw = data.draw(valid_raw(vspec), label=name)
        put(payload, shape.writes[name], raw)
        sent[name] = raw
    for name, vspec in spec.values.items():  # bits share their word: the last write holds
        if name in sent and vspec.bit is not None:
            sent[name] = get(payload, shape.writes[name])
    panel = number = None
    words = spec.event.name.map if spec.event is not None else None
    if words is not None:
        put(payload, ("evt",), data.draw(st.sampled_from(sorted(words))))
        panel, number = data.draw(st.text(max_size=30)), data.draw(st.integers(0, 2**31))
        put(payload, ("panel",), panel)
        put(payload, ("evtNo",), number)
        put(payload, ("desc",), data.draw(st.text(max_size=80)))
    decoder = decoder_for(shape)
    raw = msgspec.json.encode(payload)
    out = check_output(lambda seq_of: decoder.decode(shape.topic, raw, seq_of))
    if not sent and spec.event is None:
        assert out is None  # nothing mapped: a dead letter, said so
        return
    assert out is not None, "a valid payload must not be refused"
    if spec.values:
        assert out.reading is not None
        assert out.reading.ts == ts and out.reading.quality is m.Quality.GOOD
        assert out.reading.errors == {}
        want = {n: expected_value(spec.values[n], raw) for n, raw in sent.items()}
        assert out.reading.values == want
        assert {n: type(v) for n, v in out.reading.values.items()} == \
            {n: type(v) for n, v in want.items()}
    if words is not None:
        event = out.events[0]
        assert event.ts == ts
        assert (event.name, event.text) == (words[payload["evt"]], payload["desc"])
        assert event.id == safe_id(f"{panel}-{number}")
        if ID_PATTERN.fullmatch(f"{panel}-{number}"):
            assert event.id == f"{panel}-{number}"  # a valid id is kept as it is


# --- identifiers --------------------------------------------------------------------------

@settings(max_examples=300, deadline=None)
@given(a=st.text(max_size=80), b=st.text(max_size=80))
def test_safe_ids_are_valid_kept_and_distinct(a: str, b: str) -> None:
    for text in (a, b):
        assert ID_PATTERN.fullmatch(safe_id(text))
        if ID_PATTERN.fullmatch(text):
            assert safe_id(text) == text
    assert (safe_id(a) == safe_id(b)) == (a == b)


def test_safe_ids_of_near_texts_differ() -> None:
    # Texts whose slugs are the same must still get different ids.
    texts = ["海湾主机", "消防主机", "", "_", "-", "_FP-EB", "FP-EB_", "FP/EB", "FP EB", "FP_EB",
             "a" * 64, "a" * 65, "a" * 66, "FP-EB-10235", "_FP-EB-10235"]
    ids = [safe_id(t) for t in texts]
    assert len(set(ids)) == len(texts)
    assert all(ID_PATTERN.fullmatch(i) for i in ids)


def test_safe_ids_are_the_same_in_another_process() -> None:
    texts = ["海湾主机1号-10235", "", "_FP-EB-1", "FP/EB #1 (主)-7"]
    code = ("import json, sys; from gateway.vendors import safe_id; "
            "print(json.dumps([safe_id(t) for t in json.loads(sys.argv[1])]))")
    env = {**os.environ, "PYTHONHASHSEED": "12345", "PYTHONPATH": str(REPO)}
    other = subprocess.run([sys.executable, "-c", code, json.dumps(texts)], env=env,
                           capture_output=True, text=True, check=True, cwd=REPO)
    assert json.loads(other.stdout) == [safe_id(t) for t in texts]


# --- numbers the configs cannot produce yet ------------------------------------------------

@pytest.mark.parametrize(("scale", "offset", "raw", "error"), [
    (1000.0, 0.0, 1e308, "scaled is not a finite number"),
    (1.0, 1e308, 1e308, "scaled is not a finite number"),
    (0.001, 0.0, 2**53 - 1, "more digits than a float field holds"),
    (10.0, 0.0, 10**400, "cannot be stored exactly"),
], ids=["scale-overflow", "offset-overflow", "too-many-digits", "huge-int-scaled"])
def test_scaling_that_cannot_be_stored_is_a_value_error(
        scale: float, offset: float, raw: int | float, error: str) -> None:
    mapping = VENDORS["evcp"].model_copy(deep=True)
    spec = mapping.messages[0]
    values = {**spec.values, "power": ValueSpec(path="payload.power", scale=scale,
                                                offset=offset)}
    mapping = mapping.model_copy(update={"messages": [spec.model_copy(update={"values": values})]})
    decoder = VendorDecoder(mapping, SITE, "gw-iot", lambda: NOW)
    shape = next(s for s in SHAPES if s.vendor == "evcp")
    body = msgspec.json.encode({**shape.base, "power": raw})
    out = check_output(lambda seq_of: decoder.decode(shape.topic, body, seq_of))
    assert out is not None and out.reading is not None
    assert "power" not in out.reading.values and error in out.reading.errors["power"]
    assert out.reading.quality is m.Quality.BAD_VALUE
