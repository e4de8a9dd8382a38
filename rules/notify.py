"""Notifiers: the ways out of the engine, each saying whether a failure is worth a retry
(Alertmanager's `(retryable, err)`). Screens, terminals and PA zones are reached through
the broker (rules/service.py publishes DisplayMessage/Broadcast and waits for DisplayAck);
a duty team is reached by a webhook (e.g. a WeCom or DingTalk robot behind a bridge)."""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass
from typing import Any

import aiohttp

from facility.backoff import Backoff

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Outcome:
    ok: bool
    retryable: bool = False
    detail: str = ""


class WebhookNotifier:
    """POSTs JSON to a URL. 2xx: done; 408, 429 and 5xx or no answer: retry; other 4xx: the
    request itself is wrong and a retry would not help."""

    def __init__(self, session: aiohttp.ClientSession, url: str, timeout: float = 10.0) -> None:
        self.session = session
        self.url = url
        self.timeout = aiohttp.ClientTimeout(total=timeout)

    async def send(self, payload: dict[str, Any]) -> Outcome:
        try:
            async with self.session.post(self.url, json=payload, timeout=self.timeout) as resp:
                if 200 <= resp.status < 300:
                    return Outcome(True)
                body = (await resp.text())[:200]
                retryable = resp.status in (408, 429) or resp.status >= 500
                return Outcome(False, retryable, f"HTTP {resp.status}: {body}")
        except (aiohttp.ClientError, TimeoutError) as exc:
            return Outcome(False, True, f"{type(exc).__name__}: {exc}")


async def deliver(notifier: WebhookNotifier, payload: dict[str, Any], *, attempts: int = 5,
                  backoff: Backoff | None = None) -> Outcome:
    """Send with retries for retryable failures; return the last outcome."""
    backoff = backoff or Backoff(initial=1.0, cap=30.0)
    outcome = Outcome(False, True, "not sent")
    for _ in range(attempts):
        outcome = await notifier.send(payload)
        if outcome.ok or not outcome.retryable:
            break
        await asyncio.sleep(backoff.next_delay())
    if not outcome.ok:
        log.warning("webhook %s: %s", notifier.url, outcome.detail)
    return outcome
