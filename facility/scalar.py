"""The one value type a device point, a reading, a command parameter and an alert's value
share: a boolean, an integer, a float or a string. Defined here once, below everything
else in the core (the line protocol, the message contract, the Modbus decoder and the
API's models import it)."""

from __future__ import annotations

Scalar = bool | int | float | str
