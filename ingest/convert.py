"""Canonical MQTT messages to InfluxDB line protocol, one line per message.

Measurements: one per device family for readings (`energy`, `bollard`, ...), with the
values as fields and `quality` as a string field; `device_status`, `device_event` and
`dead_letter` for the other kinds. Tags: site, device, gateway and the reading's static
tags (place, zone, building, load, kind). Every number is written as a float field so a
device that sends 3 and then 3.5 never causes a type conflict.

The topic must agree with the payload (site, family, device): a gateway cannot write
another device's data by publishing it under its own topic, or the other way round.
"""

from __future__ import annotations

import time
import zlib
from typing import Protocol

import msgspec

from facility import lineprotocol as lp
from facility import messages as m
from facility import topics
from facility.errors import Refused
from facility.topics import Kind

STATUS_MEASUREMENT = "device_status"
EVENT_MEASUREMENT = "device_event"
DEAD_LETTER_MEASUREMENT = "dead_letter"


MAX_PAYLOAD = 64 * 1024  # canonical messages are small; a bigger one is not a reading


class Rejected(Refused):
    """The message cannot be stored; the text is the reason for the dead letter."""


class Sequences(Protocol):
    """Where the gateway sequence numbers of converted messages go: a SequenceTracker
    (ingest/sequence.py, one copy) or a worker's Marks (ingest/ledger.py, N copies)."""

    def seen(self, gateway: str, seq: int, now: float) -> None: ...


class Converter:
    """Turns messages into lines; remembers each topic's escaped series key, because a
    device's tags rarely change and escaping them was most of the cost per message."""

    def __init__(self, max_topics: int = 200_000,
                 sequences: Sequences | None = None) -> None:
        self.max_topics = max_topics
        self.sequences = sequences
        self._topics: dict[str, topics.ParsedTopic] = {}
        self._series: dict[str, tuple[dict[str, str], str, str]] = {}

    def parse_topic(self, topic: str) -> topics.ParsedTopic:
        where = self._topics.get(topic)
        if where is None:
            where = topics.parse(topic)  # raises TopicError
            if len(self._topics) >= self.max_topics:
                self._topics.clear()
            self._topics[topic] = where
        return where

    def site_of(self, topic: str) -> str | None:
        try:
            return self.parse_topic(topic).site
        except topics.TopicError:
            return None

    def to_line(self, topic: str, payload: bytes) -> bytes:
        """The line for one message, or Rejected with the reason."""
        if len(payload) > MAX_PAYLOAD:
            raise Rejected(f"payload of {len(payload)} bytes is over {MAX_PAYLOAD}")
        try:
            where = self.parse_topic(topic)
        except topics.TopicError as exc:
            raise Rejected(str(exc)) from None
        try:
            if where.kind is Kind.TELEMETRY:
                return self._reading(topic, where, m.decode(payload, m.Reading))
            if where.kind is Kind.STATUS:
                return _status(where, m.decode(payload, m.DeviceStatus))
            if where.kind is Kind.EVENT:
                event = m.decode(payload, m.Event)
                line = _event(where, event)
                if self.sequences is not None:
                    self.sequences.seen(event.gateway, event.seq, time.monotonic())
                return line
            if where.kind is Kind.DEADLETTER:
                return _dead_letter(where, m.decode(payload, m.DeadLetter))
        except m.ContractError as exc:
            raise Rejected(f"breaks the message contract: {exc}") from None
        except lp.LineProtocolError as exc:
            raise Rejected(f"cannot be stored exactly: {exc}") from None
        raise Rejected(f"ingest does not store {where.kind} messages")

    def _reading(self, topic: str, where: topics.ParsedTopic, r: m.Reading) -> bytes:
        _same_device(where, r.site, r.family, r.device)
        cached = self._series.get(topic)
        if cached is not None and cached[1] == r.gateway and cached[0] == r.tags:
            series = cached[2]
        else:
            tags = {"site": r.site, "device": r.device, **r.tags}
            if r.gateway:
                tags["gateway"] = r.gateway
            series = lp.series_key(r.family.value, tags)
            if len(self._series) >= self.max_topics:
                self._series.clear()
            self._series[topic] = (r.tags, r.gateway, series)
        # Value names were checked by the contract; quality is one of a few plain words.
        if r.values:
            fields = f'quality="{r.quality.value}",{lp.checked_fields(r.values)}'
        else:
            fields = f'quality="{r.quality.value}"'
        line = f"{series} {fields} {r.ts}".encode()
        if self.sequences is not None and r.seq:
            self.sequences.seen(r.gateway, r.seq, time.monotonic())
        return line


def _same_device(where: topics.ParsedTopic, site: str, family: str, device: str) -> None:
    if (where.site, where.family, where.name) != (site, family, device):
        raise Rejected(
            f"payload is for {site}/{family}/{device} but arrived on the topic of "
            f"{where.site}/{where.family}/{where.name}"
        )


def _status(where: topics.ParsedTopic, s: m.DeviceStatus) -> bytes:
    _same_device(where, s.site, s.family, s.device)
    tags = {"site": s.site, "family": s.family.value, "device": s.device}
    if s.gateway:
        tags["gateway"] = s.gateway
    fields: dict[str, m.Scalar] = {"state": s.state.value,
                                   "online": s.state is m.Availability.ONLINE,
                                   "reason": s.reason}
    return lp.line(STATUS_MEASUREMENT, tags, fields, s.ts).encode()


def _event(where: topics.ParsedTopic, e: m.Event) -> bytes:
    _same_device(where, e.site, e.family, e.device)
    tags = {"site": e.site, "family": e.family.value, "device": e.device, "name": e.name}
    # Attributes differ per event type; as one JSON string they never conflict in type.
    fields: dict[str, m.Scalar] = {"id": e.id, "text": e.text,
                                   "attrs": msgspec.json.encode(e.attrs).decode()}
    if e.gateway:
        fields["gateway"] = e.gateway
    # Vendors stamp events to the second; two events of one device and name in the same
    # second must not overwrite each other, so a sub-microsecond offset from the id keeps
    # them apart (and a redelivered event lands on itself).
    ts = e.ts + zlib.crc32(e.id.encode()) % 1000
    return lp.line(EVENT_MEASUREMENT, tags, fields, ts).encode()


def _dead_letter(where: topics.ParsedTopic, d: m.DeadLetter) -> bytes:
    if where.name != d.source:
        raise Rejected(f"dead letter from {d.source!r} on the topic of {where.name!r}")
    tags = {"site": where.site, "source": d.source}
    fields: dict[str, m.Scalar] = {"topic": d.topic, "reason": d.reason, "payload": d.payload,
                                   "encoding": d.payload_encoding, "size": d.size}
    return lp.line(DEAD_LETTER_MEASUREMENT, tags, fields, d.ts).encode()


def to_line(topic: str, payload: bytes) -> bytes:
    """One message's line, without the caches of a long-lived Converter (tests, tools)."""
    return Converter(max_topics=1).to_line(topic, payload)
