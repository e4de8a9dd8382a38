"""From an MQTT message to an engine input: topic, size, decoding, the message contract,
and whether it belongs to this site and one of its sources. Whatever does not fit is
counted by reason and either dead-lettered or ignored by design:

| reason           | what                                             | dead letter?            |
|------------------|--------------------------------------------------|-------------------------|
| `topic`          | not a canonical topic of this site               | no (not ours)           |
| `oversized`      | payload over MAX_PAYLOAD bytes (not decoded)     | only on rules' topics   |
| `contract`       | not JSON, wrong types, NaN/Inf, bad names, ...   | only on rules' topics   |
| `mismatch`       | payload's site/device/family differs from topic  | only on rules' topics   |
| `unknown_device` | a device the site file does not know             | no: nothing to judge    |

A message on which the engine raises (a bug, not a bad message) is not caught here: the
service runs every message through facility.deadletters, which quarantines it (class, text,
last frame, the traceback logged once per place) and goes on.

Telemetry, statuses and events are also read by ingest, which dead-letters contract
breaches, oversized payloads and topic mismatches itself; a second letter from the rules
engine would double the flood, so here they are counted only. Display acknowledgements,
commands, command results and operator actions are read by the rules engine alone: it
letters those. Dead letters are rate-limited (a flood must not become two floods); what
the limit holds back is counted as `dropped`.
"""

from __future__ import annotations

import logging
import time
from collections import Counter
from dataclasses import dataclass
from typing import Any

from facility import bridge, topics
from facility import messages as m
from facility.ops import OPS_FAMILY
from facility.topics import Kind, ParsedTopic
from rules.engine import Engine

log = logging.getLogger(__name__)

MAX_PAYLOAD = 64 * 1024  # bytes; the largest canonical message is far smaller
INGESTED = frozenset({Kind.TELEMETRY, Kind.STATUS, Kind.EVENT})  # ingest letters these
TOPIC_CACHE = 20_000  # parsed topics kept (a flood of random topics empties it, no more)


@dataclass(frozen=True)
class Refusal:
    topic: str
    reason: str  # one of the reasons above
    detail: str
    payload: bytes
    letter: bool  # whether a dead letter is due


class TokenBucket:
    """At most `rate` per second on average, bursts of `burst`."""

    def __init__(self, rate: float, burst: float) -> None:
        self.rate, self.burst = rate, burst
        self.tokens = burst
        self.at = time.monotonic()

    def take(self) -> bool:
        now = time.monotonic()
        self.tokens = min(self.burst, self.tokens + (now - self.at) * self.rate)
        self.at = now
        if self.tokens >= 1:
            self.tokens -= 1
            return True
        return False


