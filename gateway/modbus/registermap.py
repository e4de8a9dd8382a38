"""Block plans: a register map (facility/modbusmaps.py) turned into the fewest reads.

`compile_plan` turns a map into the fewest block reads: contiguous points of one table
merge while the read stays within `max_registers` (125 by the Modbus spec) and the hole
between them is at most `max_gap` registers and never crosses an `unreadable` range.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from decimal import Decimal

from facility.configfile import ConfigError
from facility.modbusmaps import (
    BIT_TABLES,
    MAX_READ,
    RAW_DIGITS,
    TYPES,
    PointSpec,
    RegisterMap,
    Table,
)


@dataclass(frozen=True, slots=True)
class Slot:
    """One value to decode from a block: where it sits and how to turn words into a value."""

    unit: int  # 0 for the device itself, n for unit n of a controller
    name: str
    offset: int  # in the block, in registers (bits for bit tables)
    count: int
    struct_code: str
    word_swap: bool
    byte_swap: bool
    scale: float
    add: float
    unit_label: str
    bit: int | None
    enum: dict[int, str] | None
    valid: tuple[float, float] | None
    # Derived for decode: scale and offset as the decimals written in the map (0.1 is
    # 1/10, not the double nearest it), and whether every scaled value has at most 15
    # significant digits, so that its nearest double surely reads back as it.
    scaled: bool = field(init=False)
    dec_scale: Decimal = field(init=False)
    dec_add: Decimal | None = field(init=False)
    fits_double: bool = field(init=False)

    def __post_init__(self) -> None:
        scale = Decimal(repr(self.scale))
        set_ = object.__setattr__
        set_(self, "scaled", self.scale != 1.0 or self.add != 0.0)
        set_(self, "dec_scale", scale)
        set_(self, "dec_add", Decimal(repr(self.add)) if self.add else None)
        digits = RAW_DIGITS.get(self.struct_code, 17) + len(scale.normalize().as_tuple().digits)
        set_(self, "fits_double", not self.add and digits <= 15)


@dataclass(frozen=True, slots=True)
class Block:
    table: Table
    start: int
    count: int
    fields: tuple[Slot, ...]


@dataclass(frozen=True, slots=True)
class Plan:
    model: str
    blocks: tuple[Block, ...]
    unit_count: int


def _address_points(regmap: RegisterMap, unit_count: int) -> list[tuple[int, int, PointSpec]]:
    """(unit, absolute address, point) for every point, units expanded."""
    out = [(0, p.address, p) for p in regmap.points]
    if regmap.units is not None:
        for n in range(1, unit_count + 1):
            base = regmap.units.base + regmap.units.stride * (n - 1)
            out += [(n, base + p.address, p) for p in regmap.units.points]
    return out


def _crosses_unreadable(regmap: RegisterMap, start: int, end: int) -> bool:
    return any(lo <= end and start <= hi for lo, hi in regmap.unreadable)


def compile_plan(regmap: RegisterMap, unit_count: int = 0) -> Plan:
    """Group points into the fewest reads allowed by the map's limits."""
    if unit_count and regmap.units is None:
        raise ConfigError(f"model {regmap.model!r} has no 'units' block, but units are configured")
    items = _address_points(regmap, unit_count)
    blocks: list[Block] = []
    for table in ("holding", "input", "coil", "discrete"):
        mine = sorted((i for i in items if regmap.table_of(i[2]) == table), key=lambda i: i[1])
        limit = min(regmap.max_registers, MAX_READ[table]) if table not in BIT_TABLES \
            else MAX_READ[table]
        current: list[tuple[int, int, PointSpec]] = []
        start = end = 0
        for item in mine:
            _, addr, point = item
            last = addr + TYPES[point.type][1] - 1
            if current and (
                addr - end - 1 > regmap.max_gap
                or max(end, last) - start + 1 > limit
                or (addr > end + 1 and _crosses_unreadable(regmap, end + 1, addr - 1))
            ):
                blocks.append(_block(regmap, table, start, end, current))
                current = []
            if not current:
                start, end = addr, last
            end = max(end, last)
            current.append(item)
        if current:
            blocks.append(_block(regmap, table, start, end, current))
    return Plan(regmap.model, tuple(blocks), unit_count)


def _block(regmap: RegisterMap, table: Table, start: int, end: int,
           items: list[tuple[int, int, PointSpec]]) -> Block:
    fields = []
    for unit, addr, p in items:
        code, count = TYPES[p.type]
        fields.append(
            Slot(
                unit=unit,
                name=p.name,
                offset=addr - start,
                count=count,
                struct_code=code,
                word_swap=(p.word_order or regmap.defaults.word_order) == "little",
                byte_swap=(p.byte_order or regmap.defaults.byte_order) == "little",
                scale=p.scale,
                add=p.offset,
                unit_label=p.unit,
                bit=p.bit,
                enum=p.enum,
                valid=p.valid,
            )
        )
    return Block(table, start, end - start + 1, tuple(fields))
