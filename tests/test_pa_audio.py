"""The PA speaks: each announcement becomes Mandarin speech (espeak-ng's cmn voice), kept as a
WAV file per zone with its chime and repeats, served by the player for the page.

What is checked: the file exists and is a valid 16-bit mono WAV (the wave module reads it),
espeak-ng was asked for the Mandarin voice (`-v cmn`), and the speech's length fits the
text: between 0.3 and 0.75 s per Chinese character (measured: about 0.48 s at 150
syllables a minute), plus at most a second of lead-in and tail.
"""

from __future__ import annotations

import asyncio
import uuid
import wave
from collections.abc import Awaitable, Callable
from pathlib import Path

import httpx
import pytest
from pydantic import SecretStr

from facility import messages as m
from facility import topics
from facility.settings import MqttSettings, Settings
from simulators.display_player import DisplayPlayer
from simulators.pa_audio import PAUSE_S, SpeechError, Voice, chinese_chars
from tests.helpers import eventually, publish_all

FIRE = "紧急通知：西门电动车棚发生火警，请全体人员保持冷静，从最近的安全出口有序撤离。"
SHORT = "请注意，积水已消退。"


def fits(seconds: float, text: str) -> bool:
    n = chinese_chars(text)
    return 0.3 * n <= seconds <= 0.75 * n + 1.0


def read_wav(path: Path) -> tuple[int, int, int, float]:
    with wave.open(str(path), "rb") as wav:
        return (wav.getnchannels(), wav.getsampwidth(), wav.getframerate(),
                wav.getnframes() / wav.getframerate())


async def test_an_announcement_is_mandarin_speech_of_a_fitting_length(tmp_path: Path) -> None:
    voice = Voice(tmp_path)
    one = await voice.render("pa-west", "bc-1", FIRE, repeat=1, chime=False)
    channels, width, rate, seconds = read_wav(one.path)
    assert (channels, width) == (1, 2) and rate >= 16000
    assert voice.calls[-1][:3] == ["espeak-ng", "-v", "cmn"], voice.calls[-1]
    assert one.voice == "cmn" and FIRE in voice.calls[-1]
    assert abs(seconds - one.speech_s) < 0.01  # no chime, one saying
    assert fits(seconds, FIRE), (seconds, chinese_chars(FIRE))
    short = await voice.render("pa-west", "bc-2", SHORT, repeat=1, chime=False)
    assert fits(short.speech_s, SHORT) and short.speech_s < one.speech_s / 2

    # Repeats and the chime: said three times with pauses, after a 0.8 s ding-dong.
    three = await voice.render("pa-west", "bc-3", FIRE, repeat=3, chime=True)
    _, _, _, total = read_wav(three.path)
    expected = 0.8 + 0.3 + 3 * three.speech_s + 2 * PAUSE_S
    assert abs(total - expected) < 0.05, (total, expected)
    assert read_wav(tmp_path / "pa-west" / "last.wav")[3] == total  # the zone's last one
    assert sorted(p.name for p in (tmp_path / "pa-west").glob("*.wav")) == \
        ["bc-1.wav", "bc-2.wav", "bc-3.wav", "last.wav"]


async def test_without_espeak_the_zone_still_announces(tmp_path: Path) -> None:
    nowhere = MqttSettings(url=SecretStr("mqtt://127.0.0.1:1"))  # never connected here
    player = DisplayPlayer(nowhere, "s", [("pa-west", "西区广播", "pa_zone")], data_dir=tmp_path,
                           voice=Voice(tmp_path, program="no-such-espeak"))
    msg = m.Broadcast(id="bc-x", site="s", zone="pa-west", ts=1_800_000_000 * 10**9,
                      kind=m.DisplayKind.EMERGENCY, priority=1, text=SHORT)
    ack = player.take("pa-west", msg)
    assert ack is not None and ack.status is m.AckStatus.SHOWN
    await player.wait_spoken()
    assert player.screens["pa-west"].announced == [msg]
    assert player.screens["pa-west"].audio == []  # said why in the log, once


