"""The south-gate bollard PLC (`bollard-plc-v1`), as docs/devices/bollard-plc.md defines it.

42 hydraulic bollards behind one controller. Motion is computed, not stepped: a moving
bollard knows where and when it started, so its position at any simulated time follows
exactly (raise 4 s, lower 3 s, emergency fast rise 1.5 s over the full stroke), and the
events (arrival, 10 s travel timeout, vehicles at the lane) are applied in time order
whenever the PLC is read, written or asked for a snapshot.

Campus behaviour: every bollard stands up day and night; on weekdays in office hours
(08:30-12:00, 14:30-18:00 local time) vehicles arrive at random (seeded, about one every
four minutes): the access system lowers the lane bollards 19-24, the car stands on the
vehicle loop while it passes, and the lane rises again once the loop is clear. The
vehicle logic only acts in auto mode with no emergency rise latched.

Command semantics beyond the page, chosen to be safe and explicit:
- The emergency fast rise (command 3, coil 0) switches the mode to emergency and latches:
  lowering (commands 2 and 6, target down) is then refused with result 4 until a fault
  reset (command 4, coil 1), which also returns the mode to what it was.
- Direct writes (the per-bollard target register, coils 10-51) that an interlock or the
  mode refuses, and target values other than 1 and 2, are answered with exception 03
  (illegal data value) and change nothing; a multi-coil write is all or nothing.
- A fault reset clears faulted bollards: one at an end position stays there; one stuck
  in between lowers (hydraulic bollards drop when the pressure is released).
"""

from __future__ import annotations

import functools
import heapq
import math
from collections.abc import Callable
from dataclasses import dataclass
from enum import IntEnum
from typing import Any

from pymodbus.constants import ExcCodes

from simulators.clock import SimClock
from simulators.noise import Noise
from simulators.registers import (
    Layout,
    Span,
    Table,
    f32_words,
    int16_word,
    u32_words,
    word_int16,
    words_f32,
    words_u32,
)
from simulators.weather import Calendar, Weather

FULL = 1000.0  # position register units (0.1 %)
RAISE_S = 4.0
LOWER_S = 3.0
FAST_S = 1.5
TIMEOUT_S = 10.0
LANE = range(19, 25)
VEHICLE_MEAN_GAP_S = 240.0
OFFICE_HOURS = ((8.5, 12.0), (14.5, 18.0))
HEAT_TAU_S = 1800.0
PER_BOLLARD = 20
FIRST_BOLLARD = 100


class State(IntEnum):
    DOWN = 0
    RISING = 1
    UP = 2
    LOWERING = 3
    FAULT = 4


class Target(IntEnum):
    NONE = 0
    UP = 1
    DOWN = 2


class Mode(IntEnum):
    AUTO = 0
    MANUAL = 1
    MAINTENANCE = 2
    EMERGENCY = 3


class EmergencyRise(IntEnum):
    IDLE = 0
    RISING = 1
    COMPLETE = 2


class Power(IntEnum):
    MAINS = 0
    UPS = 1
    UPS_LOW = 2


class FaultCode(IntEnum):
    NONE = 0
    PRESSURE_LOW = 1
    MOTOR_OVERLOAD = 2
    POSITION_SENSOR = 3
    TRAVEL_TIMEOUT = 4
    OIL_OVERTEMP = 5
    OBSTRUCTION = 6


class Command(IntEnum):
    RAISE_ALL = 1
    LOWER_ALL = 2
    EMERGENCY_RISE = 3
    RESET_FAULTS = 4
    RAISE_ONE = 5
    LOWER_ONE = 6


class Result(IntEnum):
    NONE = 0
    ACCEPTED = 1
    INTERLOCK = 2
    INVALID = 3
    MODE = 4


