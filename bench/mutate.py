"""Mutated vendor payloads for the soak benchmark: every field every vendor mapping reads,
broken by each rule of its own.

The fields come from the mappings themselves (config/vendors/*.yaml): each JMESPath a
message shape uses (device key, sample time, values, event name, id and text) is parsed
and walked down to the concrete places it reads, e.g. `payload.data[?ch==`1`].val | [0]`
is the `val` of the element of `payload.data` whose `ch` is 1, and `join('/', topic[1:4])`
is the topic's levels 1, 2 and 3. A mutation is one (shape, field, rule): the rule
replaces that one field of a good message (or removes it) and leaves everything else as
it was, so the gateway meets exactly one fault at a time. Two rules break the whole
message instead (truncated JSON). Values that JSON cannot carry (NaN, -1e309, bytes that
are not UTF-8) are written into the payload's text as they are.

    shapes = load_shapes(VENDORS_DIR)
    mutations = all_mutations(shapes)                  # every (shape, field, rule)
    topic, payload = apply(mutation, topic, body)      # one mutated message, bytes
"""

from __future__ import annotations

import json
import random
import re
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from functools import partial
from pathlib import Path
from typing import Any

import jmespath
import yaml

REPO = Path(__file__).resolve().parent.parent
VENDORS_DIR = REPO / "config" / "vendors"
UTC8 = timezone(timedelta(hours=8))  # the campus's time zone (Asia/Shanghai, no DST)


# --- where a mapping reads --------------------------------------------------------------

@dataclass(frozen=True)
class Key:
    name: str


@dataclass(frozen=True)
class Index:
    index: int


@dataclass(frozen=True)
class Where:
    """The element of a list whose `field` equals `value` (a JMESPath filter)."""

    field: str
    value: Any


Step = Key | Index | Where


def reads(expression: str) -> list[tuple[Step, ...]]:
    """The places a JMESPath expression reads, from the document's root."""
    parsed: dict[str, Any] = jmespath.compile(expression).parsed  # type: ignore[assignment]  # types-jmespath: stubs type a slice's int/None children as nodes
    return _paths(parsed)


def _paths(node: dict[str, Any]) -> list[tuple[Step, ...]]:
    kind = node["type"]
    children = node.get("children", [])
    if kind == "field":
        return [(Key(node["value"]),)]
    if kind in ("identity", "current", "literal"):
        return [()] if kind != "literal" else []
    if kind == "subexpression":
        out: list[tuple[Step, ...]] = [()]
        for child in children:
            out = [a + b for a in out for b in _paths(child)]
        return out
    if kind == "index_expression":
        left, right = children
        if right["type"] == "index":
            return [(*p, Index(right["value"])) for p in _paths(left)]
        if right["type"] == "slice":
            start, stop, step = right["children"]
            if start is None or stop is None:
                raise ValueError("open slices are not supported")
            return [(*p, Index(i)) for p in _paths(left)
                    for i in range(start, stop, step or 1)]
        raise ValueError(f"unsupported index {right['type']}")
    if kind == "projection":
        left, right = children
        return [a + b for a in _paths(left) for b in _paths(right)]
    if kind == "filter_projection":
        left, right, comparator = children
        lhs, rhs = comparator["children"]
        if comparator["value"] != "eq" or lhs["type"] != "field" or rhs["type"] != "literal":
            raise ValueError("only filters of the form [?field==`literal`] are supported")
        where = Where(lhs["value"], rhs["value"])
        return [(*a, where, *b) for a in _paths(left) for b in _paths(right)]
    if kind == "pipe":
        # `... | [0]` picks the first of a projection: the place is the projection's own.
        return _paths(children[0])
    # Functions, lists, and/or/not, comparisons: each operand reads where it reads.
    return [p for child in children if isinstance(child, dict) for p in _paths(child)]


@dataclass(frozen=True)
class Field:
    """One place a message shape reads: its path and what belongs there."""

    path: tuple[Step, ...]
    role: str  # key, time, value, event
    type: str  # number, integer, bool, string, text, topic, time:<format>
    choices: tuple[str, ...] = ()  # the vendor words of a mapped string
    valid: tuple[float, float] | None = None
    scale: float = 1.0

    @property
    def name(self) -> str:
        out: list[str] = []
        for step in self.path:
            if isinstance(step, Key):
                out.append(("." if out else "") + step.name)
            elif isinstance(step, Index):
                out.append(f"[{step.index}]")
            else:
                out.append(f"[?{step.field}=={step.value!r}]")
        return "".join(out)

    @property
    def in_topic(self) -> bool:
        return bool(self.path) and self.path[0] == Key("topic")


