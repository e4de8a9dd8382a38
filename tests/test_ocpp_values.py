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
