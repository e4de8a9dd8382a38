"""Register tables, address spans and the word encodings the device maps use.

A simulated Modbus device declares which addresses exist in which table (a `Layout`),
and reads and writes 16-bit words and bits. The encoders here turn physical values into
words: IEEE 754 float32 and uint32 in either word order (ABCD: high word at the lower
address; CDAB: low word first, as Modicon PLCs do), and two's-complement int16.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass
from decimal import Decimal
from enum import IntEnum
from typing import Protocol

import numpy as np
from pymodbus.constants import ExcCodes


class Table(IntEnum):
    COILS = 0
    DISCRETE_INPUTS = 1
    HOLDING = 2
    INPUT = 3


TABLE_OF_FUNCTION = {
    1: Table.COILS, 5: Table.COILS, 15: Table.COILS,
    2: Table.DISCRETE_INPUTS,
    3: Table.HOLDING, 6: Table.HOLDING, 16: Table.HOLDING, 22: Table.HOLDING, 23: Table.HOLDING,
    4: Table.INPUT,
}


@dataclass(frozen=True)
class Span:
    """Consecutive addresses that exist; `writable` ones accept writes."""

    start: int
    count: int
    writable: bool = False

    def __post_init__(self) -> None:
        if self.count < 1 or self.start < 0 or self.end > 0x10000:
            raise ValueError(f"bad span {self.start}+{self.count}")

    @property
    def end(self) -> int:
        return self.start + self.count


@dataclass(frozen=True)
class Layout:
    coils: tuple[Span, ...] = ()
    discrete_inputs: tuple[Span, ...] = ()
    holding: tuple[Span, ...] = ()
    input: tuple[Span, ...] = ()

    def spans(self, table: Table) -> tuple[Span, ...]:
        return (self.coils, self.discrete_inputs, self.holding, self.input)[table]

    def covers(self, table: Table, address: int, count: int, *, write: bool = False) -> bool:
        """True if every address in [address, address + count) exists (and is writable)."""
        needed = address
        end = address + count
        for span in sorted(self.spans(table), key=lambda s: s.start):
            if span.start <= needed < span.end and (span.writable or not write):
                needed = span.end
                if needed >= end:
                    return True
        return count > 0 and needed >= end


class ModbusUnit(Protocol):
    """What a Modbus server needs from a simulated device behind one unit id."""

    unit: int
    layout: Layout

    def read_registers(self, table: Table, address: int, count: int) -> list[int]: ...

    def read_bits(self, table: Table, address: int, count: int) -> list[bool]: ...

    def write_registers(self, address: int, values: list[int]) -> ExcCodes | None: ...

    def write_bits(self, address: int, values: list[bool]) -> ExcCodes | None: ...


def f32(value: float) -> float:
    """The float32 nearest to value, as a Python float."""
    result: float = struct.unpack(">f", struct.pack(">f", value))[0]
    return result


def f32_decimal(value: float) -> Decimal:
    """The shortest decimal that reads back as the float32 nearest to value (numpy's
    Dragon4): what a float32 register says, digit for digit."""
    return Decimal(np.format_float_scientific(np.float32(value), unique=True))


def f32_words(value: float, *, low_word_first: bool = False) -> list[int]:
    hi, lo = struct.unpack(">HH", struct.pack(">f", value))
    return [lo, hi] if low_word_first else [hi, lo]


def words_f32(words: list[int], *, low_word_first: bool = False) -> float:
    hi, lo = (words[1], words[0]) if low_word_first else (words[0], words[1])
    result: float = struct.unpack(">f", struct.pack(">HH", hi, lo))[0]
    return result


def u32_words(value: int, *, low_word_first: bool = False) -> list[int]:
    value &= 0xFFFFFFFF
    hi, lo = value >> 16, value & 0xFFFF
    return [lo, hi] if low_word_first else [hi, lo]


def words_u32(words: list[int], *, low_word_first: bool = False) -> int:
    hi, lo = (words[1], words[0]) if low_word_first else (words[0], words[1])
    return (hi << 16) | lo


def int16_word(value: int) -> int:
    if not -0x8000 <= value <= 0x7FFF:
        value = max(-0x8000, min(0x7FFF, value))
    return value & 0xFFFF


def word_int16(word: int) -> int:
    return word - 0x10000 if word & 0x8000 else word
