"""Operator actions over MQTT, for services in other processes (`facility rules op`, the
benchmarks): its own broker connection and facility.ops.Operations, the one client of
the protocol (the control-room API's link uses the same).

Request: AlertOperation on facility/v1/{site}/command/alert/{target}. Result:
AlertOperationResult on facility/v1/{site}/command-result/alert/{target}, same id.
In the same process, call RulesService.operate() instead.
"""

from __future__ import annotations

import asyncio
import uuid
from types import TracebackType

from facility import messages as m
from facility.mqttlink import MqttLink
from facility.ops import Operations
from facility.settings import MqttSettings


class AlertOpsClient:
    def __init__(self, mqtt: MqttSettings, site: str, *, timeout: float = 10.0) -> None:
        self.mqtt = mqtt
        self.site = site
        self.timeout = timeout
        self._client: MqttLink | None = None
        self._ops = Operations(site, self._publish)
        self._task: asyncio.Task[None] | None = None

    async def __aenter__(self) -> AlertOpsClient:
        client = await MqttLink.open(self.mqtt,
                                     f"{self.mqtt.client_prefix}-ops-{uuid.uuid4().hex[:8]}")
        self._client = client
        await client.subscribe([self._ops.results()], qos=1)
        self._task = asyncio.create_task(self._receive(), name="alert ops results")
        return self

    async def __aexit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                        tb: TracebackType | None) -> None:
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
        if self._client is not None:
            await self._client.__aexit__(exc_type, exc, tb)
        self._ops.cancel()

    async def _publish(self, topic: str, payload: bytes) -> None:
        assert self._client is not None, "use inside 'async with'"
        await self._client.publish(topic, payload, qos=1)

    async def _receive(self) -> None:
        assert self._client is not None
        while True:
            batch = await self._client.next_batch(100, None)
            for message in batch:
                try:
                    self._ops.take(message.payload)
                except m.ContractError:
                    continue
            self._client.ack(batch)

    async def request(self, action: m.AlertAction, target: str, by: str, *, comment: str = "",
                      until: int = 0, text: str = "") -> m.AlertOperationResult:
        """The rules engine's answer; facility.ops.NoAnswer (a TimeoutError) if none came
        within the client's timeout."""
        return await self._ops.request(action, target, by, comment=comment, until=until,
                                       text=text, timeout=self.timeout)
