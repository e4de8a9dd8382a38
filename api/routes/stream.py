"""The live stream: Server-Sent Events of readings, statuses, events, alerts, displays,
broadcasts and command progress, filtered by zone, family and kind.

Reconnecting with `Last-Event-ID` (browsers' EventSource sends it by itself) replays what
was missed from a bounded buffer; when that is not possible the stream starts with a
`reset` event and the open alerts re-read from the state store (as `alert` events with
transition `snapshot`), so a client never misses an alert.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator
from typing import Annotated, Literal

from fastapi import APIRouter, Header, Query
from fastapi.responses import StreamingResponse

from api.deps import Ctx, CurrentUser, problems
from api.live import LiveEvent, Subscription
from facility import messages as m

router = APIRouter(prefix="/api", tags=["live stream"])
Kind = Literal["reading", "status", "event", "alert", "display", "display_ack", "broadcast",
               "command", "link"]
HEARTBEAT = 15.0  # s; a comment line keeps proxies and the client's watchdog content

DESCRIPTION = """\
`text/event-stream`. Each event has `id: <epoch>-<seq>`, `event: <kind>` and `data:` one
JSON object:

- `reading`: device, family, ts, quality, values, units, errors
- `status`: a DeviceStatus (online/offline, reason)
- `event`: a device Event (fire_alarm, fault, ...)
- `alert`: an AlertMessage (state change of an alert; `transition: snapshot` after a reset)
- `display`: a DisplayMessage (what a screen must show now)
- `display_ack`: a DisplayAck (a screen or PA zone confirmed a message)
- `broadcast`: a Broadcast (PA announcement), or `{"manual": BroadcastView}`
- `command`: a CommandView (a bollard command's approval and results)
- `link`: `{"site", "bridge", "up"}`: the site broker's bridge to the centre went up/down
- `reset`: `{"reason": ...}`; reload state, the open alerts follow

A comment line (`: ping`) comes every 15 s when nothing else does."""


@router.get("/stream", response_class=StreamingResponse, summary="Live events (SSE)",
            description=DESCRIPTION,
            responses={200: {"content": {"text/event-stream": {"schema": {"type": "string"}}},
                             "description": "the event stream"}, **problems(401)})
async def stream(
        _: CurrentUser, ctx: Ctx,
        zone: Annotated[list[str] | None, Query(description="only these zones")] = None,
        family: Annotated[list[str] | None, Query(description="only these families")] = None,
        kind: Annotated[list[Kind] | None, Query(description="only these kinds")] = None,
        last_event_id: Annotated[str | None, Header(alias="Last-Event-ID", max_length=100)]
        = None) -> StreamingResponse:
    flt = ctx.hub.make_filter(zone or (), family or (), kind or ())
    sub, replay, resume_id = ctx.hub.subscribe(flt, last_event_id)
    ctx.metrics.live_clients.inc()
    return StreamingResponse(_events(ctx, sub, replay, resume_id, last_event_id),
                             media_type="text/event-stream",
                             headers={"Cache-Control": "no-store", "X-Accel-Buffering": "no"})


async def _events(ctx: Ctx, sub: Subscription, replay: list[LiveEvent] | None,
                  resume_id: str, last_event_id: str | None) -> AsyncIterator[bytes]:
    try:
        yield b"retry: 2000\n\n"
        if replay is None:
            reason = "resume point no longer available" if last_event_id else "new stream"
            yield _sse("reset", {"reason": reason}, resume_id)
            async for chunk in _open_alerts(ctx, sub):
                yield chunk
        else:
            for missed in replay:
                yield missed.sse()
        while True:
            try:
                async with asyncio.timeout(HEARTBEAT):
                    event: LiveEvent | None = await sub.queue.get()
            except TimeoutError:
                yield b": ping\n\n"
                continue
            if event is None:
                return
            yield event.sse()
    finally:
        ctx.hub.unsubscribe(sub)
        ctx.metrics.live_clients.dec()


async def _open_alerts(ctx: Ctx, sub: Subscription) -> AsyncIterator[bytes]:
    now = time.time_ns()
    for alert in await ctx.alerts.alerts(ctx.site_id, open_only=True, limit=5000):
        zones = (alert.zone,) if alert.zone else ()
        if sub.filter.wants(LiveEvent("", 0, "alert", zones, alert.family, "")):
            yield _sse("alert", m.to_builtins(alert.message("snapshot", now)))


def _sse(kind: str, data: dict[str, object], event_id: str | None = None) -> bytes:
    head = f"id: {event_id}\n" if event_id else ""
    body = json.dumps(data, ensure_ascii=False, separators=(",", ":"))
    return f"{head}event: {kind}\ndata: {body}\n\n".encode()
