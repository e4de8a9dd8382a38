"""Stages 5-6: route incidents to output endpoints, and deliver with confirmation.

Each endpoint shows one thing: the most urgent of its *layers* (one per incident that
routes to it), else its normal content. When an incident ends, its layer goes and the
screen returns to what it showed before. PA zones announce once per incident and change,
and announce the all-clear at the end. Every DisplayMessage and Broadcast is confirmed by
its endpoint (DisplayAck); an unconfirmed one is re-sent with the *same* id (the endpoint
shows it once) and, when the endpoint stays silent, the endpoint raises its own alert.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from datetime import datetime
from typing import Any
from zoneinfo import ZoneInfo

import msgspec

from facility import labels
from facility.endpoints import Endpoint, EndpointConfig
from facility.messages import SEVERITY_RANK, Broadcast, DisplayKind, DisplayMessage
from rules.alerts import Incident, short_id
from rules.book import AlertBook
from rules.clock import NS
from rules.config import RuleSet, render

NORMAL_PRIORITY = 9


@dataclass
class Content:
    """What one incident wants on one endpoint."""

    priority: int
    kind: str
    title: str
    text: str
    short: str = ""
    speech: str = ""
    colour: str = ""
    incident: str = ""
    alert: str = ""
    all_clear: str = ""  # PA: what to say when it is over
    repeat: int = 1
    drill: str = ""  # a drill's (演练) content: the drill id; its words say 演练

    def same_as(self, other: Content | None) -> bool:
        return other is not None and (self.priority, self.title, self.text, self.short,
                                      self.speech) == (other.priority, other.title, other.text,
                                                       other.short, other.speech)


@dataclass
class Pending:
    """A message sent and not yet confirmed."""

    endpoint: str
    message_id: str
    topic_kind: str  # display or broadcast
    payload: dict[str, Any]
    first_sent: int
    next_at: int
    attempts: int = 1


@dataclass
class Delivery:
    """Something to publish now (the service does it), and its record for the store."""

    endpoint: str
    kind: str  # display or broadcast
    message: DisplayMessage | Broadcast
    attempt: int
    incident: str = ""


@dataclass
class EndpointState:
    layers: dict[str, Content] = field(default_factory=dict)  # incident id -> content
    base: str = ""  # normal content (config default, or set by an operator)
    shown: dict[str, Any] | None = None  # the last DisplayMessage sent, as a dict
    silent: bool = False
    announced: dict[str, str] = field(default_factory=dict)  # PA: incident -> text said
    manual: Content | None = None  # an operator's message, ranked by priority like the rest

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> EndpointState:
        data = dict(data)
        data["layers"] = {k: Content(**v) for k, v in data.get("layers", {}).items()}
        if data.get("manual"):
            data["manual"] = Content(**data["manual"])
        return cls(**data)


class Router:
    def __init__(self, site: str, endpoints: EndpointConfig, rules: RuleSet) -> None:
        self.site = site
        self.config = endpoints
        self.endpoints = endpoints.by_id()
        self.rules = rules
        self.state: dict[str, EndpointState] = {
            e.id: EndpointState(base=e.default_content) for e in endpoints.endpoints}
        self.pending: dict[str, Pending] = {}  # message id -> pending
        self.deliveries: list[Delivery] = []
        self.acked: list[tuple[str, str, int, str]] = []  # endpoint, message, ts, status
        self.dirty: set[str] = set()
        self.silence_changes: list[tuple[str, bool]] = []  # endpoint, silent now

    # --- stage 5: route -------------------------------------------------------------

    def route(self, book: AlertBook, now: int) -> None:
        wanted: dict[str, dict[str, Content]] = {e: {} for e in self.endpoints}
        by_incident = book.members()
        showing: set[str] = set()
        for incident in book.incidents.values():
            if not book.showing(incident, now):
                continue
            showing.add(incident.id)
            members = by_incident.get(incident.id, [])
            live = [a for a in members if a.annunciated and (a.active or not incident.active)]
            live.sort(key=lambda a: (a.priority, a.raised_at))
            for alert in live:
                compiled = self.rules.rules.get(alert.rule)
                if compiled is None:
                    continue
                for notify in compiled.rule.notify:
                    if SEVERITY_RANK[alert.severity] < SEVERITY_RANK[notify.min_severity]:
                        continue
                    template = self.rules.templates[notify.template]
                    values = book.fields(alert, incident)
                    values["time"] = local_time(now, book.topology.timezone)
                    priority = notify.priority or alert.priority
                    all_clear = ""
                    drill = alert.drill
                    if notify.all_clear:
                        ac = self.rules.templates[notify.all_clear]
                        all_clear = drilled(render(ac.speech or ac.text, values), drill, True)
                    content = Content(
                        priority=priority,
                        kind=DisplayKind.EMERGENCY.value if priority <= 2
                        else DisplayKind.ALERT.value,
                        title=drilled(render(template.title, values), drill),
                        text=drilled(render(template.text, values), drill),
                        short=drilled(render(template.short or template.title, values), drill),
                        speech=drilled(render(template.speech or template.text, values), drill,
                                       True),
                        colour=template.colour, incident=incident.id, alert=alert.id,
                        all_clear=all_clear, repeat=notify.repeat, drill=drill)
                    for endpoint in self._targets(notify.to, incident):
                        have = wanted[endpoint.id].get(incident.id)
                        if have is None or content.priority < have.priority:
                            wanted[endpoint.id][incident.id] = content
        for endpoint_id, layers in wanted.items():
            state = self.state[endpoint_id]
            endpoint = self.endpoints[endpoint_id]
            if endpoint.is_pa:
                self._announce(endpoint, state, layers, showing, now)
            else:
                if {k: (v.priority, v.text, v.title) for k, v in state.layers.items()} != \
                        {k: (v.priority, v.text, v.title) for k, v in layers.items()}:
                    state.layers = layers
                    self.dirty.add(endpoint_id)
                self._refresh(endpoint, state, now)

    def _targets(self, selector: Any, incident: Incident) -> list[Endpoint]:
        """The endpoints a notify reaches. With a `reach` for the incident's category, the
        selector says what kind of endpoint (screens of these groups, the PA) and the
        reach says where, one area for screens and PA alike, so they never disagree."""
        zones = set(incident.zones)
        area = self.rules.reach.get(incident.category)
        if area is None:
            return self.config.select(selector, zones)
        wanted = zones if area == "incident" else set(area) if isinstance(area, list) else None
        out = []
        for e in self.config.endpoints:
            if e.is_pa:
                asked = selector.pa is not None or e.id in selector.endpoints
                where = wanted is None or bool(set(e.covers) & wanted)
            else:
                asked = e.id in selector.endpoints or bool(set(e.groups) & set(selector.groups)) \
                    or e.kind in selector.kinds or bool(selector.zones)
                where = wanted is None or e.zone in wanted
            if asked and where:
                out.append(e)
        return out

    def _refresh(self, endpoint: Endpoint, state: EndpointState, now: int,
                 force: bool = False) -> None:
        """Send what the screen must show, if that is not what it was last sent."""
        # An incident wins a tie with a manual message: the automatic one is the event.
        ranked = [(c.priority, 0, c) for c in state.layers.values()]
        if state.manual is not None:
            ranked.append((state.manual.priority, 1, state.manual))
        top = min(ranked, key=lambda r: r[:2])[2] if ranked else None
        if top is None:
            body = {"kind": DisplayKind.NORMAL.value, "priority": NORMAL_PRIORITY,
                    "text": state.base, "short_text": "", "title": "", "colour": "",
                    "incident": "", "alert": ""}
        else:
            text = top.text if len(top.text) <= endpoint.max_chars else top.short
            body = {"kind": top.kind, "priority": top.priority, "text": text,
                    "short_text": top.short, "title": top.title, "colour": top.colour,
                    "incident": top.incident, "alert": top.alert}
            if top.drill:
                body["drill"] = top.drill
        shown = state.shown
        if not force and shown is not None and all(shown.get(k) == v for k, v in body.items()):
            return
        message = msgspec.convert({"id": f"dm-{short_id(endpoint.id, now, body)}",
                                   "site": self.site, "display": endpoint.id, "ts": now, **body},
                                  DisplayMessage)
        state.shown = msgspec.to_builtins(message)
        self.dirty.add(endpoint.id)
        # A newer message replaces an unconfirmed older one: only the latest matters.
        for mid in [m for m, p in self.pending.items()
                    if p.endpoint == endpoint.id and p.topic_kind == "display"]:
            del self.pending[mid]
        self._send(endpoint, "display", message, now, message.incident)

    def _announce(self, endpoint: Endpoint, state: EndpointState, layers: dict[str, Content],
                  showing: set[str], now: int) -> None:
        # An all-clear only when the incident is over: one that fell below this zone's
        # level (a flood from critical to warning) still holds its screens, and the PA
        # says nothing until it ends. All-clears first: what waited is said after them.
        for incident_id in [i for i in state.layers if i not in layers and i not in showing]:
            gone = state.layers.pop(incident_id)
            state.announced.pop(incident_id, None)
            self.dirty.add(endpoint.id)
            if gone.all_clear:
                self._broadcast(endpoint, DisplayKind.ALL_CLEAR, 5, gone.all_clear, 1,
                                incident_id, gone.alert, now, gone.drill)
        # An incident never talks over one the zone is already announcing unless it is more
        # urgent; it waits, and is announced when it is the most urgent left.
        for incident_id, content in sorted(layers.items(), key=lambda kv: kv[1].priority):
            if state.announced.get(incident_id) == content.speech:
                continue
            holding = [c.priority for i, c in state.layers.items()
                       if i != incident_id and i in layers]
            if holding and content.priority >= min(holding):
                continue
            state.announced[incident_id] = content.speech
            state.layers[incident_id] = content
            self.dirty.add(endpoint.id)
            kind = DisplayKind(content.kind)
            self._broadcast(endpoint, kind, content.priority, content.speech, content.repeat,
                            incident_id, content.alert, now, content.drill)

    def _broadcast(self, endpoint: Endpoint, kind: DisplayKind, priority: int, text: str,
                   repeat: int, incident: str, alert: str, now: int, drill: str = "") -> None:
        message = Broadcast(id=f"bc-{short_id(endpoint.id, incident, text, now)}",
                            site=self.site, zone=endpoint.id, ts=now, kind=kind,
                            priority=priority, text=text, repeat=repeat,
                            chime="chime" in endpoint.capabilities, incident=incident,
                            alert=alert, drill=drill)
        self._send(endpoint, "broadcast", message, now, incident)

    def _send(self, endpoint: Endpoint, kind: str, message: DisplayMessage | Broadcast,
              now: int, incident: str) -> None:
        self.pending[message.id] = Pending(
            endpoint=endpoint.id, message_id=message.id, topic_kind=kind,
            payload=msgspec.to_builtins(message), first_sent=now,
            next_at=now + round(endpoint.ack_timeout * NS))
        self.deliveries.append(Delivery(endpoint.id, kind, message, 1, incident))

    def set_content(self, endpoint_id: str, text: str, now: int) -> None:
        endpoint = self.endpoints.get(endpoint_id)
        if endpoint is None or endpoint.is_pa:
            raise ValueError(f"no screen {endpoint_id!r}")
        state = self.state[endpoint_id]
        state.base = text
        self.dirty.add(endpoint_id)
        self._refresh(endpoint, state, now)

    def show_manual(self, endpoint_id: str, text: str, priority: int, now: int) -> None:
        """An operator's message on a screen: it pre-empts what ranks below it (normal
        content, less urgent alerts) and is pre-empted by what ranks above."""
        endpoint = self._screen(endpoint_id)
        kind = DisplayKind.EMERGENCY if priority <= 2 else \
            DisplayKind.NORMAL if priority >= NORMAL_PRIORITY else DisplayKind.ALERT
        short = text if len(text) <= endpoint.max_chars else text[:endpoint.max_chars]
        state = self.state[endpoint_id]
        state.manual = Content(priority=priority, kind=kind.value, title="", text=text,
                               short=short, colour="red" if priority <= 2 else "")
        self.dirty.add(endpoint_id)
        self._refresh(endpoint, state, now)

    def withdraw_manual(self, endpoint_id: str, now: int) -> None:
        endpoint = self._screen(endpoint_id)
        state = self.state[endpoint_id]
        state.manual = None
        self.dirty.add(endpoint_id)
        self._refresh(endpoint, state, now)

    def _screen(self, endpoint_id: str) -> Endpoint:
        endpoint = self.endpoints.get(endpoint_id)
        if endpoint is None or endpoint.is_pa:
            raise ValueError(f"no screen {endpoint_id!r}")
        return endpoint

    # --- stage 6: confirmations and retries -----------------------------------------

    def ack(self, endpoint_id: str, message_id: str, status: str, now: int) -> bool:
        pending = self.pending.get(message_id)
        if pending is None or pending.endpoint != endpoint_id:
            return False
        del self.pending[message_id]
        self.acked.append((endpoint_id, message_id, now, status))
        state = self.state.get(endpoint_id)
        if state is not None and state.silent:
            state.silent = False
            self.dirty.add(endpoint_id)
            self.silence_changes.append((endpoint_id, False))
        return True

    def retry(self, now: int) -> None:
        for pending in list(self.pending.values()):
            if pending.next_at > now:
                continue
            endpoint = self.endpoints.get(pending.endpoint)
            if endpoint is None:
                del self.pending[pending.message_id]
                continue
            pending.attempts += 1
            state = self.state[endpoint.id]
            if pending.attempts > self.config.retries + 1 and not state.silent:
                state.silent = True
                self.dirty.add(endpoint.id)
                self.silence_changes.append((endpoint.id, True))
            if state.silent:
                delay = self.config.retry_max_interval
            else:
                delay = min(endpoint.ack_timeout * 2 ** (pending.attempts - 1),
                            self.config.retry_max_interval)
            pending.next_at = now + round(delay * NS)
            message: DisplayMessage | Broadcast = \
                msgspec.convert(pending.payload, DisplayMessage) \
                if pending.topic_kind == "display" else msgspec.convert(pending.payload, Broadcast)
            self.deliveries.append(Delivery(endpoint.id, pending.topic_kind, message,
                                            pending.attempts, getattr(message, "incident", "")))

    def take(self) -> tuple[list[Delivery], list[tuple[str, str, int, str]], set[str]]:
        out = (self.deliveries, self.acked, self.dirty)
        self.deliveries, self.acked, self.dirty = [], [], set()
        return out

    def silence_alert_text(self, endpoint_id: str) -> str:
        endpoint = self.endpoints[endpoint_id]
        return labels.ENDPOINT_TEXT["silent"].format(name=endpoint.name)


def drilled(text: str, drill: str, spoken: bool = False) -> str:
    """A drill's words begin with 演练 (screens: 【演练】, the PA: 演练，演练。)."""
    if not drill or not text:
        return text
    return (labels.DRILL_SPEECH_PREFIX if spoken else labels.DRILL_PREFIX) + text


def local_time(now: int, timezone: str) -> str:
    return datetime.fromtimestamp(now / NS, ZoneInfo(timezone)).strftime("%H:%M")
