"""Energy meters: the campus loads seen through each meter model's real register map.

The maps are written from the manufacturers' public documentation, independently of
the gateway's map files (a wrong map should show up as a wrong reading, not cancel out):

Chint DTSU666 (three-phase), holding registers (FC03), float32, high word first (ABCD).
  Source: Chint "DTSU666 / DSSU666 series User Manual" (ZTW0.464.0104), Modbus map as
  transcribed in the mbmap library (maps/chint/dtsu666.mbmap.json, which notes the
  electricity block is in raw units: "a voltage of 2301.5 means 230.15 V"), cross-checked
  against gerontec/dtsu666 (README register list: 8192 Uab ... 8260 Freq, 16414 ImpEp,
  16424 ExpEp), michielfromNL's DTSU666 emulator (0x2000-0x2044 names, 0x0006 IrAt,
  0x0007 UrAt) and the ND45-to-DTSU666 bridge spec (scales: Uab..Uc x0.1 V, Ia..Ic
  x0.001 A, Pt..Pc x0.1 W, Qt..Qc x0.1 var, PFt..PFc x0.001, Freq x0.01 Hz).
    0x2000/02/04 Uab Ubc Uca, 0x2006/08/0A Ua Ub Uc (0.1 V); 0x200C/0E/10 Ia Ib Ic
    (0.001 A); 0x2012 Pt, 0x2014/16/18 Pa Pb Pc (0.1 W); 0x201A Qt, 0x201C/1E/20 Qa Qb Qc
    (0.1 var); 0x202A PFt, 0x202C/2E/30 PFa PFb PFc (0.001); 0x2044 Freq (0.01 Hz);
    0x401E ImpEp, 0x4028 ExpEp (kWh). Config words 0x0006 IrAt = 1, 0x0007 UrAt = 10
    (CT and VT ratio 1: the values are primary values).
  Some editions of the manual list the energy block at 1000H instead (ImpEp 0x101E, ExpEp
  0x1028): model `chint-dtsu666.energy-101e` is a meter of such an edition, answering
  there and not at 0x401E.
Chint DDSU666 (single-phase), holding registers (FC03), float32 ABCD, engineering units.
  Source: Chint DDSU666 manuals ZTY0.464.922 / ZTY0.464.1036 appendix A (as listed in the
  mbmap library, maps/chint/ddsu666.mbmap.json), cross-checked against Tasmota's
  xnrg_11_ddsu666.ino and a DDSU666 bridge register table.
    0x2000 U (V), 0x2002 I (A), 0x2004 P (kW), 0x2006 Q (kvar), 0x2008 S (kVA),
    0x200A PF, 0x200E Freq (Hz); 0x4000 Ep import (kWh), 0x400A reverse Ep (kWh).
  The meter answers function 04 with the same registers as 03: Tasmota's driver, among
  common tools, reads it with 04 (model `chint-ddsu666.fc04` names that way of reading).
Eastron SDM630 (three-phase), input registers (FC04), float32 ABCD, engineering units.
  Source: Eastron "SDM630 Modbus Protocol" (input register table), as in reaper7's
  SDM_Energy_Meter SDM.h and merlokk/SmartHome eastron.h.
    0x0000/02/04 V L1-N..L3-N; 0x0006/08/0A I (A); 0x000C/0E/10 P (W); 0x0012/14/16 VA;
    0x0018/1A/1C var; 0x001E/20/22 PF; 0x0024/26/28 phase angle (deg); 0x002A avg V;
    0x002E avg I; 0x0030 sum I; 0x0034 total W; 0x0038 total VA; 0x003C total var;
    0x003E total PF; 0x0042 total phase angle; 0x0046 Hz; 0x0048 import kWh;
    0x004A export kWh; 0x004C import kvarh; 0x004E export kvarh; 0x00C8/CA/CC V L1-L2,
    L2-L3, L3-L1; 0x00CE avg L-L V; 0x00E0 neutral I; 0x0156 total kWh; 0x0158 total kvarh.
  Setup parameters are holding registers (FC03), float32: 0x0002 demand period (min),
  0x000A system type (3 = three-phase four-wire), 0x001C baud rate (2 = 9600); model
  `eastron-sdm630.setup` reads two of them.

Undocumented words inside a served block read as 0, so block reads work; addresses outside
the blocks answer exception 02. Other function codes than those the meter answers
(`MeterMap.tables`, and FC03 for setup registers) answer 02 as well.

Physics: power is constant per simulated minute (profiles.Load), split over the phases
with a small seeded imbalance; reactive power from a per-minute power factor; voltages
and frequency change every 10 s (shared grid noise, per-meter phase offsets); currents
follow as I = P / (U x PF). Energy counters are the exact sum of the minutes.
"""

