"""The value names the rules engine expects of an OCPP charger (facility.topology) are
exactly those the central system produces (csms/meter.py)."""

from __future__ import annotations

from csms.meter import MEASURANDS, PHASES, VALUE_NAMES
from facility.topology import OCPP_VALUES


def test_the_core_knows_every_value_the_central_system_sends() -> None:
    measured = {name for name, _, _ in MEASURANDS.values()}
    phased = {f"{name}_{p}" for name in ("power", "current", "voltage")
              for p in set(PHASES.values())}
    assert measured | phased <= OCPP_VALUES
    assert VALUE_NAMES == OCPP_VALUES


def test_a_value_out_of_range_is_an_error_and_the_others_are_kept() -> None:
    from csms.meter import sample

    got = sample({"timestamp": "2026-12-06T00:00:00Z", "sampled_value": [
        {"value": "1e999999", "measurand": "Power.Active.Import", "unit": "W"},
        {"value": "1" * 400, "measurand": "Current.Import", "unit": "A"},
        {"value": "230.5", "measurand": "Voltage", "unit": "V"}]}, 1_796_515_200_000_000_000)
    assert got.values == {"voltage": 230.5}
    assert got.errors == {"Power.Active.Import": "value out of range",
                          "Current.Import": "value out of range"}