@dataclass
class Bollard:
    n: int
    state: State = State.UP
    target: Target = Target.UP
    position: float = FULL  # where it is, or where its current move started
    fault: FaultCode = FaultCode.NONE
    cycles: int = 0
    stuck: bool = False
    move_start: float | None = None
    speed: float = 0.0
    fast: bool = False
    heat: float = 0.0  # oil warming from recent strokes, °C, as of heat_t
    heat_t: float = 0.0

    @property
    def moving(self) -> bool:
        return self.move_start is not None

    @property
    def destination(self) -> float:
        return FULL if self.target is Target.UP else 0.0

    def position_at(self, t: float) -> float:
        if self.move_start is None or self.stuck:
            return self.position
        travelled = self.speed * max(0.0, t - self.move_start)
        if self.destination > self.position:
            return min(self.destination, self.position + travelled)
        return max(self.destination, self.position - travelled)

    def arrival(self) -> float | None:
        if self.move_start is None or self.stuck:
            return None
        return self.move_start + abs(self.destination - self.position) / self.speed

    def next_event(self) -> float | None:
        if self.move_start is None:
            return None
        deadline = self.move_start + TIMEOUT_S
        arrival = self.arrival()
        return deadline if arrival is None else min(arrival, deadline)

    def heat_at(self, t: float) -> float:
        return self.heat * math.exp(-max(0.0, t - self.heat_t) / HEAT_TAU_S)