@dataclass(frozen=True)
class Shape:
    vendor: str
    name: str
    topic: str  # the topic filter
    fields: tuple[Field, ...]
    time_format: str = ""  # "" when the shape has no time
    local_format: str = "%Y-%m-%d %H:%M:%S"
    is_event: bool = False

    @property
    def id(self) -> str:
        return f"{self.vendor}/{self.name}"


def _value_field(path: tuple[Step, ...], role: str, spec: dict[str, Any]) -> Field:
    kind = spec.get("type", "number")
    if spec.get("bit") is not None:
        kind = "integer"
    valid = spec.get("valid")
    return Field(path, role, kind, tuple(spec.get("map") or ()),
                 (float(valid[0]), float(valid[1])) if valid else None,
                 float(spec.get("scale", 1.0)))


def _add(fields: dict[tuple[Step, ...], Field], new: Field) -> None:
    fields.setdefault(new.path, new)  # a place read twice is one field


def load_shapes(folder: Path = VENDORS_DIR) -> list[Shape]:
    """Every message shape of every mapping file, with the fields it reads."""
    shapes = []
    for path in sorted(folder.glob("*.yaml")):
        mapping = yaml.safe_load(path.read_text(encoding="utf-8"))
        for message in mapping["messages"]:
            fields: dict[tuple[Step, ...], Field] = {}
            add = partial(_add, fields)
            for p in reads(message["key"]):
                add(Field(p, "key", "topic" if p[:1] == (Key("topic"),) else "string"))
            time = message.get("time")
            if time:
                for p in reads(time["path"]):
                    add(Field(p, "time", f"time:{time['format']}"))
            for spec in message.get("values", {}).values():
                for p in reads(spec["path"]):
                    add(_value_field(p, "value", spec))
            event = message.get("event")
            if event:
                for p in reads(event["name"]["path"]):
                    add(_value_field(p, "event", event["name"]))
                for p in reads(event["id"]):
                    add(Field(p, "event", "integer" if p[-1] == Key("evtNo") else "string"))
                if event.get("text"):
                    for p in reads(event["text"]):
                        add(Field(p, "event", "text"))
                for spec in event.get("attrs", {}).values():
                    for p in reads(spec["path"]):
                        add(_value_field(p, "event", spec))
            shapes.append(Shape(
                mapping["vendor"], message["name"], message["topic"], tuple(fields.values()),
                time_format=time["format"] if time else "",
                local_format=time.get("local_format", "%Y-%m-%d %H:%M:%S") if time else "",
                is_event=bool(event)))
    return shapes


# --- the rules ------------------------------------------------------------------------------

class Raw:
    """Text written into the JSON as it is (NaN, -1e309, bytes that are not UTF-8)."""

    def __init__(self, text: bytes) -> None:
        self.text = text

    def __repr__(self) -> str:
        return f"Raw({self.text!r})"


MISSING = object()


def _wrong_type(f: Field, old: Any) -> Any:
    if f.type in ("number", "integer"):
        return "12.5"  # a number in a string
    if f.type == "bool":
        return "true"
    if f.type.startswith("time:unix"):
        return "1733450000"
    if f.type.startswith("time:"):
        return 1733450000
    return 42  # a number where text belongs


def _far_time(f: Field, old: Any) -> Any:
    if f.type in ("time:unix_s", "time:unix_ms"):
        return 253402300799 * (1000 if f.type == "time:unix_ms" else 1)
    if f.type == "time:iso8601":
        return "9999-12-31T23:59:59Z"
    return "9999-12-31 23:59:59"


# Each rule: a name and what it puts in the field (MISSING removes it).
FIELD_RULES: dict[str, Any] = {
    "wrong type": _wrong_type,
    "array": lambda f, old: [old, old],
    "object": lambda f, old: {"value": old},
    "null": lambda f, old: None,
    "huge int 10**30": lambda f, old: 10**30,
    "1e308": lambda f, old: Raw(b"1e308"),
    "-1e309 literal": lambda f, old: Raw(b"-1e309"),
    "NaN literal": lambda f, old: Raw(b"NaN"),
    "subnormal 5e-324": lambda f, old: Raw(b"5e-324"),
    "negative": lambda f, old: -1,
    "empty string": lambda f, old: "",
    "Chinese text": lambda f, old: "火灾报警测试中文字段",
    "leading _": lambda f, old: f"_{old}",
    "year 9999": _far_time,
    "time -1": lambda f, old: -1 if not f.type.startswith("time:") or "unix" in f.type
    else "-1",
    "garbage": lambda f, old: "\x00\x1b[31m%s%n{{}}<script>\ufffd\U0001f525" + "~" * 300,
    "long text 70k": lambda f, old: "长" * 70_000,
    "non-UTF-8 bytes": lambda f, old: Raw(b'"\xff\xfe\xc3\x28\xed\xa0\x80"'),
    "missing": lambda f, old: MISSING,
}
# Rules that break the whole message rather than one field.
MESSAGE_RULES = ("truncated JSON", "empty payload")


