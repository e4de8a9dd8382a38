"""Turn the registers of one block read into named values, per the compiled map.

Every value arrives exactly as the device measured it:
- a float32 register becomes the shortest decimal that reads back as the same float32
  (12345678.0 is 12345678, not 12345680; 573.3 is 573.3, not 573.2999877929688), found
  by numpy's Dragon4 (`format_float_scientific(..., unique=True)`): a well-kept
  implementation, about 1 µs a value, which the Modbus path can afford;
- an integer register stays an exact integer;
- a scaled or offset value is the exact decimal (the register's decimal times the scale
  plus the offset, in `decimal`: 2314 × 0.1 is 231.4, not 231.40000000000003), then the
  nearest double.
Numbers are stored as float64 fields (InfluxDB), so an integer register whose value no
double reads back as (beyond 2**53 and not a double, or scaled to a decimal of more than
15-17 digits) is refused with the reason, never altered. So is a value that is not a
number, outside its plausible range, or an unknown enum code: it is left out and
reported in `errors`, and the rest of the block is still good.
"""

from __future__ import annotations

import math
import struct
from collections.abc import Sequence
from decimal import MAX_EMAX, MAX_PREC, MIN_EMIN, Context, Decimal, Inexact, Rounded

import numpy as np

from facility.scalar import Scalar
from gateway.modbus.registermap import Block, Slot

# Enough precision that a product and a sum are never rounded (Inexact would raise).
_EXACT = Context(prec=MAX_PREC, Emax=MAX_EMAX, Emin=MIN_EMIN, traps=[Inexact, Rounded])
_float32 = np.float32
_shortest = np.format_float_scientific


def float32_decimal(value: float) -> str:
    """The shortest decimal that reads back as the float32 `value` (a float32 in a float)."""
    return _shortest(_float32(value), unique=True)


def raw_word_value(slot: Slot, registers: Sequence[int]) -> int | float | bool:
    words = list(registers[slot.offset : slot.offset + slot.count])
    if slot.bit is not None:
        return bool((words[0] >> slot.bit) & 1)
    if slot.struct_code == "?":
        return words[0] != 0
    if slot.byte_swap:
        words = [((w & 0xFF) << 8) | (w >> 8) for w in words]
    if slot.word_swap:
        words.reverse()
    packed = struct.pack(f">{slot.count}H", *words)
    value: int | float | bool = struct.unpack(">" + slot.struct_code, packed)[0]
    return value


def _exact(slot: Slot, raw: int | float) -> tuple[int | float | None, str | None]:
    """The register's value in the map's units, or (None, why it cannot be stored)."""
    exact_integer = False
    if slot.struct_code == "f":
        if not slot.scaled:
            return float(float32_decimal(raw)), None
        number = Decimal(float32_decimal(raw))
    elif isinstance(raw, float):
        if not slot.scaled:
            return raw, None
        number = Decimal(repr(raw))  # float64: its shortest decimal
    else:
        exact_integer = True
        if not slot.scaled:
            if slot.count == 4 and float(raw) != raw:  # only 64-bit integers can miss
                return None, f"{raw} has no exact float64 (stored numbers are float64 " \
                             f"fields): refused, not rounded"
            return raw, None
        number = Decimal(raw)
    exact = _EXACT.multiply(number, slot.dec_scale)
    if slot.dec_add is not None:
        exact = _EXACT.add(exact, slot.dec_add)
    value = float(exact)  # correctly rounded: the nearest double
    # A scaled integer register is an exact decimal: one a double cannot hold is refused.
    # A float register's decimal is already its shortest one: the nearest double is it.
    if exact_integer and not slot.fits_double and Decimal(repr(value)) != exact:
        return None, f"{exact} has more digits than a float64 field holds: refused, " \
                     f"not rounded"
    return value, None


def convert(slot: Slot, raw: int | float | bool) -> tuple[Scalar | None, str | None]:
    """(value, None) or (None, reason)."""
    if isinstance(raw, bool):
        return raw, None
    if slot.enum is not None:
        label = slot.enum.get(int(raw))
        return (label, None) if label is not None else (None, f"unknown code {raw}")
    if isinstance(raw, float) and not math.isfinite(raw):
        return None, f"register holds {raw}"
    value, error = _exact(slot, raw)
    if value is None:
        return None, error
    if slot.valid is not None and not slot.valid[0] <= value <= slot.valid[1]:
        return None, f"{value} outside plausible range {list(slot.valid)}"
    return value, None


def decode_block(
    block: Block,
    data: Sequence[int] | Sequence[bool],
    values: dict[int, dict[str, Scalar]],
    errors: dict[int, dict[str, str]],
) -> None:
    """Decode one block's data into values[unit][name]; failures into errors[unit][name]."""
    bits = block.table in ("coil", "discrete")
    for slot in block.fields:
        raw = bool(data[slot.offset]) if bits else raw_word_value(slot, data)
        value, error = convert(slot, raw)
        if error is None:
            assert value is not None  # convert gives a value or the reason it has none
            values.setdefault(slot.unit, {})[slot.name] = value
        else:
            errors.setdefault(slot.unit, {})[slot.name] = error