from __future__ import annotations

import cmath
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from decimal import Decimal

from pymodbus.constants import ExcCodes

from simulators.clock import SimClock
from simulators.noise import Noise
from simulators.profiles import Load
from simulators.registers import Layout, Span, Table, f32_decimal, f32_words, words_f32

VOLTAGE_BUCKET_S = 10.0
NOMINAL_V = 229.0
SINGLE_PHASE_PEAK_KW = 18.0  # what one single-phase meter's circuit (80 A) can carry


@dataclass(frozen=True)
class Field:
    """A float32 value: register address, measurement it shows, raw units per unit."""

    address: int
    source: str  # a key of Meter.measurements(), in V, A, kW, kvar, kVA, Hz, kWh, kvarh, °
    per_unit: float = 1.0  # register value = measurement x per_unit
    name: str | None = None  # canonical snapshot name


@dataclass(frozen=True)
class Setup:
    """A float32 setup parameter in the holding registers (FC03)."""

    address: int
    name: str
    value: float


@dataclass(frozen=True)
class MeterMap:
    model: str
    phases: int
    tables: tuple[Table, ...]  # the tables (function codes) that answer the measurements
    fields: tuple[Field, ...]
    spans: tuple[Span, ...]
    static_words: tuple[tuple[int, int], ...] = ()  # (address, uint16) configuration words
    setup: tuple[Setup, ...] = ()

    def layout(self) -> Layout:
        setup = tuple(Span(s.address, 2) for s in self.setup)
        holding = self.spans if Table.HOLDING in self.tables else ()
        return Layout(holding=holding + setup,
                      input=self.spans if Table.INPUT in self.tables else ())


def _abc(base: int, step: int, source: str, per_unit: float, name: str | None) -> list[Field]:
    return [Field(base + i * step, f"{source}_{p}", per_unit, f"{name}_{p}" if name else None)
            for i, p in enumerate("abc")]


DTSU666 = MeterMap(
    model="chint-dtsu666", phases=3, tables=(Table.HOLDING,),
    fields=(
        Field(0x2000, "u_ab", 10), Field(0x2002, "u_bc", 10), Field(0x2004, "u_ca", 10),
        *_abc(0x2006, 2, "u", 10, "voltage"),
        *_abc(0x200C, 2, "i", 1000, "current"),
        Field(0x2012, "p_total", 10_000, "power_total"),
        *_abc(0x2014, 2, "p", 10_000, "power"),
        Field(0x201A, "q_total", 10_000, "reactive_power_total"),
        *_abc(0x201C, 2, "q", 10_000, None),
        Field(0x202A, "pf_total", 1000, "power_factor"),
        *_abc(0x202C, 2, "pf", 1000, None),
        Field(0x2044, "frequency", 100, "frequency"),
        Field(0x401E, "energy_import", 1, "energy_import"),
        Field(0x4028, "energy_export", 1, "energy_export"),
    ),
    spans=(Span(0x0000, 8), Span(0x2000, 0x46), Span(0x401E, 12)),
    # REV, UCode, ClrE, net (0 = three-phase four-wire), -, -, IrAt, UrAt (x0.1).
    static_words=((0x0000, 204), (0x0001, 701), (0x0006, 1), (0x0007, 10)),
)

DDSU666 = MeterMap(
    model="chint-ddsu666", phases=1, tables=(Table.HOLDING, Table.INPUT),
    fields=(
        Field(0x2000, "u", 1, "voltage"),
        Field(0x2002, "i", 1, "current"),
        Field(0x2004, "p_total", 1, "power_total"),
        Field(0x2006, "q_total", 1, "reactive_power_total"),
        Field(0x2008, "s_total", 1),
        Field(0x200A, "pf_total", 1, "power_factor"),
        Field(0x200E, "frequency", 1, "frequency"),
        Field(0x4000, "energy_import", 1, "energy_import"),
        Field(0x400A, "energy_export", 1, "energy_export"),
    ),
    spans=(Span(0x2000, 16), Span(0x4000, 12)),
)

