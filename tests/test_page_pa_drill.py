"""Drills and the PA's audio on the control-room page, in a real headless Chromium, on real
servers: Mosquitto, InfluxDB, the simulated fire system with the real gateway, the rules
engine, the API, and the simulated PA with its HTTP endpoint (espeak-ng renders each
announcement to Mandarin speech).

The supervisor starts a fire drill from the page (scenario and place chosen by name in a
dialog, then confirmed); its alert arrives marked 【演练】 in the list, the banner, the
notification, its incident and the alert's detail, and its alarm tone is the drill's; the
drill is listed; a PA zone shows the drill's announcement (演练，演练。...) and pressing its
play button fetches the WAV through the API (with the login header) and plays it from a
blob: URL.
A viewer sees the drill but has no enabled button to start one.
"""

from __future__ import annotations

import re
import uuid
from pathlib import Path

import pytest
from playwright.async_api import async_playwright, expect

from facility import labels
from facility.messages import Family
from facility.settings import Settings
from simulators.display_player import DisplayPlayer
from tests.conftest import catalog
from tests.test_api_stack import api_stack, new_site_id
from tests.test_page import ARGS, CHROMIUM
from tests.test_page_desk import ENGLISH, RAW_ID, open_page, shot

pytestmark = [pytest.mark.servers, pytest.mark.timeout(120)]

PLACE = "ebike-shed-west"


async def test_a_drill_from_the_page_and_the_pa_played(settings: Settings,
                                                       tmp_path: Path) -> None:
    site_id = new_site_id()
    # The PA's own player with its HTTP endpoint, where the API finds the audio.
    pa = DisplayPlayer.from_config(settings.mqtt, site_id, catalog().endpoints,
                                   http_host="127.0.0.1", data_dir=tmp_path / "pa",
                                   client_id=f"pa-{uuid.uuid4().hex}")
    async with pa:
        await pa.wait_ready()
        port = int(pa.url.rsplit(":", 1)[1])
        settings = settings.model_copy(update={"rules": settings.rules.model_copy(
            update={"display_port": port})})
        # Simulated time starts now: the alerts are not "late" against the wall clock.
        async with api_stack(settings, tmp_path, rules=True, simulate={Family.FIRE},
                             scale=20, start=None, site_id=site_id) as s, \
                async_playwright() as pw:
            place_name = next(p.name for p in s.site.places if p.id == PLACE)
            browser = await pw.chromium.launch(executable_path=CHROMIUM, args=ARGS)
            try:
                context, page = await open_page(browser, s, "sam", 1366)
                start = page.locator("#drill-start")
                await expect(start).to_be_enabled()
                await expect(page.locator("#drill-hint")).to_be_hidden()

                # Scenario and place by name; then a confirmation that says what and where.
                await start.click()
                await expect(page.locator("#drill-dialog")).to_be_visible()
                scenarios = await page.locator("#drill-scenario option").all_inner_texts()
                assert scenarios == [labels.DRILL[k] for k in
                                     ("fire", "rainstorm", "gateway-loss", "bollard-fault")]
                await page.select_option("#drill-scenario", label=labels.DRILL["fire"])
                places = await page.locator("#drill-place option").all_inner_texts()
                assert place_name in places and not any(RAW_ID.search(p) for p in places)
                await page.select_option("#drill-place", label=place_name)
                await page.select_option("#drill-duration", "120")
                await page.click("#drill-next")
                confirm = page.locator("#drill-confirm-dialog")
                await expect(confirm).to_be_visible()
                await expect(confirm).to_contain_text(labels.DRILL["fire"])
                await expect(confirm).to_contain_text(place_name)
                await expect(confirm).to_contain_text("2 分钟")
                await page.click("#drill-confirm-ok")
                await expect(confirm).to_be_hidden()
                await expect(page.locator("#notice")).to_contain_text(labels.DRILL["started"])
                line = page.locator("#drills li[data-scenario=fire]")
                await expect(line).to_have_count(1)
                await expect(line).to_contain_text(place_name)
                await expect(line).to_contain_text(labels.DRILL["started"])
                drills = (await s.get("/api/drills")).json()
                assert [(d["scenario"], d["place"], d["by"]) for d in drills] == \
                    [("fire", PLACE, "sam")]

                # Its alert: 【演练】 in the list, the banner and the notification.
                alert = page.locator(f"#alerts tr.drill[data-drill='{drills[0]['id']}']")
                await expect(alert.first).to_be_visible(timeout=40_000)
                await expect(alert.first).to_contain_text(labels.DRILL_PREFIX)
                banner = page.locator("#alarm-banner")
                await expect(banner).to_contain_text(labels.DRILL_PREFIX)
                await expect(banner).to_have_attribute("data-sound-kind", "drill")
                await expect(page.locator("body")).to_have_attribute(
                    "data-drill-said", labels.DRILL_SPEECH_PREFIX)
                notes = await page.evaluate("() => window.__notes")
                assert any(n.startswith(labels.DRILL_PREFIX) for n in notes), notes
                await expect(page.locator("#incidents")).to_contain_text(labels.DRILL_PREFIX)
                await page.evaluate("() => window.scrollTo(0, 0)")
                await page.screenshot(path=shot("drill-alert-1366.png"))
                # ... and in its detail.
                await alert.first.locator("button.link").first.click()
                await expect(page.locator("#alert-title")).to_contain_text(labels.DRILL_PREFIX)
                await page.click("#alert-close")

                # The PA zone says the drill's words; its play button fetches the WAV.
                spoken = page.locator("#pa-last tr:not([data-audio=''])").filter(
                    has_text=labels.DRILL_SPEECH_PREFIX)
                await expect(spoken.first).to_be_visible(timeout=30_000)
                zone = await spoken.first.get_attribute("data-zone")
                assert zone
                play = spoken.first.locator("button.pa-play")
                await play.click()
                await expect(play).to_have_attribute("data-fetched", re.compile(r"^\d{4,}$"),
                                                   timeout=10_000)
                await expect(play).to_have_attribute("data-state", "playing")
                fetched = await page.evaluate(
                    "() => performance.getEntriesByType('resource').map((e) => e.name)")
                assert f"{s.api.url}/api/pa/{zone}/last.wav" in fetched, fetched
                board = await page.locator("#board").inner_text()
                raw = [board[max(0, m.start() - 40):m.end() + 10]
                       for m in RAW_ID.finditer(board)]
                assert not raw, raw[:5]
                assert not ENGLISH.search(board), ENGLISH.findall(board)[:10]
                await page.screenshot(path=shot("drill-pa-1366.png"))
                await context.close()

                # A viewer: the drill listed, no enabled button to start one.
                context, viewer = await open_page(browser, s, "vera", 1366)
                await expect(viewer.locator("#drills li[data-scenario=fire]")).to_have_count(1)
                await expect(viewer.locator("#drill-start")).to_be_disabled()
                await expect(viewer.locator("#drill-hint")).to_be_visible()
                await expect(viewer.locator("#drills-panel button:enabled")).to_have_count(0)
                await context.close()
            finally:
                await browser.close()