class Intake:
    """Checks and dispatches one message at a time; `refused` counts by reason."""

    def __init__(self, site_id: str, sources: set[str] | frozenset[str],
                 letters_per_s: float = 100.0) -> None:
        self.site_id = site_id
        self.sources = sources
        self.refused: Counter[str] = Counter()
        self.taken: Counter[str] = Counter()  # by kind
        self.letters = TokenBucket(letters_per_s, letters_per_s * 5)
        self.dropped = 0  # dead letters the rate limit held back
        self._topics: dict[str, ParsedTopic | None] = {}

    def warm(self, families: dict[str, str]) -> None:
        """Parse the topics of the site's sources (id -> family) now, at start: their
        entries then live as long as the service (and are frozen with it)."""
        for source, family in families.items():
            for kind in (Kind.TELEMETRY, Kind.STATUS, Kind.EVENT):
                self.parse(topics.device_topic(kind, self.site_id, family, source))

    def parse(self, topic: str) -> ParsedTopic | None:
        try:
            return self._topics[topic]
        except KeyError:
            pass
        try:
            parsed: ParsedTopic | None = topics.parse(topic)
        except topics.TopicError:
            parsed = None
        if parsed is not None and parsed.site != self.site_id:
            parsed = None
        if len(self._topics) >= TOPIC_CACHE:
            self._topics.clear()
        self._topics[topic] = parsed
        return parsed

    def take(self, engine: Engine, topic: str, payload: bytes,
             now: int) -> tuple[Refusal | None, m.AlertOperation | None]:
        """Give the message to the engine. Returns a refusal (counted already), or an
        operator action for the service to carry out, or neither. `taken` counts what
        was given, by kind."""
        where = self._topics.get(topic) or self.parse(topic)  # the cache without a call
        if where is None:
            return self._refuse(topic, "topic", "not a canonical topic of this site", payload,
                                None), None
        kind = where.kind
        if len(payload) > MAX_PAYLOAD:
            return self._refuse(topic, "oversized", f"{len(payload)} bytes is over "
                                f"{MAX_PAYLOAD}", payload, kind), None
        try:
            if kind is Kind.TELEMETRY:
                reading = m.decode_reading(payload)  # the contract, checked mostly in C
                problem = self._belongs(where, reading.site, reading.family, reading.device)
                if problem:
                    return self._refuse(topic, *problem, payload, kind), None
                engine.reading(reading, now)
            elif kind is Kind.EVENT:
                event = m.decode(payload, m.Event)
                problem = self._belongs(where, event.site, event.family, event.device)
                if problem:
                    return self._refuse(topic, *problem, payload, kind), None
                engine.event(event, now)
            elif kind is Kind.STATUS:
                if not payload:
                    return None, None  # a retained status cleared
                status = m.decode(payload, m.DeviceStatus)
                problem = self._belongs(where, status.site, status.family, status.device)
                if problem:
                    return self._refuse(topic, *problem, payload, kind), None
                engine.status(status, now)
            elif kind is Kind.COMMAND and where.family == OPS_FAMILY:
                op = m.decode(payload, m.AlertOperation)
                if op.site != self.site_id:
                    return self._refuse(topic, "mismatch", f"site {op.site!r} on the topic "
                                        f"of {self.site_id!r}", payload, kind), None
                self.taken[kind.value] += 1
                return None, op
            elif kind is Kind.COMMAND:
                engine.command(m.decode(payload, m.Command), now)
            elif kind is Kind.COMMAND_RESULT:
                if where.family == OPS_FAMILY:
                    return None, None  # our own answers to operator actions
                engine.command_result(m.decode(payload, m.CommandResult), now)
            elif kind is Kind.DISPLAY_ACK:
                engine.display_ack(m.decode(payload, m.DisplayAck), now)
            elif kind is Kind.LINK:
                if not payload:
                    return None, None  # a retained link state cleared
                engine.link(where.name, bridge.link_up(payload), now)
            elif kind is Kind.DRILL:
                drill = m.decode(payload, m.Drill)
                if drill.site != self.site_id:
                    return self._refuse(topic, "mismatch", f"site {drill.site!r} on the topic "
                                        f"of {self.site_id!r}", payload, kind), None
                engine.drill(drill, now)
            else:
                return self._refuse(topic, "topic", f"the rules engine does not read {kind}",
                                    payload, None), None
        except m.ContractError as exc:
            return self._refuse(topic, "contract", str(exc), payload, kind), None
        self.taken[kind.value] += 1
        return None, None

    def _belongs(self, where: ParsedTopic, site: str, family: str,
                 device: str) -> tuple[str, str] | None:
        if site != where.site or device != where.name or family != where.family:
            return "mismatch", (f"payload of {site}/{family}/{device} on the topic of "
                                f"{where.site}/{where.family}/{where.name}")
        if device not in self.sources:
            return "unknown_device", f"{device!r} is not in the site file"
        return None

    def _refuse(self, topic: str, reason: str, detail: str, payload: bytes,
                kind: Kind | None) -> Refusal:
        self.refused[reason] += 1
        letter = reason in ("oversized", "contract", "mismatch") \
            and kind is not None and kind not in INGESTED
        if letter and not self.letters.take():
            self.dropped += 1
            letter = False
        if self.refused[reason] & (self.refused[reason] - 1) == 0:  # 1st, 2nd, 4th, 8th...
            log.warning("%s: refused a message on %s (%s: %s); %d refused for %s so far",
                        self.site_id, topic, reason, detail[:200], self.refused[reason],
                        reason)
        return Refusal(topic, reason, detail, payload, letter)

    def counts(self) -> dict[str, Any]:
        return {"taken": dict(self.taken), "refused": dict(self.refused),
                "letters_dropped": self.dropped}