@dataclass(frozen=True)
class Mutation:
    shape: Shape
    rule: str
    field: Field | None = None  # None for a message rule

    @property
    def label(self) -> str:
        where = self.field.name if self.field is not None else "message"
        return f"{self.shape.id}: {where}: {self.rule}"


def all_mutations(shapes: list[Shape]) -> list[Mutation]:
    """Every (shape, field, rule), then every (shape, message rule)."""
    out = [Mutation(shape, rule, f) for shape in shapes for f in shape.fields
           for rule in FIELD_RULES]
    out += [Mutation(shape, rule) for shape in shapes for rule in MESSAGE_RULES]
    return out


# --- documents: find, set, build ------------------------------------------------------------

def _places(container: Any, path: tuple[Step, ...]) -> Iterator[tuple[Any, Any]]:
    """(container, key) of every concrete place a path names in a document."""
    if not path:
        return
    step, rest = path[0], path[1:]
    if isinstance(step, Key):
        if not isinstance(container, dict):
            return
        if not rest:
            yield container, step.name
        elif step.name in container:
            yield from _places(container[step.name], rest)
    elif isinstance(step, Index):
        if not isinstance(container, list) or not -len(container) <= step.index < len(container):
            return
        if not rest:
            yield container, step.index
        else:
            yield from _places(container[step.index], rest)
    else:
        if not isinstance(container, list):
            return
        for element in container:
            if isinstance(element, dict) and element.get(step.field) == step.value:
                yield from _places(element, rest)


def get(doc: Any, path: tuple[Step, ...]) -> Any:
    for container, key in _places(doc, path):
        if isinstance(container, list) or key in container:
            return container[key]
    return None


def put(doc: Any, path: tuple[Step, ...], value: Any) -> bool:
    """Set (or, with MISSING, remove) the value at every place of `path`; False if the
    document has no such place."""
    done = False
    for container, key in list(_places(doc, path)):
        if value is MISSING:
            if isinstance(container, list) or key in container:
                del container[key]
        else:
            container[key] = value
        done = True
    return done


def build(doc: dict[str, Any], path: tuple[Step, ...], value: Any) -> None:
    """Create the places of `path` in `doc` as needed and put `value` there."""
    node: Any = doc
    for n, step in enumerate(path):
        last = n == len(path) - 1
        nxt = path[n + 1] if not last else None
        empty: Any = [] if isinstance(nxt, Index | Where) else {}
        if isinstance(step, Key):
            if last:
                node[step.name] = value
            else:
                node = node.setdefault(step.name, empty)
        elif isinstance(step, Index):
            while len(node) <= step.index:
                node.append(empty if not last else None)
                empty = [] if isinstance(nxt, Index | Where) else {}
            if last:
                node[step.index] = value
            else:
                node = node[step.index]
        else:
            element = next((e for e in node if isinstance(e, dict)
                            and e.get(step.field) == step.value), None)
            if element is None:
                element = {step.field: step.value}
                node.append(element)
            node = element


def format_time(shape: Shape, ts: float) -> Any:
    """A sample time `ts` (Unix seconds) as the shape's mapping reads it."""
    if shape.time_format == "unix_s":
        return int(ts)
    if shape.time_format == "unix_ms":
        return int(ts * 1000)
    moment = datetime.fromtimestamp(ts, tz=UTC8)
    if shape.time_format == "iso8601":
        return moment.isoformat(timespec="milliseconds")
    return moment.strftime(shape.local_format)


def shape_of(shapes: list[Shape], topic: str) -> Shape | None:
    from paho.mqtt.client import topic_matches_sub

    return next((s for s in shapes if topic_matches_sub(s.topic, topic)), None)


def refresh(shape: Shape, doc: dict[str, Any], ts: float) -> None:
    """Give a good message a new sample time."""
    for f in shape.fields:
        if f.role == "time":
            put(doc, f.path, format_time(shape, ts))