SDM630 = MeterMap(
    model="eastron-sdm630", phases=3, tables=(Table.INPUT,),
    fields=(
        *_abc(0x0000, 2, "u", 1, "voltage"),
        *_abc(0x0006, 2, "i", 1, "current"),
        *_abc(0x000C, 2, "p", 1000, "power"),
        *_abc(0x0012, 2, "s", 1000, None),
        *_abc(0x0018, 2, "q", 1000, None),
        *_abc(0x001E, 2, "pf", 1, None),
        *_abc(0x0024, 2, "angle", 1, None),
        Field(0x002A, "u_avg", 1), Field(0x002E, "i_avg", 1), Field(0x0030, "i_sum", 1),
        Field(0x0034, "p_total", 1000, "power_total"),
        Field(0x0038, "s_total", 1000),
        Field(0x003C, "q_total", 1000, "reactive_power_total"),
        Field(0x003E, "pf_total", 1, "power_factor"),
        Field(0x0042, "angle_total", 1),
        Field(0x0046, "frequency", 1, "frequency"),
        Field(0x0048, "energy_import", 1, "energy_import"),
        Field(0x004A, "energy_export", 1, "energy_export"),
        Field(0x004C, "reactive_import", 1), Field(0x004E, "reactive_export", 1),
        Field(0x00C8, "u_ab", 1), Field(0x00CA, "u_bc", 1), Field(0x00CC, "u_ca", 1),
        Field(0x00CE, "u_ll_avg", 1),
        Field(0x00E0, "i_n", 1),
        Field(0x0156, "energy_total", 1), Field(0x0158, "reactive_total", 1),
    ),
    spans=(Span(0x0000, 0x50), Span(0x00C8, 8), Span(0x00E0, 2), Span(0x0156, 4)),
    setup=(Setup(0x0002, "demand_period", 60.0), Setup(0x000A, "system_type", 3.0),
           Setup(0x001C, "baud_rate", 2.0)),
)

# A DTSU666 of the manual editions with the energy block at 1000H.
DTSU666_ENERGY_101E = replace(
    DTSU666, model="chint-dtsu666.energy-101e",
    fields=tuple(replace(f, address=f.address - 0x3000) if f.address >= 0x4000 else f
                 for f in DTSU666.fields),
    spans=tuple(Span(0x101E, s.count) if s.start == 0x401E else s for s in DTSU666.spans),
)

# Model ids as the site file names them (`<model>.<edition>` for editions and other ways
# of reading), each with the meter that answers them.
METER_MAPS = {m.model: m for m in (DTSU666, DDSU666, SDM630, DTSU666_ENERGY_101E)} | {
    "chint-ddsu666.fc04": DDSU666, "eastron-sdm630.setup": SDM630}


class EnergyCounter:
    """kWh = the exact sum of per-minute power; grows from a seeded reading at `origin`."""

    def __init__(self, per_minute_kw: Callable[[int], float], origin: float,
                 initial_kwh: float) -> None:
        self._power = per_minute_kw
        self._first = math.floor(origin / 60)
        self._initial = initial_kwh
        self._minute = self._first  # _acc is the reading at the start of this minute
        self._acc = initial_kwh
        self._offset = 0.0  # set when the meter is replaced

    def raw(self, t: float) -> float:
        t = max(t, self._first * 60.0)
        minute = math.floor(t / 60)
        if minute < self._minute:
            self._minute, self._acc = self._first, self._initial
        while self._minute < minute:
            self._acc += self._power(self._minute) / 60.0
            self._minute += 1
        return self._acc + self._power(minute) * (t - minute * 60.0) / 3600.0

    def reading(self, t: float) -> float:
        return self.raw(t) - self._offset

    def reset(self, t: float) -> None:
        """A new meter: the reading starts again from 0 at t."""
        self._offset = self.raw(t)

    def go_on_from(self, t: float, reading: float) -> None:
        """Read `reading` at t and count on from there (a simulation started again goes on
        from the last reading it stored, not from its seeded one)."""
        self._offset = self.raw(t) - reading


