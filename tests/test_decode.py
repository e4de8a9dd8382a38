"""Our register decoder against pymodbus's own converters and exact arithmetic, property-based."""

from __future__ import annotations

import math
import random
import struct
from decimal import ROUND_CEILING, ROUND_FLOOR, Decimal
from fractions import Fraction

import pytest
from hypothesis import given
from hypothesis import strategies as st
from pymodbus.client.mixin import ModbusClientMixin

from facility.modbusmaps import TYPES
from facility.scalar import Scalar
from gateway.modbus.decode import convert, raw_word_value
from gateway.modbus.registermap import Slot

DT = ModbusClientMixin.DATATYPE
PYMODBUS = {"int16": DT.INT16, "uint16": DT.UINT16, "int32": DT.INT32, "uint32": DT.UINT32,
            "int64": DT.INT64, "uint64": DT.UINT64, "float32": DT.FLOAT32, "float64": DT.FLOAT64}


def slot(type_: str, word_little: bool, byte_little: bool = False) -> Slot:
    code, count = TYPES[type_]
    return Slot(unit=0, name="x", offset=0, count=count, struct_code=code,
                word_swap=word_little, byte_swap=byte_little, scale=1.0, add=0.0,
                unit_label="", bit=None, enum=None, valid=None)


registers = st.lists(st.integers(0, 0xFFFF), min_size=4, max_size=4)


@given(registers, st.sampled_from(sorted(PYMODBUS)), st.booleans())
def test_matches_pymodbus(regs: list[int], type_: str, little: bool) -> None:
    count = TYPES[type_][1]
    words = regs[:count]
    ours = raw_word_value(slot(type_, little), words)
    theirs = ModbusClientMixin.convert_from_registers(
        words, PYMODBUS[type_], word_order="little" if little else "big")
    if isinstance(theirs, float) and math.isnan(theirs):
        assert isinstance(ours, float) and math.isnan(ours)
    else:
        assert ours == theirs


@given(st.floats(width=32, allow_nan=False), st.booleans(), st.booleans())
def test_byte_swapped_float32(value: float, word_little: bool, byte_little: bool) -> None:
    """BADC and DCBA, which pymodbus does not convert: encode by hand, decode with ours."""
    hi, lo = struct.unpack(">HH", struct.pack(">f", value))
    words = [lo, hi] if word_little else [hi, lo]
    if byte_little:
        words = [((w & 0xFF) << 8) | (w >> 8) for w in words]
    assert raw_word_value(slot("float32", word_little, byte_little), words) == value


# Exact values. The expectations below are computed independently of decode.py: the
# shortest decimal by exact arithmetic on the float32's rounding interval, the scaling
# with fractions.


def f32_of_bits(bits: int) -> float:
    return float(struct.unpack(">f", struct.pack(">I", bits))[0])


def reads_back(d: Decimal, bits: int) -> bool:
    """Does the decimal d round (to nearest, ties to even) to the float32 with these bits?"""
    x = f32_of_bits(bits)
    magnitude = bits & 0x7FFFFFFF
    # Neighbours in magnitude; the largest finite float32's upper bound is where rounding
    # would go to infinity (2**128 - 2**103).
    below = f32_of_bits(magnitude - 1) if magnitude else -f32_of_bits(1)
    above = f32_of_bits(magnitude + 1) if magnitude < 0x7F7FFFFF else 2.0**128
    ax = Fraction(abs(x))
    lo, hi = (ax + Fraction(below)) / 2, (ax + Fraction(above)) / 2
    v = abs(Fraction(d))
    if x != 0 and (d < 0) != (bits >> 31 == 1):
        return False
    even = magnitude % 2 == 0
    return (lo < v < hi) or (even and v in (lo, hi))


def shortest_decimal(bits: int) -> Decimal:
    """The shortest decimal that reads back as the float32; the nearest of those."""
    x = Decimal(f32_of_bits(bits))  # exact
    if x == 0:
        return Decimal(0)
    for digits in range(1, 10):
        exp = x.adjusted() - digits + 1
        quantum = Decimal(1).scaleb(exp)
        down = x.quantize(quantum, rounding=ROUND_FLOOR)
        up = x.quantize(quantum, rounding=ROUND_CEILING)
        fits = [d for d in {down, up} if reads_back(d, bits)]
        if fits:
            return min(fits, key=lambda d: (abs(d - x), d.as_tuple().digits[-1] % 2))
    raise AssertionError(f"no decimal of 9 digits reads back as {bits:#010x}")


def decode_f32(bits: int, scale: float = 1.0, add: float = 0.0) -> Scalar | None:
    s = replace_scale(slot("float32", False), scale, add)
    value, error = convert(s, raw_word_value(s, [bits >> 16, bits & 0xFFFF]))
    assert error is None, error
    return value


def replace_scale(s: Slot, scale: float, add: float) -> Slot:
    return Slot(unit=s.unit, name=s.name, offset=s.offset, count=s.count,
                struct_code=s.struct_code, word_swap=s.word_swap, byte_swap=s.byte_swap,
                scale=scale, add=add, unit_label="", bit=None, enum=None, valid=None)


