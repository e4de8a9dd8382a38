"""The API's one connection to the broker.

It subscribes to what the control room watches on its site (readings, statuses, events,
alerts, displays and their confirmations, broadcasts, command results, the site broker's
bridge to the centre), hands each message to the API's dispatcher, and publishes
commands and operator actions. Telemetry is taken at QoS 0 (the next reading replaces a
lost one); everything else at QoS 1 on a persistent session, so command results that
arrive during a restart are not lost.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable
from functools import partial

from facility import messages as m
from facility import topics
from facility.deadletters import DeadLetters, Letter
from facility.mqtt import Connection, Message, MqttError, run_connected
from facility.mqttlink import connector
from facility.ops import OPS_FAMILY, Operations
from facility.service import Service
from facility.settings import MqttSettings
from facility.topics import Kind, ParsedTopic

log = logging.getLogger(__name__)

SESSION_EXPIRY = 3600

Dispatch = Callable[[ParsedTopic, bytes], None]


class LinkDown(Exception):
    """The broker is not reachable now; nothing was published."""


class ApiLink(Service):
    def __init__(self, mqtt: MqttSettings, site_id: str, client_id: str,
                 dispatch: Dispatch) -> None:
        super().__init__()
        self.name = f"api link {site_id}"
        self.mqtt = mqtt
        self.site_id = site_id
        self.client_id = client_id
        self.dispatch = dispatch
        self.received = 0
        self.letters = DeadLetters("api", site_id)
        self._sending: set[asyncio.Task[None]] = set()
        self._client: Connection | None = None
        self._ops = Operations(site_id, self.publish)

    def filters(self) -> dict[int, list[str]]:
        """The filters by QoS."""
        s = self.site_id
        return {0: [topics.subscription(Kind.TELEMETRY, s)],
                1: [topics.subscription(kind, s)
                    for kind in (Kind.STATUS, Kind.EVENT, Kind.ALERT, Kind.DISPLAY,
                                 Kind.DISPLAY_ACK, Kind.BROADCAST, Kind.COMMAND_RESULT,
                                 Kind.LINK)]}

    async def run(self) -> None:
        await run_connected(self.mqtt, connector(self.mqtt, self.client_id,
                                                 session_expiry=SESSION_EXPIRY,
                                                 receive_maximum=2000),
                            self._session, name=self.name, on_disconnect=self._disconnected)

    def _disconnected(self) -> None:
        self.ready.clear()
        self._client = None

    async def _session(self, client: Connection) -> None:
        for qos, filters in self.filters().items():
            await client.subscribe(filters, qos=qos)
        self._client = client
        self.ready.set()
        try:
            while True:
                batch = await client.next_batch(500, None)
                for message in batch:
                    self.received += 1
                    self._take(message)
                client.ack(batch)
        finally:
            self._client = None
            self.ready.clear()

    def _take(self, message: Message) -> None:
        topic, payload = message.topic, message.payload
        out = self.letters.run(partial(self._handle, topic, payload), topic, payload)
        if isinstance(out, Letter) and self.letters.needs_letter(out):
            task = asyncio.get_running_loop().create_task(self._send_letter(out))
            self._sending.add(task)
            task.add_done_callback(self._sending.discard)

    async def _send_letter(self, letter: Letter) -> None:
        with contextlib.suppress(LinkDown):  # counted already; the broker is away
            await self.publish(letter.topic, letter.payload)

    def _handle(self, topic: str, payload: bytes) -> None:
        parsed = topics.parse(topic)
        if parsed.kind is Kind.COMMAND_RESULT and parsed.family == OPS_FAMILY:
            self._ops.take(payload)
            return
        self.dispatch(parsed, payload)

    @property
    def connected(self) -> bool:
        return self._client is not None

    async def publish(self, topic: str, payload: bytes, *, qos: int = 1,
                      retain: bool = False) -> None:
        """Publish; returns once the broker has it (QoS 1). LinkDown if not connected."""
        client = self._client
        if client is None:
            raise LinkDown("the broker is not reachable")
        try:
            await client.publish(topic, payload, qos=qos, retain=retain)
        except MqttError as exc:
            raise LinkDown(f"the broker did not take the message: {exc}") from None

    async def operate(self, action: m.AlertAction, target: str, by: str, *, comment: str = "",
                      until: int = 0, text: str = "", priority: int = 0,
                      timeout: float = 10.0) -> m.AlertOperationResult:
        """An operator action through the rules engine (facility.ops, the one client of
        its protocol), answered on command-result/alert/{target}. LinkDown if the broker is
        away, NoAnswer if the engine did not answer within `timeout` seconds."""
        return await self._ops.request(action, target, by, comment=comment, until=until,
                                       text=text, priority=priority, timeout=timeout)