class Meter:
    """One energy meter on an RS485 line: a Modbus unit with a snapshot of what it shows."""

    def __init__(self, device_id: str, unit: int, meter_map: MeterMap, loads: Sequence[Load],
                 fraction: float, clock: SimClock, noise: Noise, origin: float) -> None:
        self.device_id = device_id
        self.unit = unit
        self.map = meter_map
        self.layout = meter_map.layout()
        self.loads = tuple(loads)
        self.fraction = fraction
        self.clock = clock
        self.noise = noise
        peak = sum(load.spec.peak_kw for load in self.loads) * fraction
        years = noise.between(0.2, 1.2, device_id, "age")
        initial = round(peak * 0.35 * 8760 * years, 2)
        self.import_counter = EnergyCounter(self.minute_kw, origin, initial)
        self.reactive_counter = EnergyCounter(self.minute_kvar, origin, round(initial * 0.4, 2))
        self._export_kwh = round(noise.between(0.0, 2.5, device_id, "export"), 2)
        self._phase_bias = [noise.between(-0.04, 0.04, device_id, "imbalance", p)
                            for p in range(3)]
        self._volt_bias = [noise.between(-2.0, 2.0, device_id, "volt", p) for p in range(3)]
        self._pf_bias = noise.between(-0.01, 0.01, device_id, "pf")

    # The physics, per simulated minute.
    def minute_kw(self, minute: int) -> float:
        return self.fraction * sum(load.minute_kw(minute) for load in self.loads)

    def minute_pf(self, minute: int) -> float:
        powers = [load.minute_kw(minute) for load in self.loads]
        apparent = sum(p / load.spec.power_factor for p, load in zip(powers, self.loads,
                                                                       strict=True))
        pf = sum(powers) / apparent if apparent > 0 else 0.95
        pf += self._pf_bias + 0.004 * self.noise.gauss(self.device_id, "pf", minute)
        return min(0.995, max(0.5, pf))

    def minute_kvar(self, minute: int) -> float:
        pf = self.minute_pf(minute)
        return self.minute_kw(minute) * math.tan(math.acos(pf))

    def energy_import(self, t: float | None = None) -> float:
        """kWh in float64, before the register's float32 rounding."""
        return self.import_counter.reading(self.clock.now() if t is None else t)

    def go_on_from(self, reading: float) -> None:
        """The import counter reads `reading` now and counts on from there."""
        self.import_counter.go_on_from(self.clock.now(), reading)

    def reset(self) -> None:
        """Meter replaced: the counters start again from 0 now."""
        t = self.clock.now()
        self.import_counter.reset(t)
        self.reactive_counter.reset(t)
        self._export_kwh = 0.0

    def measurements(self, t: float) -> dict[str, float]:
        """Every quantity the maps show, in V, A, kW, kvar, kVA, Hz, kWh, kvarh, degrees."""
        minute = math.floor(t / 60)
        bucket = math.floor(t / VOLTAGE_BUCKET_S) * VOLTAGE_BUCKET_S
        p_total = self.minute_kw(minute)
        pf = self.minute_pf(minute)
        # Shared grid: the same frequency and voltage swing for every meter on campus.
        frequency = 50.0 + max(-0.08, min(0.08, 0.025 * self.noise.smooth(
            bucket, 30.0, "grid-frequency")))
        grid_v = NOMINAL_V + 1.5 * self.noise.smooth(bucket, 600.0, "grid-voltage")
        m: dict[str, float] = {
            "frequency": frequency,
            "energy_import": self.import_counter.reading(t),
            "energy_export": self._export_kwh,
            "reactive_import": self.reactive_counter.reading(t),
            "reactive_export": 0.0,
        }
        m["energy_total"] = m["energy_import"] + m["energy_export"]
        m["reactive_total"] = m["reactive_import"]
        if self.map.phases == 1:
            u = grid_v + self._volt_bias[0] + 0.3 * self.noise.gauss(self.device_id, "u", bucket)
            q = p_total * math.tan(math.acos(pf))
            m.update(u=u, i=p_total * 1000 / (u * pf), p_total=p_total, q_total=q,
                     s_total=math.hypot(p_total, q), pf_total=pf)
            return m
        weights = [1 + self._phase_bias[k]
                   + 0.01 * self.noise.gauss(self.device_id, "share", minute, k)
                   for k in range(3)]
        total_w = sum(weights)
        phasors = []
        for k, p in enumerate("abc"):
            u = grid_v + self._volt_bias[k] + 0.3 * self.noise.gauss(self.device_id, "u",
                                                                     bucket, k)
            pf_k = min(0.999, max(0.5, pf + 0.006 * self.noise.gauss(self.device_id, "pfk",
                                                                      minute, k)))
            p_k = p_total * weights[k] / total_w
            q_k = p_k * math.tan(math.acos(pf_k))
            i_k = p_k * 1000 / (u * pf_k)
            angle = math.degrees(math.acos(pf_k))
            m.update({f"u_{p}": u, f"p_{p}": p_k, f"q_{p}": q_k, f"s_{p}": math.hypot(p_k, q_k),
                      f"pf_{p}": pf_k, f"i_{p}": i_k, f"angle_{p}": angle})
            # Current phasor: phase k's voltage angle minus the lag of its power factor.
            phasors.append(cmath.rect(i_k, math.radians(-120 * k) - math.acos(pf_k)))
        for a, b in (("a", "b"), ("b", "c"), ("c", "a")):
            ua, ub = m[f"u_{a}"], m[f"u_{b}"]
            m[f"u_{a}{b}"] = math.sqrt(ua * ua + ub * ub + ua * ub)  # 120° apart
        m["p_total"] = sum(m[f"p_{p}"] for p in "abc")
        m["q_total"] = sum(m[f"q_{p}"] for p in "abc")
        m["s_total"] = math.hypot(m["p_total"], m["q_total"])  # vector sum: PFt = Pt / St
        m["pf_total"] = m["p_total"] / m["s_total"] if m["s_total"] > 0 else 1.0
        m["angle_total"] = math.degrees(math.acos(min(1.0, m["pf_total"])))
        m["u_avg"] = sum(m[f"u_{p}"] for p in "abc") / 3
        m["u_ll_avg"] = (m["u_ab"] + m["u_bc"] + m["u_ca"]) / 3
        m["i_sum"] = sum(m[f"i_{p}"] for p in "abc")
        m["i_avg"] = m["i_sum"] / 3
        m["i_n"] = abs(sum(phasors))
        return m

    # What the registers hold.
    def words(self, t: float | None = None) -> dict[int, int]:
        values = self.measurements(self.clock.now() if t is None else t)
        words = dict(self.map.static_words)
        for field in self.map.fields:
            hi, lo = f32_words(values[field.source] * field.per_unit)
            words[field.address] = hi
            words[field.address + 1] = lo
        return words

    def setup_words(self) -> dict[int, int]:
        words: dict[int, int] = {}
        for setup in self.map.setup:
            words[setup.address], words[setup.address + 1] = f32_words(setup.value)
        return words

    def snapshot(self) -> dict[str, float]:
        """The canonical quantities exactly as the registers encode them.

        A register's value is the shortest decimal that reads back as its float32; a scaled
        one is that decimal divided exactly by its scale (10, 1000, ...), then the nearest
        double: a DTSU666 Ua register of 2301.5 gives voltage_a 230.15; powers are in kW.
        """
        words = self.words()
        snapshot: dict[str, float] = {}
        for field in self.map.fields:
            if field.name is None:
                continue
            raw = words_f32([words[field.address], words[field.address + 1]])
            snapshot[field.name] = float(f32_decimal(raw) / Decimal(field.per_unit))
        return snapshot

    def setup_snapshot(self) -> dict[str, float]:
        """The setup parameters (holding registers), exactly as the registers encode them."""
        return {s.name: float(f32_decimal(s.value)) for s in self.map.setup}

    # The Modbus unit.
    def read_registers(self, table: Table, address: int, count: int) -> list[int]:
        words = self.words() if table in self.map.tables else {}
        if table is Table.HOLDING:
            words.update(self.setup_words())
        return [words.get(a, 0) for a in range(address, address + count)]

    def read_bits(self, table: Table, address: int, count: int) -> list[bool]:
        return [False] * count

    def write_registers(self, address: int, values: list[int]) -> ExcCodes | None:
        return ExcCodes.ILLEGAL_ADDRESS  # configuration needs the meter's password

    def write_bits(self, address: int, values: list[bool]) -> ExcCodes | None:
        return ExcCodes.ILLEGAL_ADDRESS