async def test_a_hung_speech_program_is_given_up_and_never_holds_a_stop(
        tmp_path: Path) -> None:
    """A speech program that never answers: the announcement fails within the voice's
    bound (the zone goes on in text), and cancelling speech in flight (the player
    stopping) returns at once instead of waiting for the program's exit."""
    hung = tmp_path / "hung-espeak"
    hung.write_text("#!/bin/sh\nexec sleep 60\n")
    hung.chmod(0o755)
    voice = Voice(tmp_path, program=str(hung), timeout_s=0.5)
    with pytest.raises(SpeechError, match=r"took over 0\.5 s"):
        await asyncio.wait_for(voice.speak(SHORT), 10)

    slow_program = tmp_path / "slow-espeak"  # ends by itself: the worker thread is freed
    slow_program.write_text("#!/bin/sh\nexec sleep 3\n")
    slow_program.chmod(0o755)
    slow = Voice(tmp_path, program=str(slow_program), timeout_s=30)
    speaking = asyncio.create_task(slow.speak(SHORT))
    await eventually(_started(slow), bool, 10, "the program started")
    speaking.cancel()
    await asyncio.wait_for(asyncio.gather(speaking, return_exceptions=True), 5)
    assert speaking.cancelled()


def _started(voice: Voice) -> Callable[[], Awaitable[bool]]:
    async def probe() -> bool:
        return bool(voice.calls)
    return probe


@pytest.mark.servers
async def test_the_player_speaks_keeps_and_serves_each_zones_last_announcement(
        settings: Settings, tmp_path: Path) -> None:
    site = f"t-{uuid.uuid4().hex[:10]}"
    zones = [("pa-west", "西区广播", "pa_zone"), ("pa-south", "南区广播", "pa_zone"),
             ("led-west-gate", "西门LED屏", "led")]
    player = DisplayPlayer(settings.mqtt, site, zones, http_host="127.0.0.1",
                           data_dir=tmp_path / "player")
    async with player:
        await player.wait_ready()
        now = 1_800_000_000 * 10**9
        west = m.Broadcast(id="bc-west-1", site=site, zone="pa-west", ts=now,
                           kind=m.DisplayKind.EMERGENCY, priority=1, text=FIRE, repeat=2)
        south = m.Broadcast(id="bc-south-1", site=site, zone="pa-south", ts=now,
                            kind=m.DisplayKind.ALL_CLEAR, priority=5, text=SHORT, chime=False)
        await publish_all(settings.mqtt, [(topics.broadcast(site, "pa-west"), m.encode(west)),
                                          (topics.broadcast(site, "pa-south"), m.encode(south))])

        async def spoken() -> int:
            return sum(len(player.screens[z].audio) for z in ("pa-west", "pa-south"))
        await eventually(spoken, lambda n: n == 2, 20, "both announcements spoken")
        audio = player.screens["pa-west"].audio[-1]
        assert audio.path == tmp_path / "player" / "pa" / "pa-west" / "bc-west-1.wav"
        assert audio.repeat == 2 and fits(audio.speech_s, FIRE)
        assert audio.duration_s > 2 * audio.speech_s

        async with httpx.AsyncClient(base_url=player.url, timeout=10) as http:
            listing = (await http.get("/api/pa")).json()
            assert listing["pa-west"]["text"] == FIRE
            assert listing["pa-west"]["audio"]["voice"] == "cmn"
            assert listing["pa-west"]["audio"]["url"] == "/pa/pa-west/last.wav"
            assert "led-west-gate" not in listing
            reply = await http.get("/pa/pa-west/last.wav")
            assert reply.status_code == 200 and reply.headers["content-type"] == "audio/wav"
            served = tmp_path / "served.wav"
            served.write_bytes(reply.content)
            assert read_wav(served)[3] == pytest.approx(audio.duration_s, abs=0.01)
            assert (await http.get("/pa/pa-south/bc-south-1.wav")).status_code == 200
            assert (await http.get("/pa/led-west-gate/last.wav")).status_code == 404
            page = (await http.get("/")).text
            assert '<audio controls preload="none" src="/pa/pa-west/last.wav">' in page

        # Re-sent (same id): confirmed as a duplicate, not said (or rendered) again.
        await publish_all(settings.mqtt, [(topics.broadcast(site, "pa-west"), m.encode(west))])
        await eventually(lambda: _dupes(player), lambda n: n == 1, 10, "the duplicate")
        await player.wait_spoken()
        assert len(player.screens["pa-west"].audio) == 1


async def _dupes(player: DisplayPlayer) -> int:
    return player.screens["pa-west"].duplicates
