"""Operator actions over MQTT, for services in other processes (the control-room API).

Request: AlertOperation on facility/v1/{site}/command/alert/{target}. Result:
AlertOperationResult on facility/v1/{site}/command-result/alert/{target}, same id.
In the same process, call RulesService.operate() instead.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from types import TracebackType

import aiomqtt

from facility import messages as m
from facility import topics
from facility.mqtt import make_client
from facility.settings import MqttSettings
from facility.topics import Kind
from rules.intake import OPS_FAMILY


class AlertOpsClient:
    def __init__(self, mqtt: MqttSettings, site: str, *, timeout: float = 10.0) -> None:
        self.mqtt = mqtt
        self.site = site
        self.timeout = timeout
        self._client: aiomqtt.Client | None = None
        self._waiters: dict[str, asyncio.Future[m.AlertOperationResult]] = {}
        self._task: asyncio.Task[None] | None = None

    async def __aenter__(self) -> AlertOpsClient:
        client = make_client(self.mqtt, f"{self.mqtt.client_prefix}-ops-{uuid.uuid4().hex[:8]}")
        self._client = await client.__aenter__()
        await client.subscribe(topics.subscription(Kind.COMMAND_RESULT, self.site, OPS_FAMILY),
                               qos=1)
        self._task = asyncio.create_task(self._receive(), name="alert ops results")
        return self

    async def __aexit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                        tb: TracebackType | None) -> None:
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
        if self._client is not None:
            await self._client.__aexit__(exc_type, exc, tb)
        for waiter in self._waiters.values():
            waiter.cancel()

    async def _receive(self) -> None:
        assert self._client is not None
        async for message in self._client.messages:
            try:
                result = m.decode(message.payload if isinstance(message.payload, bytes)
                                  else str(message.payload).encode(), m.AlertOperationResult)
            except m.ContractError:
                continue
            waiter = self._waiters.pop(result.id, None)
            if waiter is not None and not waiter.done():
                waiter.set_result(result)

    async def request(self, action: m.AlertAction, target: str, by: str, *, comment: str = "",
                      until: int = 0, text: str = "") -> m.AlertOperationResult:
        assert self._client is not None, "use inside 'async with'"
        op = m.AlertOperation(id=f"op-{uuid.uuid4().hex[:16]}", site=self.site, action=action,
                              target=target, by=by, ts=time.time_ns(), comment=comment,
                              until=until, text=text)
        waiter = asyncio.get_running_loop().create_future()
        self._waiters[op.id] = waiter
        await self._client.publish(topics.command(self.site, OPS_FAMILY, target), m.encode(op),
                                   qos=1)
        try:
            async with asyncio.timeout(self.timeout):
                return await waiter
        finally:
            self._waiters.pop(op.id, None)
