"""The PA zones' last announcements as Mandarin speech, for the page to play.

The simulated PA (simulators/display_player.py) renders every announcement to a WAV file
(espeak-ng's cmn voice) and serves each zone's last one; these routes pass them on from the
player at the rules settings' display_host:display_port, so the page plays them from its
own origin, with the user's login:

    GET /api/pa                     each zone: its last text and whether audio is there
    GET /api/pa/{zone}/last.wav     the zone's last announcement (audio/wav)

The page fetches the WAV with its Authorization header and plays it from a blob: URL.
"""

from __future__ import annotations

import json
import re
from typing import Any

import aiohttp
from fastapi import APIRouter, HTTPException, Response
from pydantic import BaseModel

from api.deps import Ctx, CurrentUser, problems

router = APIRouter(prefix="/api", tags=["displays and PA"])
ZONE = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,63}")
TIMEOUT = aiohttp.ClientTimeout(total=10)
# The simulated PA is not running where the API looks (display_host:display_port): a state
# of the deployment, answered 409 with the reason, as the duty routes do without a service.
UNAVAILABLE = "广播终端（模拟）未运行或不可达"


class PaAudio(BaseModel):
    broadcast: str
    voice: str
    repeat: int
    duration_s: float
    url: str  # on this API: /api/pa/{zone}/last.wav


class PaZone(BaseModel):
    zone: str
    name: str
    text: str  # the last announcement's words
    audio: PaAudio | None


async def _player(ctx: Ctx, path: str) -> tuple[int, bytes, str]:
    rules = ctx.settings.rules
    url = f"http://{rules.display_host}:{rules.display_port}{path}"
    try:
        async with aiohttp.ClientSession(timeout=TIMEOUT) as http, http.get(url) as reply:
            return reply.status, await reply.read(), reply.content_type
    except (aiohttp.ClientError, TimeoutError):
        raise HTTPException(409, UNAVAILABLE) from None


@router.get("/pa", response_model=list[PaZone], responses=problems(401, 409),
            summary="Each PA zone's last announcement: its words and its Mandarin audio")
async def pa_zones(_: CurrentUser, ctx: Ctx) -> list[PaZone]:
    status, body, _type = await _player(ctx, "/api/pa")
    if status != 200:
        raise HTTPException(409, UNAVAILABLE)
    listing: dict[str, Any] = json.loads(body)
    out = []
    for zone in (e for e in ctx.endpoints.endpoints if e.is_pa):
        item = listing.get(zone.id) or {}
        audio = item.get("audio")
        out.append(PaZone(zone=zone.id, name=zone.name, text=str(item.get("text", "")),
                          audio=None if not audio else PaAudio(
                              broadcast=audio["broadcast"], voice=audio["voice"],
                              repeat=audio["repeat"], duration_s=audio["duration_s"],
                              url=f"/api/pa/{zone.id}/last.wav")))
    return out


@router.get("/pa/{zone}/last.wav", response_class=Response,
            responses={200: {"content": {"audio/wav": {}},
                             "description": "The zone's last announcement, Mandarin speech"},
                       **problems(401, 404, 409)},
            summary="A PA zone's last announcement as audio (WAV)")
async def pa_audio(zone: str, _: CurrentUser, ctx: Ctx) -> Response:
    if ZONE.fullmatch(zone) is None or not any(e.id == zone and e.is_pa
                                               for e in ctx.endpoints.endpoints):
        raise HTTPException(404, f"没有广播分区{zone}")
    status, body, kind = await _player(ctx, f"/pa/{zone}/last.wav")
    if status == 404:
        raise HTTPException(404, "该广播分区还没有播报")
    if status != 200 or kind != "audio/wav":
        raise HTTPException(409, UNAVAILABLE)
    return Response(content=body, media_type="audio/wav",
                    headers={"Cache-Control": "no-store"})
