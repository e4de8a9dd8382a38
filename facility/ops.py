"""The operator-action protocol, once: a request and its answer over MQTT.

Request: an AlertOperation on facility/v1/{site}/command/alert/{target}. Answer: an
AlertOperationResult on facility/v1/{site}/command-result/alert/{target} with the same id.
The rules engine serves it (rules/service.py); the control-room API (api/link.py) and the
command-line and benchmark client (rules/ops.py) ask through `Operations`, which builds
the request, publishes it on the caller's connection and waits for the answer with that
id. The caller subscribes to `Operations.results()` and hands every payload that arrives
there to `Operations.take()`.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import Awaitable, Callable

from facility import messages as m
from facility import topics
from facility.topics import Kind

OPS_FAMILY = "alert"  # operator actions: command/alert/{target}, results on command-result/alert

Publish = Callable[[str, bytes], Awaitable[None]]


class NoAnswer(TimeoutError):
    """The rules engine did not answer an operator action in time."""


class Operations:
    """The operator actions this client has asked and not yet had answered."""

    def __init__(self, site: str, publish: Publish) -> None:
        self.site = site
        self._publish = publish
        self._waiting: dict[str, asyncio.Future[m.AlertOperationResult]] = {}

    def results(self) -> str:
        """The filter the answers arrive on (subscribe to it at QoS 1)."""
        return topics.subscription(Kind.COMMAND_RESULT, self.site, OPS_FAMILY)

    def take(self, payload: bytes) -> None:
        """An answer arrived; the one waiting for it has it. ContractError if it is not one."""
        result = m.decode(payload, m.AlertOperationResult)
        waiter = self._waiting.pop(result.id, None)
        if waiter is not None and not waiter.done():
            waiter.set_result(result)

    async def request(self, action: m.AlertAction, target: str, by: str, *, comment: str = "",
                      until: int = 0, text: str = "", priority: int = 0,
                      timeout: float = 10.0) -> m.AlertOperationResult:
        """Ask the rules engine; its answer, or NoAnswer after `timeout` seconds. What
        `publish` raises (the broker is away) goes to the caller."""
        op = m.AlertOperation(id=f"op-{uuid.uuid4().hex[:16]}", site=self.site, action=action,
                              target=target, by=by, ts=time.time_ns(), priority=priority,
                              comment=comment, until=until, text=text)
        waiter: asyncio.Future[m.AlertOperationResult] = \
            asyncio.get_running_loop().create_future()
        self._waiting[op.id] = waiter
        try:
            await self._publish(topics.command(self.site, OPS_FAMILY, target), m.encode(op))
            async with asyncio.timeout(timeout):
                return await waiter
        except TimeoutError:
            raise NoAnswer(f"the rules engine did not answer within {timeout:g}s") from None
        finally:
            self._waiting.pop(op.id, None)

    def cancel(self) -> None:
        """The connection is closing: nobody waits any longer."""
        for waiter in self._waiting.values():
            waiter.cancel()
        self._waiting.clear()
