"""Everything one API instance holds while it runs, opened and closed by the FastAPI
lifespan (api/app.py): the state store, InfluxDB, the one MQTT connection, the live hub,
the command and output desks. One Context per app; nothing lives at module level."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import secrets
import time
from collections.abc import AsyncIterator, Coroutine
from dataclasses import dataclass, field
from typing import Any

from api.auth import LoginThrottle, Passwords, Tokens
from api.commands import CommandDesk
from api.devices import DeviceBook
from api.link import ApiLink
from api.live import LiveHub
from api.outputs import OutputDesk
from api.store import ApiStore
from audit.commands import CommandView
from facility import messages as m
from facility.backoff import Backoff
from facility.catalog import Catalog
from facility.endpoints import EndpointConfig
from facility.errors import Refused
from facility.influx import InfluxClient, InfluxError
from facility.influxroutes import route_for
from facility.metrics import Metrics
from facility.settings import Settings
from facility.site import SiteConfig
from facility.topics import Kind, ParsedTopic
from facility.topology import Topology
from rules.alerts import Alert
from rules.store import AlertStore

log = logging.getLogger(__name__)

OPEN_ALERTS_SECONDS = 0.5


class ApiMetrics:
    def __init__(self) -> None:
        self.metrics = Metrics("api")
        mx = self.metrics
        self.requests = mx.counter("http_requests_total", "HTTP requests",
                                   ("method", "route", "status"))
        self.latency = mx.histogram("http_request_seconds", "HTTP request time", ("route",))
        self.logins = mx.counter("logins_total", "Login attempts", ("outcome",))
        self.commands = mx.counter("commands_total", "Bollard command requests",
                                   ("action", "outcome"))
        self.live_clients = mx.gauge("live_clients", "Connected live-stream clients")
        self.live_events = mx.counter("live_events_total", "Events put on the live stream",
                                      ("kind",))
        self.mqtt_connected = mx.gauge("mqtt_connected", "1 while the broker is connected")
        self.mqtt_messages = mx.counter("mqtt_messages_total", "Messages from the broker",
                                        ("kind",))


@dataclass
class Context:
    settings: Settings
    site: SiteConfig
    site_id: str
    topology: Topology
    endpoints: EndpointConfig
    store: ApiStore
    alerts: AlertStore
    influx: InfluxClient
    hub: LiveHub
    devices: DeviceBook
    passwords: Passwords
    tokens: Tokens
    throttle: LoginThrottle
    metrics: ApiMetrics
    link: ApiLink = field(init=False)
    desk: CommandDesk = field(init=False)
    outputs: OutputDesk = field(init=False)
    workers: list[asyncio.Task[None]] = field(default_factory=list)
    acks: asyncio.Queue[tuple[str, m.DisplayAck]] = field(
        default_factory=lambda: asyncio.Queue(10_000))
    plans: dict[str, Any] = field(default_factory=dict)  # device -> plan point, never changes
    device_json: dict[str, tuple[Any, ...]] = field(default_factory=dict)  # see routes.campus
    # The site broker's bridges to the centre: bridge -> up (the retained link topic).
    site_links: dict[str, bool] = field(default_factory=dict)
    _open: tuple[float, list[Alert]] | None = None

    async def open_alerts(self) -> list[Alert]:
        """Open alerts from the store. An alert message from the rules engine makes the
        next call read again; meanwhile one read serves a burst of requests (<= 0.5 s)."""
        now = time.monotonic()
        if self._open is None or now - self._open[0] > OPEN_ALERTS_SECONDS:
            self._open = (now, await self.alerts.alerts(self.site_id, open_only=True,
                                                        limit=5000))
        return self._open[1]

    # --- from the broker -------------------------------------------------------------

    def dispatch(self, where: ParsedTopic, payload: bytes) -> None:
        self.metrics.mqtt_messages.labels(where.kind.value).inc()
        if not payload:
            return  # a cleared retained message
        kind = where.kind
        if kind is Kind.TELEMETRY:
            reading = m.decode(payload, m.Reading)
            if self.devices.take_reading(reading):
                self._live("reading", {"device": reading.device, "family": reading.family,
                                       "ts": reading.ts, "quality": reading.quality,
                                       "values": reading.values, "units": reading.units,
                                       "errors": reading.errors},
                           self._zone_of(reading.device), reading.family.value)
        elif kind is Kind.STATUS:
            status = m.decode(payload, m.DeviceStatus)
            self.devices.take_status(status)
            self._live("status", m.to_builtins(status), self._zone_of(status.device),
                       status.family.value)
        elif kind is Kind.EVENT:
            event = m.decode(payload, m.Event)
            self._live("event", m.to_builtins(event), self._zone_of(event.device),
                       event.family.value)
        elif kind is Kind.ALERT:
            alert = m.decode(payload, m.AlertMessage)
            self._open = None
            self._live("alert", m.to_builtins(alert), [alert.zone], alert.family)
        elif kind is Kind.DISPLAY:
            message = m.decode(payload, m.DisplayMessage)
            self._live("display", m.to_builtins(message), self._endpoint_zones(message.display))
        elif kind is Kind.BROADCAST:
            broadcast = m.decode(payload, m.Broadcast)
            self._live("broadcast", m.to_builtins(broadcast), self._endpoint_zones(broadcast.zone))
        elif kind is Kind.DISPLAY_ACK:
            ack = m.decode(payload, m.DisplayAck)
            self._live("display_ack", m.to_builtins(ack), self._endpoint_zones(ack.endpoint))
            broadcast_id = self.outputs.take_ack(ack)
            if broadcast_id is not None:
                with contextlib.suppress(asyncio.QueueFull):
                    self.acks.put_nowait((broadcast_id, ack))
        elif kind is Kind.COMMAND_RESULT:
            self.desk.take_result(m.decode(payload, m.CommandResult))
        elif kind is Kind.LINK:
            # Mosquitto writes "1" on connect and leaves "0" as its will; anything else
            # is not a link state (a dead letter, as any bad payload).
            if payload not in (b"1", b"0"):
                raise Refused(f"a link state is '1' or '0', not {payload[:20]!r}")
            self.site_links[where.name] = payload == b"1"
            self._live("link", {"site": where.site, "bridge": where.name,
                                "up": payload == b"1"}, [])

    def _live(self, kind: str, data: dict[str, Any], zones: list[str],
              family: str = "") -> None:
        self.metrics.live_events.labels(kind).inc()
        self.hub.publish(kind, data, zones=zones, family=family)

    def _zone_of(self, device: str) -> list[str]:
        source = self.topology.sources.get(device)
        return [source.zone] if source and source.zone else []

    def _endpoint_zones(self, endpoint_id: str) -> list[str]:
        endpoint = self.endpoints.by_id().get(endpoint_id)
        return endpoint.zones if endpoint else []

    def command_changed(self, view: CommandView) -> None:
        self.metrics.commands.labels(view.action, view.status).inc()
        self._live("command", view.model_dump(), view.zones, m.Family.BOLLARD.value)

    # --- background work -------------------------------------------------------------

    async def _record_acks(self) -> None:
        while True:
            broadcast_id, ack = await self.acks.get()
            await self.outputs.record_ack(broadcast_id, ack)
            view = await self.outputs.broadcast_view(broadcast_id)
            if view is not None:
                zones = [z for d in view.deliveries for z in self._endpoint_zones(d.zone)]
                self._live("broadcast", {"manual": view.model_dump()}, zones)

    async def _seed_devices(self) -> None:
        """Latest values from InfluxDB for devices that have not reported since start."""
        backoff = Backoff(initial=1.0, cap=60.0)
        while True:
            try:
                seeded = await self.devices.seed(self.influx,
                                                 self.settings.influx.retention_policy,
                                                 self.site_id)
                log.info("api %s: latest values of %d devices from InfluxDB", self.site_id,
                         seeded)
                return
            except InfluxError as exc:
                delay = backoff.next_delay()
                log.warning("api %s: InfluxDB not answering (%s); retrying in %.0fs",
                            self.site_id, exc, delay)
                await asyncio.sleep(delay)

    def start(self, coro: Coroutine[Any, Any, None], name: str) -> None:
        self.workers.append(asyncio.create_task(coro, name=f"api {name}"))

    @property
    def workers_alive(self) -> bool:
        """No background task died (the seeding task ends on purpose once done)."""
        return not any(t.done() and not t.cancelled() and t.exception() is not None
                       for t in self.workers)


def api_catalog(settings: Settings, catalog: Catalog) -> Catalog:
    return catalog.for_site(settings.api.site or catalog.site.site.id)


@contextlib.asynccontextmanager
async def open_context(settings: Settings, catalog: Catalog) -> AsyncIterator[Context]:
    catalog = api_catalog(settings, catalog)
    site = catalog.site
    site_id = site.site.id
    api = settings.api
    secret = api.secret.get_secret_value() if api.secret else ""
    if not secret:
        secret = secrets.token_urlsafe(48)
        log.warning("api %s: no FACILITY_API_SECRET; logins end when this process stops",
                    site_id)
    topology = Topology(catalog)
    endpoints = catalog.endpoints
    async with contextlib.AsyncExitStack() as stack:
        store = await stack.enter_async_context(await ApiStore.open(settings.state_url))
        alerts = await stack.enter_async_context(await AlertStore.open(settings.state_url))
        # The site's InfluxDB server, as ingest routed its points (facility/influxroutes.py).
        influx = await stack.enter_async_context(
            InfluxClient(route_for(settings.influx, site_id)))
        ctx = Context(settings=settings, site=site, site_id=site_id, topology=topology,
                      endpoints=endpoints, store=store, alerts=alerts, influx=influx,
                      hub=LiveHub(api.replay_buffer), devices=DeviceBook(topology),
                      passwords=Passwords(api.min_password_length),
                      tokens=Tokens(secret, api.token_lifetime, site_id),
                      throttle=LoginThrottle(api.login_attempts, api.login_lockout),
                      metrics=ApiMetrics())
        client_id = api.client_id or f"{settings.mqtt.client_prefix}-api-{site_id}"
        ctx.link = ApiLink(settings.mqtt, site_id, client_id, ctx.dispatch)
        ctx.desk = CommandDesk(api, site_id, topology, store, ctx.link, ctx.command_changed)
        ctx.outputs = OutputDesk(site_id, endpoints, store, alerts, ctx.link)
        await stack.enter_async_context(ctx.link)
        ctx.start(ctx.desk.record_results(), "command results")
        ctx.start(ctx.desk.sweep(), "command sweep")
        ctx.start(ctx._record_acks(), "broadcast confirmations")
        ctx.start(ctx._seed_devices(), "latest values")
        try:
            await ctx.link.wait_ready(30)
        except TimeoutError:
            log.warning("api %s: broker not reachable yet; serving, live data will follow",
                        site_id)
        try:
            yield ctx
        finally:
            ctx.hub.close()
            for task in ctx.workers:
                task.cancel()
            await asyncio.gather(*ctx.workers, return_exceptions=True)