class BollardPlc:
    """The PLC: group state, 42 bollards, the command interface and the lane traffic."""

    def __init__(self, device_id: str, unit: int, count: int, clock: SimClock, noise: Noise,
                 calendar: Calendar, weather: Weather) -> None:
        self.device_id = device_id
        self.unit = unit
        self.clock = clock
        self.noise = noise
        self.calendar = calendar
        self.weather = weather
        origin = clock.now()
        self.origin = origin
        self.bollards = [Bollard(n) for n in range(1, count + 1)]
        for b in self.bollards:
            # Lane bollards cycle for every car; the rest only in drills and maintenance.
            low, high = (150_000, 260_000) if b.n in LANE else (300, 1200)
            b.cycles = noise.integer(low, high, device_id, "cycles", b.n)
            b.heat_t = origin
        self.mode = Mode.AUTO
        self._mode_before_emergency = Mode.AUTO
        self.emergency = EmergencyRise.IDLE
        self.door_open = False
        self.cmd_code = 0
        self.cmd_arg = 0
        self.cmd_seq = 0
        self.cmd_ack_seq = 0
        self.cmd_result = Result.NONE
        self._heartbeat0 = noise.integer(0, 65535, device_id, "heartbeat")
        self._ups_full = noise.integer(96, 100, device_id, "ups")
        self._mains = True
        self._ups_event = (origin, float(self._ups_full))  # (time, charge then)
        self._loop_vehicle = False
        self._loop_forced: bool | None = None
        self._vehicle_busy = False
        self._events: list[tuple[float, int, str, float]] = []
        self._event_seq = 0
        self._planned_day = calendar.day(origin)
        self._t = origin
        self.layout = _layout(count)

    # Time.
    def update(self, now: float | None = None) -> float:
        """Apply every event up to now (default: the clock); returns the time used."""
        now = self.clock.now() if now is None else now
        if now < self._t:
            return self._t  # the clock never goes back; nothing to redo
        self._plan_vehicles(now)
        while True:
            when, apply = self._next_event()
            if apply is None or when > now:
                break
            self._t = max(self._t, when)
            apply(when)
        self._t = now
        return now

    def _next_event(self) -> tuple[float, Callable[[float], None] | None]:
        best: tuple[float, Callable[[float], None] | None] = (math.inf, None)
        for b in self.bollards:
            t = b.next_event()
            if t is not None and t < best[0]:
                best = (t, functools.partial(self._settle, b))
        if self._events and self._events[0][0] < best[0]:
            best = (self._events[0][0], self._vehicle_event)
        return best

    # Bollard motion.
    def _move(self, b: Bollard, t: float, target: Target, *, fast: bool = False) -> None:
        if b.state is State.FAULT:
            return
        position = b.position_at(t)
        b.position = position
        b.target = target
        if position == b.destination:
            b.move_start = None
            b.state = State.UP if target is Target.UP else State.DOWN
            return
        b.move_start = t
        b.fast = fast
        seconds = FAST_S if fast else (RAISE_S if target is Target.UP else LOWER_S)
        b.speed = FULL / seconds
        b.state = State.RISING if target is Target.UP else State.LOWERING

    def _settle(self, b: Bollard, t: float) -> None:
        arrival = b.arrival()
        if arrival is not None and arrival <= t + 1e-9:
            b.position = b.destination
            b.state = State.UP if b.target is Target.UP else State.DOWN
            if b.target is Target.UP:
                b.cycles += 1
            b.heat = b.heat_at(t) + (0.8 if b.fast else 0.5)
            b.heat_t = t
        else:
            b.position = b.position_at(t)
            b.state = State.FAULT
            b.fault = FaultCode.TRAVEL_TIMEOUT
            b.target = Target.NONE
        b.move_start = None
        b.fast = False
        self._check_emergency()

    def _check_emergency(self) -> None:
        if self.emergency is EmergencyRise.RISING and all(
                b.state in (State.UP, State.FAULT) for b in self.bollards):
            self.emergency = EmergencyRise.COMPLETE

    # Lane traffic.
    def _plan_vehicles(self, now: float) -> None:
        while self._planned_day <= self.calendar.day(now):
            day = self._planned_day
            self._planned_day += 1
            midnight = self.calendar.midnight(day)
            if not self.calendar.workday(midnight + 12 * 3600):
                continue
            rng = self.noise.rng("vehicles", self.device_id, day)
            for start_h, end_h in OFFICE_HOURS:
                t = midnight + start_h * 3600 + rng.expovariate(1 / VEHICLE_MEAN_GAP_S)
                while t < midnight + end_h * 3600:
                    if t >= self.origin:
                        self._push(t, "arrive", rng.uniform(3.0, 8.0))
                    t += rng.expovariate(1 / VEHICLE_MEAN_GAP_S)

    def _push(self, t: float, kind: str, dwell: float = 0.0) -> None:
        self._event_seq += 1
        heapq.heappush(self._events, (t, self._event_seq, kind, dwell))

    def _lane(self) -> list[Bollard]:
        return [b for b in self.bollards if b.n in LANE]

    def _vehicle_event(self, t: float) -> None:
        _, _, kind, dwell = heapq.heappop(self._events)
        lane = [b for b in self._lane() if b.state is not State.FAULT]
        automatic = self.mode is Mode.AUTO and self.emergency is EmergencyRise.IDLE
        if kind == "arrive":
            if (automatic and not self._vehicle_busy and self.power is not Power.UPS_LOW
                    and lane and all(b.state is State.UP for b in lane)):
                self._vehicle_busy = True
                for b in lane:
                    self._move(b, t, Target.DOWN)
                self._push(t + LOWER_S + 0.5, "enter", dwell)
        elif kind == "enter":
            if all(b.state is State.DOWN for b in lane):
                self._loop_vehicle = True
                self._push(t + dwell, "leave")
            else:
                self._push(t, "close")  # somebody raised the lane meanwhile: no car
        elif kind == "leave":
            self._loop_vehicle = False
            self._push(t + 2.0, "close")
        elif kind == "close":
            self._vehicle_busy = False
            if automatic and not self.loop_occupied:
                for b in lane:
                    if b.target is Target.DOWN:
                        self._move(b, t, Target.UP)

    # Group state.
    @property
    def loop_occupied(self) -> bool:
        return self._loop_vehicle if self._loop_forced is None else self._loop_forced

    @property
    def mains(self) -> bool:
        return self._mains

    def ups_charge(self, t: float) -> float:
        since, charge = self._ups_event
        if self._mains:
            return min(float(self._ups_full), charge + 0.5 * (t - since) / 60)
        return max(0.0, charge - 1.2 * (t - since) / 60)

    @property
    def power(self) -> Power:
        if self._mains:
            return Power.MAINS
        return Power.UPS_LOW if self.ups_charge(self._t) < 20 else Power.UPS

    # Commands: the cmd_code/cmd_arg/cmd_seq interface.
    def command(self, code: int, arg: int, seq: int) -> Result | None:
        """The master wrote registers 20-22; act once per new sequence number."""
        t = self.update()
        self.cmd_code, self.cmd_arg, self.cmd_seq = code, arg, seq
        if seq == 0 or seq == self.cmd_ack_seq:  # 0 is no sequence number (they are 1-65535)
            return None
        result = self._execute(t, code, arg)
        self.cmd_ack_seq = seq
        self.cmd_result = result
        return result

    def _execute(self, t: float, code: int, arg: int) -> Result:
        try:
            command = Command(code)
        except ValueError:
            return Result.INVALID
        if command in (Command.RAISE_ONE, Command.LOWER_ONE) and not (
                1 <= arg <= len(self.bollards)):
            return Result.INVALID
        if command is Command.RESET_FAULTS:
            self._reset(t)
            return Result.ACCEPTED
        if command is Command.EMERGENCY_RISE:
            self._emergency_rise(t)
            return Result.ACCEPTED
        raising = command in (Command.RAISE_ALL, Command.RAISE_ONE)
        refused = self._refusal(raising, self.bollards[arg - 1] if arg else None)
        if refused is not None:
            return refused
        target = Target.UP if raising else Target.DOWN
        if command in (Command.RAISE_ALL, Command.LOWER_ALL):
            for b in self.bollards:
                self._move(b, t, target)
        else:
            self._move(self.bollards[arg - 1], t, target)
        return Result.ACCEPTED

    def _refusal(self, raising: bool, bollard: Bollard | None) -> Result | None:
        if self.mode is Mode.MAINTENANCE:
            return Result.MODE
        if not raising and self.mode is Mode.EMERGENCY:
            return Result.MODE
        if raising and self.loop_occupied:
            return Result.INTERLOCK
        if bollard is not None and bollard.state is State.FAULT:
            return Result.INTERLOCK
        return None

    def _emergency_rise(self, t: float) -> None:
        if self.mode is not Mode.EMERGENCY:
            self._mode_before_emergency = self.mode
        self.mode = Mode.EMERGENCY
        self.emergency = EmergencyRise.RISING
        for b in self.bollards:
            if b.state is not State.UP:
                self._move(b, t, Target.UP, fast=True)
        self._check_emergency()

    def _reset(self, t: float) -> None:
        for b in self.bollards:
            if b.state is not State.FAULT:
                continue
            b.fault = FaultCode.NONE
            if b.position >= FULL - 10:
                b.position, b.state, b.target = FULL, State.UP, Target.UP
            elif b.position <= 10:
                b.position, b.state, b.target = 0.0, State.DOWN, Target.DOWN
            else:
                b.state = State.LOWERING  # so that _move accepts it
                self._move(b, t, Target.DOWN)
        if self.emergency is not EmergencyRise.IDLE or self.mode is Mode.EMERGENCY:
            self.emergency = EmergencyRise.IDLE
            self.mode = self._mode_before_emergency

    # Direct writes: target register and coils.
    def set_target(self, n: int, target: Target) -> Result:
        t = self.update()
        if target not in (Target.UP, Target.DOWN) or not 1 <= n <= len(self.bollards):
            return Result.INVALID
        b = self.bollards[n - 1]
        refused = self._refusal(target is Target.UP, b)
        if refused is not None:
            return refused
        if not (b.target is target and b.moving):  # a second "up" does not restart the move
            self._move(b, t, target)
        return Result.ACCEPTED

    # Scenario controls.
    def set_stuck(self, n: int, stuck: bool = True) -> None:
        """A jammed bollard: commanded moves go nowhere and time out after 10 s."""
        t = self.update()
        b = self.bollards[n - 1]
        if b.moving:
            b.position = b.position_at(t)
            b.move_start = t  # a jam: the 10 s count from here; freed: it moves on from here
        b.stuck = stuck

    def set_mode(self, mode: Mode) -> None:
        self.update()
        self.mode = Mode(mode)

    def set_loop(self, occupied: bool | None) -> None:
        """A vehicle standing on the loop (True), none (False), or traffic as usual (None)."""
        self.update()
        self._loop_forced = occupied

    def set_mains(self, present: bool) -> None:
        t = self.update()
        if present != self._mains:
            self._ups_event = (t, self.ups_charge(t))
            self._mains = present

    def set_door(self, open_: bool) -> None:
        self.update()
        self.door_open = open_

    def reset_faults(self) -> None:
        """A fault reset at the cabinet (as command 4): faulted bollards clear."""
        self._reset(self.update())

    def inject_fault(self, n: int, code: FaultCode) -> None:
        t = self.update()
        b = self.bollards[n - 1]
        b.position = b.position_at(t)
        b.move_start = None
        b.state = State.FAULT
        b.fault = FaultCode(code)
        b.target = Target.NONE
        self._check_emergency()

    # Physical values.
    def _cabinet_temperature(self, t: float) -> float:
        minute = math.floor(t / 60)
        return (self.weather.temperature(minute * 60.0) + 6.0
                + 0.3 * self.noise.gauss(self.device_id, "cabinet", minute))

    def _hydraulic_pressure(self, b: Bollard, t: float, second: int) -> float:
        if b.state is State.RISING:
            bar = 195.0 if b.stuck else (178.0 if b.fast else 140.0)
        elif b.state is State.LOWERING:
            bar = 62.0 if b.stuck else 18.0
        elif b.state is State.FAULT and b.fault is FaultCode.PRESSURE_LOW:
            bar = 6.0
        else:
            bar = 62.0 if b.position_at(t) > FULL / 2 else 2.5  # holding up, or resting
        return bar * (1 + 0.01 * self.noise.gauss(self.device_id, "hp", b.n, second))

    def _motor_current(self, b: Bollard, second: int) -> float:
        if b.state is State.RISING:
            amps = 12.5 if b.stuck else (14.8 if b.fast else 9.4)
        elif b.state is State.LOWERING:
            amps = 1.1
        else:
            return 0.0
        return amps * (1 + 0.02 * self.noise.gauss(self.device_id, "motor", b.n, second))

    def _supply_pressure(self, second: int) -> float:
        rising = [b for b in self.bollards if b.state is State.RISING]
        bar = 158.0 - sum(14.0 if b.fast else 9.0 for b in rising)
        return max(105.0, bar) + 0.8 * self.noise.gauss(self.device_id, "supply", second)

    # Registers.
    def holding_image(self, t: float | None = None) -> list[int]:
        t = self.update(t)
        second = math.floor(t)
        words = [0] * (FIRST_BOLLARD + PER_BOLLARD * len(self.bollards))
        states = [b.state for b in self.bollards]
        words[0:10] = [
            self.mode, self.emergency, self.power, round(self.ups_charge(t)),
            (self._heartbeat0 + math.floor(t - self.origin)) % 65536,
            len(self.bollards), states.count(State.UP), states.count(State.DOWN),
            states.count(State.FAULT), int16_word(round(self._cabinet_temperature(t) * 10)),
        ]
        words[10:12] = f32_words(self._supply_pressure(second), low_word_first=True)
        words[20:25] = [self.cmd_code, self.cmd_arg, self.cmd_seq, self.cmd_ack_seq,
                        self.cmd_result]
        cabinet = self._cabinet_temperature(t)
        for b in self.bollards:
            base = FIRST_BOLLARD + PER_BOLLARD * (b.n - 1)
            oil = cabinet - 3.0 + b.heat_at(t)
            words[base:base + 11] = [
                b.state, round(b.position_at(t)),
                *f32_words(self._hydraulic_pressure(b, t, second), low_word_first=True),
                *f32_words(self._motor_current(b, second), low_word_first=True),
                int16_word(round(oil * 10)),
                *u32_words(b.cycles, low_word_first=True),
                b.fault, b.target,
            ]
        return [int(w) for w in words]  # plain ints, not the IntEnums

    def bits(self, table: Table, t: float | None = None) -> list[bool]:
        t = self.update(t)
        if table is Table.DISCRETE_INPUTS:
            return [self.door_open, self._mains, self.loop_occupied]
        coils = [False] * (10 + len(self.bollards))
        coils[0] = self.emergency is EmergencyRise.RISING
        for b in self.bollards:
            coils[9 + b.n] = b.target is Target.UP
        return coils

    def snapshot(self) -> dict[str, dict[Any, Any]]:
        """Group and per-bollard values exactly as the registers encode them."""
        w = self.holding_image()
        group = {
            "mode": Mode(w[0]).name.lower(),
            "emergency_rise": ("idle", "rising", "complete")[w[1]],
            "power": ("mains", "ups", "ups_low")[w[2]],
            "ups_charge": w[3],
            "heartbeat": w[4],
            "bollard_count": w[5],
            "bollards_up": w[6],
            "bollards_down": w[7],
            "bollards_fault": w[8],
            "cabinet_temperature": word_int16(w[9]) / 10,
            "supply_pressure": words_f32(w[10:12], low_word_first=True),
        }
        units = {}
        for b in self.bollards:
            base = FIRST_BOLLARD + PER_BOLLARD * (b.n - 1)
            r = w[base:base + PER_BOLLARD]
            units[b.n] = {
                "state": State(r[0]).name.lower(),
                "position": r[1] / 10,
                "hydraulic_pressure": words_f32(r[2:4], low_word_first=True),
                "motor_current": words_f32(r[4:6], low_word_first=True),
                "oil_temperature": word_int16(r[6]) / 10,
                "cycle_count": words_u32(r[7:9], low_word_first=True),
                "fault_code": r[9],
                "target": Target(r[10]).name.lower(),
            }
        return {"group": group, "units": units}

    # The Modbus unit.
    def read_registers(self, table: Table, address: int, count: int) -> list[int]:
        if table is not Table.HOLDING:
            return [0] * count
        image = self.holding_image()
        return [image[a] if a < len(image) else 0 for a in range(address, address + count)]

    def read_bits(self, table: Table, address: int, count: int) -> list[bool]:
        bits = self.bits(table)
        return [bits[a] if a < len(bits) else False for a in range(address, address + count)]

    def write_registers(self, address: int, values: list[int]) -> ExcCodes | None:
        end = address + len(values)
        if address <= 22 and end > 20:
            regs = [self.cmd_code, self.cmd_arg, self.cmd_seq]
            for i, v in enumerate(values):
                if 20 <= address + i <= 22:
                    regs[address + i - 20] = v
            self.command(*regs)
            return None
        n, offset = divmod(address - FIRST_BOLLARD, PER_BOLLARD)
        if address >= FIRST_BOLLARD and offset == 10 and len(values) == 1:
            value = values[0]
            target = Target(value) if value in (1, 2) else Target.NONE
            result = self.set_target(n + 1, target)
            return None if result is Result.ACCEPTED else ExcCodes.ILLEGAL_VALUE
        return ExcCodes.ILLEGAL_ADDRESS

    def write_bits(self, address: int, values: list[bool]) -> ExcCodes | None:
        t = self.update()
        writes = list(enumerate(values, start=address))
        # All or nothing: check every coil first.
        for coil, on in writes:
            if coil >= 10:
                b = self.bollards[coil - 10]
                if self._refusal(on, b) is not None:
                    return ExcCodes.ILLEGAL_VALUE
        for coil, on in writes:
            if coil == 0 and on:
                self._emergency_rise(t)
            elif coil == 1 and on:
                self._reset(t)
            elif coil >= 10:
                self.set_target(coil - 9, Target.UP if on else Target.DOWN)
        return None


def _layout(count: int) -> Layout:
    holding = [Span(0, 12), Span(20, 3, writable=True), Span(23, 2)]
    for n in range(count):
        base = FIRST_BOLLARD + PER_BOLLARD * n
        holding += [Span(base, 10), Span(base + 10, 1, writable=True), Span(base + 11, 9)]
    return Layout(coils=(Span(0, 2, writable=True), Span(10, count, writable=True)),
                  discrete_inputs=(Span(0, 3),), holding=tuple(holding))
