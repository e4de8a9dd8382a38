"""Simulated output endpoints: the campus's LED screens, information terminals and PA zones.

A DisplayPlayer subscribes to the site's display/{id} (retained) and broadcast/{zone}
topics for its endpoints, "shows" or "announces" what arrives, and confirms on
display-ack/{id}. It is idempotent by message id: a re-sent message is confirmed again
(status `duplicate`) but never shown or announced twice. With a journal file it stays so
across its own restarts (a PA zone that reboots must not announce an evacuation again):
every message taken is appended to the journal, which is read back at start. Its MQTT
session is persistent, so what is published while it is away waits at the broker.
A small aiohttp page per screen renders what it shows (UTF-8), for the demo:
http://host:port/ lists the screens. Endpoints can be made silent (no confirmation) to
exercise retries and the silent alert.

A PA zone speaks: each new announcement is rendered to Mandarin speech (espeak-ng's `cmn`
voice, simulators/pa_audio.py) with its chime and repeats, kept as a WAV file per zone
under the player's data directory (`data_dir`/pa/{zone}/), and the last one of each zone
is served at http://host:port/pa/{zone}/last.wav (`/api/pa` lists them). A drill's
(演练) screens and announcements say so: the rules engine put 演练 in their text.

As a process of its own (the outage tests and the benchmarks stop and kill it):

    python -m simulators.display_player --config config/facility.yaml --journal var/screens.jsonl
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import html
import json
import logging
import signal
import tempfile
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import TextIO

from aiohttp import web

from facility import labels, topics
from facility import messages as m
from facility.deadletters import DeadLetters, Letter
from facility.endpoints import EndpointConfig
from facility.mqtt import Connection, MqttError, run_connected
from facility.mqttlink import connector
from facility.service import Service
from facility.settings import MqttSettings
from facility.topics import Kind
from simulators.pa_audio import Audio, SpeechError, Voice

log = logging.getLogger(__name__)
SEEN_LIMIT = 2000  # message ids remembered per endpoint


@dataclass
class Screen:
    id: str
    name: str
    kind: str
    current: m.DisplayMessage | None = None
    shown: list[m.DisplayMessage] = field(default_factory=list)  # every distinct message shown
    announced: list[m.Broadcast] = field(default_factory=list)  # PA announcements made
    audio: list[Audio] = field(default_factory=list)  # PA: the announcements as speech
    seen: OrderedDict[str, None] = field(default_factory=OrderedDict)
    acks_sent: int = 0
    duplicates: int = 0


class DisplayPlayer(Service):
    def __init__(self, mqtt: MqttSettings, site_id: str, endpoints: list[tuple[str, str, str]],
                 *, http_host: str | None = None, http_port: int = 0,
                 clock_ns: Callable[[], int] = time.time_ns, journal: Path | None = None,
                 client_id: str | None = None, data_dir: Path | None = None,
                 voice: Voice | None = None, speech: bool = True) -> None:
        """`endpoints`: (id, name, kind) of each endpoint to play; kind 'pa_zone' announces.
        `journal`: a file that keeps what was shown across restarts. `data_dir`: where the
        PA zones keep their announcements as audio (default: beside the journal, else a
        folder of the system's temporary directory). `speech` off: announcements in text
        only (a latency benchmark, where a real PA's speech would not share our CPU)."""
        super().__init__()
        self.name = f"display player {site_id}"
        self.mqtt = mqtt
        self.site_id = site_id
        self.clock_ns = clock_ns
        self.screens = {eid: Screen(eid, name, kind) for eid, name, kind in endpoints}
        self.silent: set[str] = set()  # endpoints that do not confirm (a broken screen)
        self.http_host = http_host
        self.http_port = http_port
        self._runner: web.AppRunner | None = None
        self.url = ""
        self.journal_path = journal
        self._journal: TextIO | None = None
        self.client_id = client_id or f"{mqtt.client_prefix}-displays-{site_id}"
        self._acks: set[asyncio.Task[None]] = set()
        self.letters = DeadLetters("screens", site_id, clock_ns=clock_ns)
        if data_dir is None:
            data_dir = journal.parent if journal is not None else \
                Path(tempfile.gettempdir()) / f"facility-screens-{site_id}"
        self.data_dir = data_dir
        self.voice = voice or Voice(data_dir / "pa")
        self.speech = speech
        self._speaking: set[asyncio.Task[None]] = set()
        self._speech_failed = False

    @classmethod
    def from_config(cls, mqtt: MqttSettings, site_id: str, config: EndpointConfig, *,
                    http_host: str | None = None, http_port: int = 0,
                    clock_ns: Callable[[], int] = time.time_ns, journal: Path | None = None,
                    client_id: str | None = None, data_dir: Path | None = None,
                    voice: Voice | None = None, speech: bool = True) -> DisplayPlayer:
        endpoints = [(e.id, e.name, e.kind.value) for e in config.endpoints]
        return cls(mqtt, site_id, endpoints, http_host=http_host, http_port=http_port,
                   clock_ns=clock_ns, journal=journal, client_id=client_id,
                   data_dir=data_dir, voice=voice, speech=speech)

    async def open(self) -> None:
        if self.journal_path is not None:
            self._read_journal(self.journal_path)
            self._journal = self.journal_path.open("a", encoding="utf-8")
        if self.http_host is None:
            return
        app = web.Application()
        app.router.add_get("/", self._index)
        app.router.add_get("/screen/{id}", self._page)
        app.router.add_get("/api/screens", self._api)
        app.router.add_get("/api/pa", self._api_pa)
        app.router.add_get("/pa/{zone}/{name}", self._pa_audio)
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        site = web.TCPSite(self._runner, self.http_host, self.http_port)
        await site.start()
        port = self._runner.addresses[0][1]
        self.url = f"http://{self.http_host}:{port}"
        log.info("%s: screens at %s/", self.name, self.url)

    async def close(self) -> None:
        for task in [*self._acks, *self._speaking]:
            task.cancel()
        await asyncio.gather(*self._acks, *self._speaking, return_exceptions=True)
        if self._journal is not None:
            self._journal.close()
            self._journal = None
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    def _read_journal(self, path: Path) -> None:
        """What was taken before a restart: those ids are not shown or announced again."""
        if not path.exists():
            return
        with path.open(encoding="utf-8") as lines:
            for line in lines:
                try:
                    item = json.loads(line)
                    screen = self.screens.get(item["endpoint"])
                except (ValueError, KeyError, TypeError):
                    continue  # a line cut short by a kill
                if screen is not None:
                    screen.seen[str(item["id"])] = None
                    while len(screen.seen) > SEEN_LIMIT:
                        screen.seen.popitem(last=False)

    def _write_journal(self, endpoint_id: str, msg: m.DisplayMessage | m.Broadcast,
                       new: bool) -> None:
        if self._journal is None:
            return
        kind = "display" if isinstance(msg, m.DisplayMessage) else "broadcast"
        self._journal.write(json.dumps({"endpoint": endpoint_id, "id": msg.id, "kind": kind,
                                        "new": new, "ts": self.clock_ns()}) + "\n")
        self._journal.flush()  # in the kernel's hands: a killed process loses nothing

    async def run(self) -> None:
        # A persistent session: what is published while the player is away is kept for it.
        await run_connected(self.mqtt, connector(self.mqtt, self.client_id, session_expiry=3600),
                            self._session, name=self.name, on_disconnect=self.ready.clear)

    async def _session(self, client: Connection) -> None:
        await client.subscribe([topics.subscription(Kind.DISPLAY, self.site_id),
                                topics.subscription(Kind.BROADCAST, self.site_id)], qos=1)
        self.ready.set()
        while True:
            batch = await client.next_batch(100, None)
            for message in batch:
                topic, payload = message.topic, message.payload
                if not payload:
                    continue  # a retained message cleared
                out = self.letters.run(partial(self._take, topic, payload), topic, payload)
                if isinstance(out, Letter):  # a screen cannot show it: kept for a person
                    self._send(client, out.topic, out.payload)
                elif out is not None:  # each screen confirms on its own: no waiting in line
                    self._send(client, *out)
            client.ack(batch)  # shown, journalled and confirming, or dead-lettered

    def _take(self, topic: str, payload: bytes) -> tuple[str, bytes] | None:
        parsed = topics.parse(topic)
        if parsed.kind is Kind.DISPLAY:
            msg: m.DisplayMessage | m.Broadcast = m.decode(payload, m.DisplayMessage)
        else:
            msg = m.decode(payload, m.Broadcast)
        ack = self.take(parsed.name, msg)
        if ack is None:
            return None
        return topics.display_ack(self.site_id, parsed.name), m.encode(ack)

    def _send(self, client: Connection, topic: str, payload: bytes) -> None:
        task = asyncio.get_running_loop().create_task(self._confirm(client, topic, payload))
        self._acks.add(task)
        task.add_done_callback(self._acks.discard)

    async def _confirm(self, client: Connection, topic: str, payload: bytes) -> None:
        with contextlib.suppress(MqttError):  # unconfirmed: the engine re-sends
            await client.publish(topic, payload, qos=1)

    def take(self, endpoint_id: str, msg: m.DisplayMessage | m.Broadcast) -> m.DisplayAck | None:
        """Show or announce once per message id; the confirmation to send, if any."""
        screen = self.screens.get(endpoint_id)
        if screen is None:
            return None
        if msg.id in screen.seen:
            screen.duplicates += 1
            status = m.AckStatus.DUPLICATE
            # A screen back from a restart shows its current content again (not a new
            # showing); an older message re-sent late does not replace a newer one.
            if isinstance(msg, m.DisplayMessage) and \
                    (screen.current is None or msg.ts >= screen.current.ts):
                screen.current = msg
            self._write_journal(endpoint_id, msg, new=False)
        else:
            screen.seen[msg.id] = None
            while len(screen.seen) > SEEN_LIMIT:
                screen.seen.popitem(last=False)
            if isinstance(msg, m.DisplayMessage):
                screen.current = msg
                screen.shown.append(msg)
            else:
                screen.announced.append(msg)
                log.info("%s: PA %s announces: %s", self.name, endpoint_id, msg.text)
                if self.speech:
                    self._speak(screen, msg)
            self._write_journal(endpoint_id, msg, new=True)
            status = m.AckStatus.SHOWN
        if endpoint_id in self.silent:
            return None
        screen.acks_sent += 1
        return m.DisplayAck(site=self.site_id, endpoint=endpoint_id, message=msg.id,
                            ts=self.clock_ns(), status=status)

    def _speak(self, screen: Screen, msg: m.Broadcast) -> None:
        """Render the announcement to speech beside the loop (the confirmation does not
        wait for it: a real PA confirms when it starts the chime)."""
        with contextlib.suppress(RuntimeError):  # no running loop: a unit test's take()
            task = asyncio.get_running_loop().create_task(
                self._render(screen, msg), name=f"pa speech {screen.id}")
            self._speaking.add(task)
            task.add_done_callback(self._speaking.discard)

    async def _render(self, screen: Screen, msg: m.Broadcast) -> None:
        try:
            audio = await self.voice.render(screen.id, msg.id, msg.text, repeat=msg.repeat,
                                            chime=msg.chime)
        except (SpeechError, OSError) as exc:
            if not self._speech_failed:  # said once: the PA goes on in text
                log.warning("%s: PA announcements without audio: %s", self.name, exc)
                self._speech_failed = True
            return
        screen.audio.append(audio)
        del screen.audio[:-20]

    async def wait_spoken(self) -> None:
        """Until every announcement taken so far has its audio (tests)."""
        while self._speaking:
            await asyncio.gather(*list(self._speaking), return_exceptions=True)

    # --- pages ----------------------------------------------------------------------

    async def _index(self, _: web.Request) -> web.Response:
        rows = "".join(
            f'<li><a href="/screen/{html.escape(s.id)}">{html.escape(s.name)}</a> — '
            f"{html.escape(s.current.text if s.current else labels.ENDPOINT_TEXT['empty'])}"
            "</li>"
            for s in self.screens.values() if s.kind != "pa_zone")
        pa = "".join(
            f"<li>{html.escape(s.name)}："
            f"{html.escape(s.announced[-1].text if s.announced else '—')}"
            + (f' <audio controls preload="none" src="/pa/{html.escape(s.id)}/last.wav">'
               "</audio>" if s.audio else "") + "</li>"
            for s in self.screens.values() if s.kind == "pa_zone")
        body = (f"<h1>显示屏与广播（{html.escape(self.site_id)}）</h1><ul>{rows}</ul>"
                f"<h2>广播分区</h2><ul>{pa}</ul>")
        return _html("显示屏", body, refresh=3)

    async def _page(self, request: web.Request) -> web.Response:
        screen = self.screens.get(request.match_info["id"])
        if screen is None or screen.kind == "pa_zone":
            raise web.HTTPNotFound(text="no such screen")
        msg = screen.current
        colour = {"red": "#d00000", "orange": "#e07000", "yellow": "#c8b400",
                  "green": "#008a3e", "blue": "#0050c0"}.get(msg.colour if msg else "", "#111")
        title = html.escape(msg.title) if msg and msg.title else ""
        text = html.escape(msg.text) if msg else labels.ENDPOINT_TEXT["empty"]
        body = (f'<div class="screen" style="background:{colour}">'
                f"<div class=name>{html.escape(screen.name)}</div>"
                f"<div class=title>{title}</div><div class=text>{text}</div></div>")
        return _html(screen.name, body, refresh=2)

    async def _pa_audio(self, request: web.Request) -> web.StreamResponse:
        """A zone's announcement as WAV: last.wav, or {broadcast id}.wav while kept."""
        screen = self.screens.get(request.match_info["zone"])
        name = request.match_info["name"]
        if screen is None or screen.kind != "pa_zone" or not name.endswith(".wav"):
            raise web.HTTPNotFound(text="no such PA zone or announcement")
        wanted = name.removesuffix(".wav")
        audio = next((a for a in reversed(screen.audio)
                      if wanted in ("last", a.broadcast)), None)
        path = audio.path.parent / "last.wav" if audio and wanted == "last" else \
            audio.path if audio else None
        if path is None or not path.exists():
            raise web.HTTPNotFound(text="no announcement to play")
        return web.FileResponse(path, headers={"Content-Type": "audio/wav",
                                               "Cache-Control": "no-store"})

    async def _api_pa(self, _: web.Request) -> web.Response:
        """Each PA zone's last announcement: its text, voice, length and where to play it."""
        out = {}
        for s in self.screens.values():
            if s.kind != "pa_zone":
                continue
            last = s.audio[-1] if s.audio else None
            out[s.id] = {"name": s.name,
                         "text": s.announced[-1].text if s.announced else "",
                         "audio": None if last is None else {
                             "broadcast": last.broadcast, "voice": last.voice,
                             "repeat": last.repeat, "duration_s": round(last.duration_s, 2),
                             "url": f"/pa/{s.id}/last.wav"}}
        return web.json_response(out, dumps=_dumps)

    async def _api(self, _: web.Request) -> web.Response:
        return web.json_response({
            s.id: {"name": s.name, "kind": s.kind,
                   "current": m.to_builtins(s.current) if s.current else None,
                   "shown": len(s.shown), "announced": [b.text for b in s.announced[-5:]]}
            for s in self.screens.values()}, dumps=_dumps)


def _dumps(value: object) -> str:
    import json

    return json.dumps(value, ensure_ascii=False)


def _html(title: str, body: str, refresh: int) -> web.Response:
    page = f"""<!doctype html><html lang="zh-CN"><head><meta charset="utf-8">
<meta http-equiv="refresh" content="{refresh}"><title>{html.escape(title)}</title>
<style>body{{font-family:"Noto Sans CJK SC","WenQuanYi Zen Hei",sans-serif;margin:1em}}
.screen{{color:#fff;padding:2em;min-height:60vh;border-radius:8px}}
.name{{opacity:.7;font-size:1em}}.title{{font-size:3em;font-weight:bold}}
.text{{font-size:2.2em;margin-top:.5em}}</style></head><body>{body}</body></html>"""
    return web.Response(text=page, content_type="text/html", charset="utf-8")




# --- as a process of its own ------------------------------------------------------------------

async def _serve(args: argparse.Namespace) -> None:
    from facility.catalog import load_catalog
    from facility.settings import load_settings

    settings = load_settings(args.config)
    catalog = load_catalog(settings)
    site_id = args.site or settings.rules.site or catalog.site.site.id
    endpoints = catalog.endpoints
    player = DisplayPlayer.from_config(settings.mqtt, site_id, endpoints, journal=args.journal,
                                       http_host=args.http_host, http_port=args.http_port,
                                       data_dir=args.data_dir, speech=not args.no_speech)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    async with player:
        await player.wait_ready()
        print(f"screens of {site_id} ready", flush=True)
        await stop.wait()


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m simulators.display_player",
                                     description="The simulated screens and PA zones")
    parser.add_argument("--config", type=Path, default=None, help="settings file")
    parser.add_argument("--site", default="", help="site id (default: the settings' site)")
    parser.add_argument("--journal", type=Path, default=None,
                        help="file that keeps what was shown across restarts")
    parser.add_argument("--data-dir", type=Path, default=None,
                        help="where the PA zones keep their announcements as WAV "
                             "(default: the journal's folder)")
    parser.add_argument("--no-speech", action="store_true",
                        help="PA announcements in text only, no audio rendered")
    parser.add_argument("--http-host", default=None, help="serve the screens' pages here")
    parser.add_argument("--http-port", type=int, default=0)
    logging.basicConfig(level=logging.WARNING)
    asyncio.run(_serve(parser.parse_args(argv)))


if __name__ == "__main__":
    main()
