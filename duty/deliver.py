"""Delivering one notice: the channels in order, retries with backoff for what is worth a
retry, the next channel (the fallback) when one fails for good, a log row per attempt."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Mapping

from duty.channels import Channel, Outcome
from duty.escalate import Attempt, Notice
from duty.roster import Person

Record = Callable[[Attempt], Awaitable[None]]
Sleep = Callable[[float], Awaitable[None]]


class Deliverer:
    def __init__(self, channels: Mapping[str, Channel], record: Record,
                 clock: Callable[[], float], *, sleep: Sleep = asyncio.sleep,
                 backoff_cap: float = 60.0) -> None:
        self.channels = channels
        self.record = record
        self.clock = clock
        self.sleep = sleep
        self.backoff_cap = backoff_cap

    def usable(self, notice: Notice, person: Person) -> list[Channel]:
        """The notice's channels this person can be reached on, in order."""
        out = []
        for name in notice.channels:
            channel = self.channels.get(name)
            if channel is not None and (not channel.contact or person.contact(channel.contact)):
                out.append(channel)
        return out

    async def deliver(self, notice: Notice, person: Person) -> str:
        """The channel that took the notice, or '' when every one failed."""
        for channel in self.usable(notice, person):
            spec = getattr(channel, "spec", None)
            retries = spec.retries if spec is not None else 2
            delay = spec.backoff if spec is not None else 1.0
            for n in range(1, retries + 2):
                try:
                    outcome = await channel.send(notice, person)
                except Exception as exc:  # a bug in a channel must not stop the others
                    outcome = Outcome(False, False, f"{type(exc).__name__}: {exc}")
                await self.record(Attempt(notice.incident, notice.person, notice.event,
                                          notice.step, channel.name, n, self.clock(),
                                          outcome.ok, outcome.retryable, outcome.detail))
                if outcome.ok:
                    return channel.name
                if not outcome.retryable or n > retries:
                    break  # permanent, or out of retries: the fallback channel
                await self.sleep(delay)
                delay = min(delay * 2, self.backoff_cap)
        return ""
