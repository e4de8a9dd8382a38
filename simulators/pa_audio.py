"""The simulated PA zone's voice: each announcement rendered to Mandarin speech as a WAV file.

Real IP PA systems take audio or text to speech; the simulated one speaks with espeak-ng's
Mandarin voice (`espeak-ng -v cmn`, Debian's package `espeak-ng`, offline): a two-tone
chime when the zone has one, then the text as many times as the announcement's `repeat`
says, a pause between. Every announcement is kept per zone as `{zone}/{broadcast id}.wav`
(at most KEEP per zone, oldest removed) under the player's data directory, and the zone's
last one is also `{zone}/last.wav`.

Rendering runs espeak-ng as a subprocess (about 30 ms for a sentence), never in the event
loop's way; where espeak-ng is missing the zone still announces (and confirms) in text and
says once in the log why there is no audio.
"""

from __future__ import annotations

import asyncio
import io
import logging
import math
import os
import shutil
import struct
import subprocess
import wave
from dataclasses import dataclass
from pathlib import Path

log = logging.getLogger(__name__)

VOICE = "cmn"  # espeak-ng's Mandarin Chinese
SPEED = 150  # words (here: syllables) per minute; espeak-ng's default is 175
PAUSE_S = 1.0  # between repeats
KEEP = 50  # announcements kept per zone
TIMEOUT_S = 20.0  # a sentence takes about 30 ms; a hung espeak-ng is given up


class SpeechError(RuntimeError):
    """espeak-ng failed or is not installed."""


@dataclass(frozen=True)
class Audio:
    """One rendered announcement."""

    zone: str
    broadcast: str  # the Broadcast id
    path: Path
    text: str
    voice: str
    repeat: int
    duration_s: float
    speech_s: float  # one saying of the text, without chime and pauses


def chinese_chars(text: str) -> int:
    """How many Chinese characters (CJK unified ideographs) a text has: what is spoken."""
    return sum(1 for c in text if "\u4e00" <= c <= "\u9fff" or "\u3400" <= c <= "\u4dbf")


class Voice:
    """Renders text to Mandarin WAV with espeak-ng; `program` for tests and other paths."""

    def __init__(self, directory: Path, *, program: str = "espeak-ng", voice: str = VOICE,
                 speed: int = SPEED, keep: int = KEEP, timeout_s: float = TIMEOUT_S) -> None:
        self.directory = directory
        self.program = program
        self.voice = voice
        self.speed = speed
        self.keep = keep
        self.timeout_s = timeout_s
        self.calls: list[list[str]] = []  # the command lines run (for the record, and tests)

    @property
    def available(self) -> bool:
        return shutil.which(self.program) is not None

    async def speak(self, text: str) -> tuple[bytes, int]:
        """One saying of `text`: 16-bit mono PCM frames and their sample rate."""
        argv = [self.program, "-v", self.voice, "-s", str(self.speed), "--stdout", text]
        self.calls.append(argv)
        # subprocess.run in a worker thread, not asyncio's subprocesses: asyncio's child
        # watcher can lose the exit of a process killed on cancellation (CPython #87744,
        # fixed in 3.13) and then waits for it forever; a thread is bounded by the timeout.
        try:
            proc = await asyncio.to_thread(
                subprocess.run, argv, stdin=subprocess.DEVNULL, capture_output=True,
                timeout=self.timeout_s, check=False)
        except FileNotFoundError as exc:
            raise SpeechError(f"{self.program} is not installed (apt-get install espeak-ng)") \
                from exc
        except subprocess.TimeoutExpired as exc:
            raise SpeechError(f"{self.program} took over {self.timeout_s:g} s") from exc
        out, err = proc.stdout, proc.stderr
        if proc.returncode != 0 or not out:
            raise SpeechError(f"{self.program} -v {self.voice} failed ({proc.returncode}): "
                              f"{err.decode('utf-8', 'replace').strip()[:200]}")
        with wave.open(io.BytesIO(_fix_header(out)), "rb") as wav:
            if wav.getsampwidth() != 2 or wav.getnchannels() != 1:
                raise SpeechError("espeak-ng gave audio other than 16-bit mono")
            return wav.readframes(wav.getnframes()), wav.getframerate()

    async def render(self, zone: str, broadcast: str, text: str, *, repeat: int = 1,
                     chime: bool = True) -> Audio:
        """Chime, then the text `repeat` times; written to {zone}/{broadcast}.wav and
        {zone}/last.wav (each replaced whole: a reader never sees half a file)."""
        speech, rate = await self.speak(text)
        pause = _silence(PAUSE_S, rate)
        frames = bytearray(_chime(rate) + _silence(0.3, rate) if chime else b"")
        for n in range(max(1, repeat)):
            if n:
                frames += pause
            frames += speech
        folder = self.directory / zone
        path = folder / f"{broadcast}.wav"
        await asyncio.to_thread(self._write, folder, path, bytes(frames), rate)
        return Audio(zone=zone, broadcast=broadcast, path=path, text=text, voice=self.voice,
                     repeat=repeat, duration_s=len(frames) / 2 / rate,
                     speech_s=len(speech) / 2 / rate)

    def _write(self, folder: Path, path: Path, frames: bytes, rate: int) -> None:
        folder.mkdir(parents=True, exist_ok=True)
        buffer = io.BytesIO()
        with wave.open(buffer, "wb") as wav:
            wav.setnchannels(1)
            wav.setsampwidth(2)
            wav.setframerate(rate)
            wav.writeframes(frames)
        data = buffer.getvalue()
        for target in (path, folder / "last.wav"):
            partial = target.with_suffix(".part")
            partial.write_bytes(data)
            os.replace(partial, target)
        kept = sorted((p for p in folder.glob("*.wav") if p.name != "last.wav"),
                      key=lambda p: p.stat().st_mtime_ns)
        for old in kept[:-self.keep]:
            old.unlink(missing_ok=True)


def _fix_header(data: bytes) -> bytes:
    """espeak-ng writing to a pipe cannot seek back: its RIFF and data sizes say 0x7fffffff
    (or 0). Put the real sizes in, so the wave module reads exactly the frames there are."""
    if len(data) < 44 or data[:4] != b"RIFF" or data[36:40] != b"data":
        return data
    size = len(data) - 44
    return data[:4] + struct.pack("<I", 36 + size) + data[8:40] + struct.pack("<I", size) \
        + data[44:]


def _silence(seconds: float, rate: int) -> bytes:
    return b"\x00\x00" * round(seconds * rate)


def _chime(rate: int) -> bytes:
    """A PA's ding-dong: two soft tones (E5 then C5), 0.4 s each, fading out."""
    out = bytearray()
    for freq in (659.25, 523.25):
        count = round(0.4 * rate)
        for i in range(count):
            fade = 1.0 - i / count
            out += struct.pack("<h", round(9000 * fade * math.sin(2 * math.pi * freq * i / rate)))
    return bytes(out)
