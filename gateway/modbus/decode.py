"""Turn the registers of one block read into named values, per the compiled map.

Values come out in the map's units, rounded to what the register can actually carry
(a float32 has about 7 significant digits; 573 × 0.1 is 57.3, not 57.300000000000004).
A value that is not a number, outside its plausible range, or an unknown enum code is
left out and reported in `errors` instead: the rest of the block is still good.
"""

from __future__ import annotations

import math
import struct
from collections.abc import Sequence

from gateway.modbus.registermap import Block, Slot

Scalar = bool | int | float | str


def _decimals(scale: float) -> int:
    """Decimal places that a scaled integer can carry: 0.1 -> 1, 0.001 -> 3, 1 -> 0."""
    if scale == 0 or scale >= 1:
        return 0
    return min(12, math.ceil(-math.log10(scale) - 1e-9))


def _round(slot: Slot, value: float) -> float:
    if slot.struct_code == "f":
        return float(f"{value:.7g}")
    if slot.struct_code == "d":
        return value
    return round(value, _decimals(abs(slot.scale)) + (1 if slot.add % 1 else 0))


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
    return struct.unpack(">" + slot.struct_code, packed)[0]  # type: ignore[no-any-return]


def convert(slot: Slot, raw: int | float | bool) -> tuple[Scalar | None, str | None]:
    """(value, None) or (None, reason)."""
    if isinstance(raw, bool):
        return raw, None
    if slot.enum is not None:
        label = slot.enum.get(int(raw))
        return (label, None) if label is not None else (None, f"unknown code {raw}")
    if isinstance(raw, float) and not math.isfinite(raw):
        return None, f"register holds {raw}"
    if slot.scale == 1.0 and slot.add == 0.0 and isinstance(raw, int):
        value: float | int = raw
    else:
        value = _round(slot, raw * slot.scale + slot.add)
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
        raw = bool(data[slot.offset]) if bits else raw_word_value(slot, data)  # type: ignore[arg-type]
        value, error = convert(slot, raw)
        if error is None:
            values.setdefault(slot.unit, {})[slot.name] = value  # type: ignore[assignment]
        else:
            errors.setdefault(slot.unit, {})[slot.name] = error
