"""InfluxDB line protocol, written so that every point is stored exactly as sent or refused.

InfluxDB 1.x unescapes only `\\,`, `\\=` and `\\ ` in names and tag values; a literal
backslash there is kept, but a backslash before a separator would swallow it and merge
the next tag into this one. So names and tag values with a backslash, or with control
characters (a newline ends the line), are refused rather than altered. String field
values escape `\\` and `"` and may hold anything else.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping

from facility.errors import Refused
from facility.scalar import Scalar

# Numbers are stored as float fields: an integer a double cannot hold would be altered.
MAX_EXACT_INT = 2**53


def exact_as_float(value: int) -> bool:
    """Whether float(value) is value (2**60 is; 2**53 + 1 is not; 10**400 overflows)."""
    try:
        return int(float(value)) == value
    except OverflowError:
        return False


class LineProtocolError(Refused):
    """A value that line protocol cannot carry unchanged."""


_NAME_ESCAPES = str.maketrans({",": "\\,", "=": "\\=", " ": "\\ "})
_MEASUREMENT_ESCAPES = str.maketrans({",": "\\,", " ": "\\ "})
_STRING_ESCAPES = str.maketrans({"\\": "\\\\", '"': '\\"'})
# Characters that cannot be stored exactly in a measurement, key or tag value.
_UNSAFE_IN_NAME = re.compile(r"[\\\x00-\x1f\x7f\u2028\u2029\ufeff]")


def _name(value: str, what: str, table: dict[int, str]) -> str:
    if not value:
        raise LineProtocolError(f"{what} is empty")
    bad = _UNSAFE_IN_NAME.search(value)
    if bad is not None:
        raise LineProtocolError(f"{what} {value!r} contains {bad.group()!r}, which InfluxDB "
                                "cannot store exactly")
    if value[0] == "_" and what != "tag value":
        raise LineProtocolError(f"{what} {value!r} starts with '_', reserved by InfluxDB")
    return value.translate(table)


def escape_measurement(name: str) -> str:
    return _name(name, "measurement", _MEASUREMENT_ESCAPES)


def escape_key(name: str, what: str = "key") -> str:
    if name == "time":
        raise LineProtocolError(f"{what} 'time' is reserved by InfluxDB")
    return _name(name, what, _NAME_ESCAPES)


def escape_tag_value(value: str) -> str:
    return _name(value, "tag value", _NAME_ESCAPES)


def field_value(value: Scalar) -> str:
    if type(value) is float:  # the common case first
        if value - value != 0.0:  # inf and nan: inf - inf and nan - nan are nan
            raise LineProtocolError(f"{value} is not a finite number")
        return repr(value)
    # bool before int: bool is a subclass of int.
    if value is True:
        return "true"
    if value is False:
        return "false"
    if isinstance(value, int):
        # No 'i' suffix: every number is a float field, so a device that sends 3 then
        # 3.5 never causes a type conflict. An integer a double cannot hold is refused,
        # not rounded.
        if -MAX_EXACT_INT <= value <= MAX_EXACT_INT or exact_as_float(value):
            return str(value)
        raise LineProtocolError(f"integer {value} cannot be stored exactly as a float field")
    if isinstance(value, float):
        if not math.isfinite(value):
            raise LineProtocolError(f"{value} is not a finite number")
        return repr(value)
    if isinstance(value, str):
        return '"' + value.translate(_STRING_ESCAPES) + '"'
    raise LineProtocolError(f"unsupported field value type {type(value).__name__}")


def series_key(measurement: str, tags: Mapping[str, str]) -> str:
    """Measurement and sorted tags, escaped: the first part of a line."""
    parts = [escape_measurement(measurement)]
    for key in sorted(tags):
        parts.append(f"{escape_key(key, 'tag key')}={escape_tag_value(tags[key])}")
    return ",".join(parts)


def checked_fields(fields: Mapping[str, Scalar]) -> str:
    """Fields whose keys the message contract already restricted to [a-z][a-z0-9_]*: only
    the values need formatting (the hot path of ingest)."""
    return ",".join([f"{k}={field_value(v)}" for k, v in fields.items()])


def fields_part(fields: Mapping[str, Scalar]) -> str:
    if not fields:
        raise LineProtocolError("a point needs at least one field")
    return ",".join(f"{escape_key(k, 'field key')}={field_value(v)}" for k, v in fields.items())


def line(measurement: str, tags: Mapping[str, str], fields: Mapping[str, Scalar], ts: int) -> str:
    """One point; raise LineProtocolError if any part cannot be stored exactly."""
    return f"{series_key(measurement, tags)} {fields_part(fields)} {int(ts)}"
