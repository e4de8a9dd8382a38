"""A simulated charge point stops when told, even when the ocpp library's call swallowed
the cancellation (Python 3.11's asyncio.wait_for loses one that lands as the answer
arrives, CPython gh-86296): a stopping fleet once waited forever for its heartbeat loop."""

from __future__ import annotations

import asyncio
import contextlib
from typing import Any

from simulators.ocpp_chargers import Settings, SimChargePoint


class SwallowingClient:
    """Answers every call, and eats the cancellation that comes while it waits, as
    wait_for does in the race."""

    def __init__(self) -> None:
        self.calls = 0
        self.waiting = asyncio.Event()

    async def call(self, request: Any) -> str:
        self.calls += 1
        self.waiting.set()
        with contextlib.suppress(asyncio.CancelledError):  # the answer came with it
            await asyncio.sleep(3600)
        return "answer"


async def test_a_heartbeat_loop_stops_though_the_call_ate_the_cancel() -> None:
    point = SimChargePoint("PYGOV-OC-01", Settings("ws://127.0.0.1:9/ocpp", None), 2)
    client = SwallowingClient()
    point.client = client  # type: ignore[assignment]  # stands in for the library's client
    point.heartbeat_interval = 0
    loop = asyncio.create_task(point._heartbeats())
    await asyncio.wait_for(client.waiting.wait(), 5)
    loop.cancel()
    done, _ = await asyncio.wait([loop], timeout=5)
    assert done == {loop} and loop.cancelled()
    assert client.calls == 1  # no heartbeat after the cancel