def finite(bits: int) -> bool:
    return (bits >> 23) & 0xFF != 0xFF


def sample_bit_patterns() -> list[int]:
    """Every exponent, random mantissas; 2**24 and its neighbours; subnormals; the largest."""
    rng = random.Random(20261206)
    out = [rng.getrandbits(32) for _ in range(4_000)]
    for exponent in range(255):
        out += [(sign << 31) | (exponent << 23) | rng.getrandbits(23)
                for sign in (0, 1) for _ in range(4)]
    two24 = 0x4B800000  # 2**24: the last exact integer step of a float32
    out += [two24 + k for k in range(-8, 9)] + [two24 | 0x80000000]
    out += list(range(0, 64)) + [0x007FFFFF - k for k in range(16)] + [0x00800000]
    out += [0x7F7FFFFF - k for k in range(8)] + [0xFF7FFFFF, 0x80000001, 0x80000000]
    return [b for b in out if finite(b)]


def test_float32_is_its_shortest_decimal_over_many_bit_patterns() -> None:
    for bits in sample_bit_patterns():
        value = decode_f32(bits)
        assert isinstance(value, float)
        want = shortest_decimal(bits)
        assert value == float(want), (hex(bits), value, want)
        # The stored double reads back as that decimal (at most 9 digits).
        assert Decimal(repr(value)) == want, (hex(bits), value)
        # And back as the same float32.
        assert struct.pack(">f", value) == struct.pack(">I", bits), hex(bits)


@given(st.integers(0, 0xFFFFFFFF).filter(finite))
def test_float32_shortest_decimal_property(bits: int) -> None:
    assert decode_f32(bits) == float(shortest_decimal(bits))


@pytest.mark.parametrize(("value", "expected"), [
    (3456789.25, 3456789.2),  # the nearest of 3456789.2 / .3, both 8 digits
    (12345678.0, 12345678.0),  # not 12345680, another float32
    (16777216.0, 16777216.0),
    (16777218.0, 16777218.0),
    (16777215.0, 16777215.0),
    (123456.703125, 123456.7),
    (1.401298464324817e-45, 1e-45),
    (3.4028234663852886e38, 3.4028235e38),
])
def test_known_float32_values(value: float, expected: float) -> None:
    bits = struct.unpack(">I", struct.pack(">f", value))[0]
    assert decode_f32(bits) == expected


@given(st.integers(0, 0xFFFFFFFF).filter(finite),
       st.sampled_from(["0.1", "0.01", "0.001", "0.0001", "2.5", "10", "0.3"]),
       st.sampled_from(["0", "10", "-273.15"]))
def test_scaled_float32_is_the_exact_decimal_product(bits: int, scale: str, add: str) -> None:
    exact = Fraction(shortest_decimal(bits)) * Fraction(scale) + Fraction(add)
    assert decode_f32(bits, float(scale), float(add)) == float(exact)


@given(st.integers(-0x8000, 0x7FFF), st.sampled_from(["0.1", "0.01", "0.001", "0.5", "2.5"]),
       st.sampled_from(["0", "10", "-40", "0.05"]))
def test_scaled_integers_are_exact_decimals(raw: int, scale: str, add: str) -> None:
    s = replace_scale(slot("int16", False), float(scale), float(add))
    value, error = convert(s, raw)
    assert error is None
    assert value == float(Fraction(raw) * Fraction(scale) + Fraction(add))


def test_2314_times_a_tenth_is_231_4() -> None:
    value, _ = convert(replace_scale(slot("uint16", False), 0.1, 0.0), 2314)
    assert value == 231.4 and repr(value) == "231.4"


@given(st.sampled_from(["int64", "uint64"]), st.integers(0, 2**64 - 1))
def test_64_bit_integers_stay_exact_or_are_refused(type_: str, raw_bits: int) -> None:
    words = [(raw_bits >> s) & 0xFFFF for s in (48, 32, 16, 0)]
    s = slot(type_, False)
    raw = raw_word_value(s, words)
    value, error = convert(s, raw)
    if abs(raw) <= 2**53 or int(float(raw)) == raw:
        assert error is None and type(value) is int and value == raw
    else:
        assert value is None and error is not None and "float64" in error


def test_integers_beyond_2_53_are_refused_with_the_reason() -> None:
    s = slot("uint64", False)
    assert convert(s, 2**53) == (2**53, None)
    assert convert(s, 2**60) == (2**60, None)  # a double holds it exactly
    value, error = convert(s, 2**53 + 1)
    assert value is None and error is not None
    assert str(2**53 + 1) in error and "refused" in error


def test_a_scaled_value_with_more_digits_than_a_double_is_refused() -> None:
    s = replace_scale(slot("uint64", False), 0.001, 0.0)
    assert convert(s, 12_345_678_901_234) == (12_345_678_901.234, None)
    value, error = convert(s, 12_345_678_901_234_567)
    assert value is None and error is not None and "12345678901234.567" in error
