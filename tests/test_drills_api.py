"""Drills from the control room: a supervisor starts one (audited), an operator may not; the
drill runs on the simulators through the rules engine to the screens and PA, and the page
plays each PA zone's last announcement through the API (GET /api/pa/{zone}/last.wav).
"""

from __future__ import annotations

import io
import uuid
import wave
from pathlib import Path

from facility import labels
from facility.messages import Family
from facility.settings import Settings
from simulators.display_player import DisplayPlayer
from tests.conftest import catalog
from tests.helpers import eventually
from tests.test_api_stack import api_stack, new_site_id


async def test_a_supervisor_starts_a_drill_and_the_page_can_play_the_pa(
        settings: Settings, tmp_path: Path) -> None:
    site_id = new_site_id()
    endpoints = catalog().endpoints
    # The PA's own player with its HTTP endpoint, where the API finds the audio.
    pa = DisplayPlayer.from_config(settings.mqtt, site_id, endpoints, http_host="127.0.0.1",
                                   data_dir=tmp_path / "pa", client_id=f"pa-{uuid.uuid4().hex}")
    async with pa:
        await pa.wait_ready()
        port = int(pa.url.rsplit(":", 1)[1])
        settings = settings.model_copy(update={"rules": settings.rules.model_copy(
            update={"display_port": port})})
        async with api_stack(settings, tmp_path, rules=True, simulate={Family.FIRE},
                             scale=20, site_id=site_id) as stack:
            body = {"scenario": "fire", "place": "ebike-shed-west", "duration_s": 120}
            refused = await stack.post("/api/drills", "olga", body)
            assert refused.status_code == 403, refused.text
            wrong = await stack.post("/api/drills", "sam", {"scenario": "fire",
                                                            "place": "main-lobby"})
            assert wrong.status_code == 409 and "没有火灾探测器" in wrong.json()["detail"]
            # Nothing was played for either.
            assert stack.campus is not None and stack.campus.drills is not None
            desk = stack.campus.drills

            started = await stack.post("/api/drills", "sam", body)
            assert started.status_code == 201, started.text
            view = started.json()
            assert (view["scenario"], view["name"], view["by"]) == ("fire", "火警演练", "sam")
            assert view["place_name"] and view["place_name"] != "ebike-shed-west"
            listed = (await stack.get("/api/drills")).json()
            assert [d["id"] for d in listed] == [view["id"]]
            rows = await stack.store.rows(site_id, command=view["id"])
            assert [(r.event, r.username) for r in rows] == [("drill", "sam"),
                                                             ("drill_sent", "sam")]

            async def played() -> list[str]:
                return list(desk.played)
            assert await eventually(played, bool, 20, "the simulators playing it") == \
                [view["id"]]

            # Through the engine to the PA; its words say 演练, and the page can play them.
            async def spoken() -> list[dict[str, object]]:
                reply = await stack.get("/api/pa")
                assert reply.status_code == 200, reply.text
                return [z for z in reply.json() if z["audio"]]
            zones = await eventually(spoken, bool, 40, "a PA zone's audio through the API")
            zone = zones[0]
            assert str(zone["text"]).startswith(labels.DRILL_SPEECH_PREFIX)
            assert zone["audio"]["voice"] == "cmn"  # type: ignore[index]  # JSON
            assert zone["audio"]["url"] == f"/api/pa/{zone['zone']}/last.wav"  # type: ignore[index]  # JSON
            audio = await stack.get(f"/api/pa/{zone['zone']}/last.wav")
            assert audio.status_code == 200 and audio.headers["content-type"] == "audio/wav"
            with wave.open(io.BytesIO(audio.content)) as wav:
                assert wav.getnframes() / wav.getframerate() > 3
            assert (await stack.get("/api/pa/led-west-gate/last.wav")).status_code == 404
            anonymous = await stack.http.get(f"/api/pa/{zone['zone']}/last.wav")
            assert anonymous.status_code == 401
            assert stack.player is not None
            # The page sees the alerts as the drill's.
            marked = [a for a in (await stack.get("/api/alerts")).json()
                      if a["drill"] == view["id"]]
            assert marked and {a["place"] for a in marked} == {"ebike-shed-west"}
            screens = [s.current.text for s in stack.player.screens.values()
                       if s.current is not None and s.current.drill == view["id"]]
            assert screens and all(t.startswith(labels.DRILL_PREFIX) for t in screens)