def _good_value(f: Field, key: str, n: int) -> Any:
    if f.choices:
        for word in ("NORMAL", "Available", "ENABLE", "FAULT_RESTORE"):
            if word in f.choices:
                return word
        return f.choices[0]
    if f.type == "bool":
        return False
    if f.type == "integer":
        return n if f.path[-1] == Key("evtNo") else 0
    if f.type == "string":
        return key.split("/")[0] if f.path[-1] == Key("panel") else ("NoError" if f.role == "value"
                                                                    else key)
    if f.type == "text":
        return "测试事件"
    if f.valid is not None:
        low, high = f.valid
        return round((low + 0.05 * (high - low)) / f.scale, 3)
    return 1.0


def synthesize(shape: Shape, key: str, ts: float, n: int = 1) -> tuple[str, dict[str, Any]]:
    """A good message of `shape` for the device with vendor key `key` at time `ts`: the
    topic and the document's payload. Every field the shape reads is present."""
    levels = shape.topic.split("/")
    key_levels = [f.path[1].index for f in shape.fields
                  if f.in_topic and len(f.path) == 2 and isinstance(f.path[1], Index)]
    parts = key.split("/")
    for i, level in zip(sorted(key_levels), parts, strict=False):
        levels[i] = level
    levels = [key if level == "+" else level for level in levels]
    doc: dict[str, Any] = {"topic": levels, "payload": {}}
    for f in shape.fields:
        if f.in_topic:
            continue
        if f.role == "time":
            build(doc, f.path, format_time(shape, ts))
        elif f.role == "key":
            build(doc, f.path, key)
        else:
            build(doc, f.path, _good_value(f, key, n))
    return "/".join(levels), doc["payload"]


# --- applying a mutation ------------------------------------------------------------------

def encode(value: Any) -> bytes:
    """JSON bytes, with Raw values written as they are."""
    raws: list[bytes] = []

    def swap(node: Any) -> Any:
        if isinstance(node, Raw):
            raws.append(node.text)
            return f"@@raw{len(raws) - 1}@@"
        if isinstance(node, dict):
            return {k: swap(v) for k, v in node.items()}
        if isinstance(node, list):
            return [swap(v) for v in node]
        return node

    text = json.dumps(swap(value), ensure_ascii=False, separators=(",", ":")).encode()
    for n, raw in enumerate(raws):
        text = text.replace(f'"@@raw{n}@@"'.encode(), raw)
    return text


# What an MQTT broker refuses in a topic name (Mosquitto closes the connection for a
# "malformed packet"): U+0000, the control characters, non-characters; and the wildcards
# and the level separator, which would make another topic rather than a broken level.
_NOT_IN_TOPIC = re.compile("[\x00-\x1f\x7f-\x9f\ufdd0-\ufdef\ufffe\uffff/+#]")


def _topic_text(value: Any) -> str:
    """A mutated value as a topic level: the same mistake, as far as a topic can carry it."""
    if isinstance(value, Raw):
        text = value.text.decode("utf-8", "replace").strip('"')
    elif isinstance(value, str):
        text = value
    else:
        text = json.dumps(value, ensure_ascii=False)
    return _NOT_IN_TOPIC.sub("_", text)[:200]


def apply(mutation: Mutation, topic: str, payload: dict[str, Any]) -> tuple[str, bytes]:
    """The mutated message made from a good one (topic, decoded payload)."""
    doc: dict[str, Any] = {"topic": topic.split("/"), "payload": json.loads(json.dumps(payload))}
    if mutation.field is None:
        body = encode(doc["payload"])
        if mutation.rule == "truncated JSON":
            return topic, body[: max(1, len(body) // 2)]
        return topic, b""
    f = mutation.field
    old = get(doc, f.path)
    new = FIELD_RULES[mutation.rule](f, old)
    if f.in_topic:
        levels: list[str] = doc["topic"]
        index = f.path[1].index if isinstance(f.path[1], Index) else 0
        if new is MISSING:
            del levels[index]
        else:
            levels[index] = _topic_text(new)
        return "/".join(levels), encode(doc["payload"])
    if not put(doc, f.path, new) and new is not MISSING:
        build(doc, f.path, new)
    return topic, encode(doc["payload"])


class Mutator:
    """Hands out mutations round robin over a shuffled list of all of them, so a run of
    len(mutations) messages covers every (shape, field, rule) once."""

    def __init__(self, shapes: list[Shape], seed: int = 1) -> None:
        self.shapes = shapes
        self.mutations = all_mutations(shapes)
        random.Random(seed).shuffle(self.mutations)
        self.sent = 0
        self.covered: set[str] = set()

    def next(self) -> Mutation:
        mutation = self.mutations[self.sent % len(self.mutations)]
        self.sent += 1
        self.covered.add(mutation.label)
        return mutation
