"""OCPP 1.6 sampled values to canonical values: the measurand, phase, unit and context of
each, exact decimals, and a reason for every value left out.

| OCPP measurand (phase)              | canonical value            | unit |
|-------------------------------------|----------------------------|------|
| Energy.Active.Import.Register       | energy_import              | kWh  |
| Power.Active.Import                 | power (power_a/b/c)        | kW   |
| Current.Import (L1, L2, L3)         | current (current_a/b/c)    | A    |
| Voltage (L1-N or L1, ...)           | voltage (voltage_a/b/c)    | V    |
| Current.Offered / Power.Offered     | current_offered / power_offered | A / kW |
| Temperature                         | connector_temperature      | °C   |
| SoC                                 | soc                        | %    |
| Frequency                           | frequency                  | Hz   |

Anything else is reported in the reading's `errors`, not silently dropped.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from decimal import Decimal, InvalidOperation
from typing import Any

from facility.errors import Refused
from facility.lineprotocol import MAX_EXACT_INT
from facility.scalar import Scalar


class OcppValueError(Refused):
    """A message whose values cannot be read at all (no usable timestamp, wrong shape)."""


PHASES = {"L1": "a", "L2": "b", "L3": "c", "L1-N": "a", "L2-N": "b", "L3-N": "c"}
# measurand -> (value name, canonical unit, {OCPP unit: factor to the canonical unit})
MEASURANDS: dict[str, tuple[str, str, dict[str, Decimal]]] = {
    "Energy.Active.Import.Register": ("energy_import", "kWh",
                                      {"Wh": Decimal("0.001"), "kWh": Decimal(1)}),
    "Power.Active.Import": ("power", "kW", {"W": Decimal("0.001"), "kW": Decimal(1)}),
    "Power.Offered": ("power_offered", "kW", {"W": Decimal("0.001"), "kW": Decimal(1)}),
    "Current.Import": ("current", "A", {"A": Decimal(1)}),
    "Current.Offered": ("current_offered", "A", {"A": Decimal(1)}),
    "Voltage": ("voltage", "V", {"V": Decimal(1)}),
    "Temperature": ("connector_temperature", "°C", {"Celsius": Decimal(1)}),
    "SoC": ("soc", "%", {"Percent": Decimal(1)}),
    "Frequency": ("frequency", "Hz", {"": Decimal(1)}),
}
DEFAULT_UNIT = {"Energy.Active.Import.Register": "Wh", "Power.Active.Import": "W",
                "Power.Offered": "W", "Temperature": "Celsius", "SoC": "Percent",
                "Current.Import": "A", "Current.Offered": "A", "Voltage": "V", "Frequency": ""}
# Every value name a charge point's readings may carry (facility.topology lists them for
# the rules' name checks).
VALUE_NAMES = frozenset(
    {name for name, _, _ in MEASURANDS.values()}
    | {f"{base}_{p}" for base in ("power", "current", "voltage") for p in "abc"}
    | {"session_energy", "connector", "transaction_id", "context", "status", "connector_status",
       "error_code", "vendor_error_code", "info"})


@dataclass
class Sample:
    """One MeterValue: its time and the canonical values it carries."""

    ts: int
    values: dict[str, Scalar] = field(default_factory=dict)
    units: dict[str, str] = field(default_factory=dict)
    errors: dict[str, str] = field(default_factory=dict)
    contexts: set[str] = field(default_factory=set)


def parse_time(text: Any) -> int:
    """An OCPP timestamp (RFC 3339, with a zone) as integer nanoseconds."""
    if not isinstance(text, str):
        raise OcppValueError(f"timestamp {text!r} is not a string")
    try:
        moment = datetime.fromisoformat(text.replace("Z", "+00:00").replace("z", "+00:00"))
    except ValueError:
        raise OcppValueError(f"timestamp {text[:40]!r} is not RFC 3339") from None
    if moment.tzinfo is None:
        raise OcppValueError(f"timestamp {text[:40]!r} has no time zone")
    seconds = int(moment.timestamp())
    return seconds * 10**9 + moment.microsecond * 1000


# A charger's clock before it synchronised (1970 after a power cut) or far ahead: its
# time is replaced by the moment the central system received the message, and said so.
EARLIEST = 946_684_800 * 10**9  # 2000-01-01
AHEAD = 24 * 3600 * 10**9


def plausible_time(text: Any, now_ns: int) -> tuple[int, str]:
    """The charger's timestamp, or the receipt time and why, when its clock is off."""
    ts = parse_time(text)
    if EARLIEST <= ts <= now_ns + AHEAD:
        return ts, ""
    return now_ns, f"charger clock {str(text)[:32]} implausible; receipt time used"


def exact(value: Decimal) -> Scalar:
    """An integer stays an integer; a decimal is the nearest double of its exact value."""
    if value == value.to_integral_value():
        return int(value)
    return float(value)


def sample(meter_value: dict[str, Any], now_ns: int) -> Sample:
    """One MeterValue ({timestamp, sampledValue: [...]}, snake_case keys) to a Sample."""
    ts, clock = plausible_time(meter_value.get("timestamp"), now_ns)
    out = Sample(ts)
    if clock:
        out.errors["timestamp"] = clock
    for sv in meter_value.get("sampled_value") or []:
        if not isinstance(sv, dict):
            raise OcppValueError("a sampledValue is not an object")
        measurand = sv.get("measurand", "Energy.Active.Import.Register")
        out.contexts.add(str(sv.get("context", "Sample.Periodic")))
        spec = MEASURANDS.get(measurand)
        phase = sv.get("phase")
        label = measurand if phase is None else f"{measurand} {phase}"
        if sv.get("format") == "SignedData":
            out.errors[label] = "signed data is not read"
            continue
        if spec is None:
            out.errors[label] = "measurand not mapped"
            continue
        name, unit, factors = spec
        if phase is not None:
            letter = PHASES.get(phase)
            if letter is None or name not in ("power", "current", "voltage"):
                out.errors[label] = f"phase {phase} not mapped"
                continue
            name = f"{name}_{letter}"
        ocpp_unit = sv.get("unit", DEFAULT_UNIT[measurand])
        try:
            number = Decimal(str(sv.get("value")))
        except InvalidOperation:
            out.errors[label] = f"value {str(sv.get('value'))[:32]!r} is not a number"
            continue
        if not number.is_finite():
            out.errors[label] = "value is not finite"
            continue
        if measurand == "Temperature" and ocpp_unit in ("Fahrenheit", "K"):
            number = (number - 32) * 5 / 9 if ocpp_unit == "Fahrenheit" \
                else number - Decimal("273.15")
            ocpp_unit = "Celsius"
        factor = factors.get(ocpp_unit)
        if factor is None:
            out.errors[label] = f"unit {ocpp_unit} not expected for {measurand}"
            continue
        value = number * factor
        if abs(value) > MAX_EXACT_INT:  # the contract's exact range; 1e999999 is no reading
            out.errors[label] = "value out of range"
            continue
        out.values[name] = exact(value)
        out.units[name] = unit
    return out


def wh(value: int | Decimal) -> Scalar:
    """Wh (a meter start or stop) as kWh, exactly."""
    return exact(Decimal(value) / 1000)
