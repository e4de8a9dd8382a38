"""One place where a message a service cannot use becomes a dead letter, so the line moves on.

Every per-message path (gateway: vendor MQTT, commands, Modbus results; ingest; rules
intake; the API link; the display player) runs its handler through `DeadLetters.run`:

- the handler's result, when it works;
- a `Refused` (the message breaks the contract, a topic, a vendor mapping, line protocol):
  a dead letter whose reason is the exception's class and text;
- any other exception is a bug met on this message. The message is quarantined at its
  first failure: a dead letter with the class, the text and the traceback's last frame,
  the traceback logged once per place. The caller acknowledges it like any other message,
  so a persistent session never redelivers it and the next message goes on.

`BaseException`s that are not `Exception`s (cancellation, KeyboardInterrupt) pass through:
stopping a service is not a message's fault. Letters are counted by kind and reason (the
exception's class, or a word the service gives) in the service's metrics
(`dead_letters_total`) and in `counts`. Sending a letter stays with the caller: each
service has its own connection and its own ordering needs.
"""

from __future__ import annotations

import logging
import time
import traceback
from collections import Counter
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

from facility import messages as m
from facility import topics
from facility.errors import Refused
from facility.metrics import Metrics

log = logging.getLogger(__name__)

T = TypeVar("T")
# A payload, or how to make one: a Modbus poll has no bytes of its own, and encoding one
# per poll only in case it fails would cost every poll.
Payload = bytes | Callable[[], bytes]

REFUSED = "refused"  # the message does not fit: expected, counted
QUARANTINED = "quarantined"  # a handler failed on it: a bug, kept for a person to read
_ROOT = Path(__file__).resolve().parent.parent
# Kinds ingest stores and letters itself when they break the contract: another reader
# counts its refusals of these without a second letter (one flood, not two).
LETTERED_BY_INGEST = frozenset({topics.Kind.TELEMETRY, topics.Kind.STATUS, topics.Kind.EVENT,
                                topics.Kind.DEADLETTER})


@dataclass(frozen=True, slots=True)
class Letter:
    """A dead letter ready to send: its topic and encoded DeadLetter."""

    topic: str
    payload: bytes
    origin: str  # the topic of the message it is about
    kind: str  # REFUSED or QUARANTINED
    reason: str  # the counted reason: an exception class or a service's word
    text: str  # the full reason, as in the letter


def last_frame(exc: BaseException) -> str:
    """Where the exception was raised: 'path:line in function', the path from the repo."""
    frames = traceback.extract_tb(exc.__traceback__)
    if not frames:
        return "unknown place"
    frame = frames[-1]
    path = Path(frame.filename)
    try:
        shown = str(path.resolve().relative_to(_ROOT))
    except ValueError:
        shown = path.name
    return f"{shown}:{frame.lineno} in {frame.name}"


def describe(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {exc}"


class DeadLetters:
    """Dead letters of one service (`source`, also the last topic level) for one site."""

    def __init__(self, source: str, site: str, *, metrics: Metrics | None = None,
                 clock_ns: Callable[[], int] = time.time_ns) -> None:
        self.source = topics.check_id(source, "source")
        self.site = topics.check_id(site, "site") if site != "+" else "unknown"
        self.clock_ns = clock_ns
        self.counts: Counter[tuple[str, str]] = Counter()  # (kind, reason) -> letters
        self._metric = metrics.counter("dead_letters_total", "Messages dead-lettered",
                                       ("kind", "reason")) if metrics is not None else None
        self._logged: set[tuple[str, str]] = set()

    @property
    def total(self) -> int:
        return sum(self.counts.values())

    def of_kind(self, kind: str) -> int:
        return sum(n for (k, _), n in self.counts.items() if k == kind)

    def run(self, handler: Callable[[], T], topic: str, payload: Payload) -> T | Letter:
        """The handler's result, or the dead letter for this message."""
        try:
            return handler()
        except Refused as exc:
            return self.refused(topic, payload, exc)
        except Exception as exc:
            return self.quarantine(topic, payload, exc)

    async def run_async(self, handler: Callable[[], Awaitable[T]], topic: str,
                        payload: Payload) -> T | Letter:
        try:
            return await handler()
        except Refused as exc:
            return self.refused(topic, payload, exc)
        except Exception as exc:
            return self.quarantine(topic, payload, exc)

    def refused(self, topic: str, payload: Payload, exc: Refused) -> Letter:
        return self.letter(topic, payload, type(exc).__name__, describe(exc))

    def quarantine(self, topic: str, payload: Payload, exc: Exception) -> Letter:
        where = last_frame(exc)
        place = (type(exc).__name__, where)
        if place not in self._logged:  # the traceback once per place; counts say the rest
            if len(self._logged) < 1000:
                self._logged.add(place)
            log.error("%s: a handler failed on a message on %r; quarantined", self.source,
                      topic[:200], exc_info=exc)
        return self.letter(topic, payload, type(exc).__name__,
                           f"{describe(exc)} (at {where})", kind=QUARANTINED)

    def needs_letter(self, letter: Letter) -> bool:
        """Whether this service should send the letter: always for a quarantine; for a
        refusal, unless ingest letters the same message (or its topic is not canonical,
        which ingest letters too)."""
        if letter.kind == QUARANTINED:
            return True
        try:
            return topics.parse(letter.origin).kind not in LETTERED_BY_INGEST
        except topics.TopicError:
            return False

    def letter(self, topic: str, payload: Payload, reason: str, text: str, *,
               kind: str = REFUSED) -> Letter:
        """Count a letter and build it; `reason` is the counted word, `text` the whole.
        It goes to the site of a canonical topic, else to this service's site."""
        self.counts[(kind, reason)] += 1
        if self._metric is not None:
            self._metric.labels(kind, reason).inc()
        if kind == REFUSED:
            log.debug("%s: dead letter from %r: %s", self.source, topic[:200], text[:200])
        letter = m.DeadLetter.of(self.source, self.clock_ns(), topic, text, _bytes(payload))
        return Letter(topics.deadletter(self._site(topic), self.source), m.encode(letter),
                      topic, kind, reason, letter.reason)

    def _site(self, topic: str) -> str:
        try:
            return topics.parse(topic).site
        except topics.TopicError:
            return self.site


def _bytes(payload: Payload) -> bytes:
    if isinstance(payload, bytes):
        return payload
    try:
        return payload()
    except Exception as exc:  # the letter still goes, with what could be said
        return f"(payload not shown: {describe(exc)})".encode()
