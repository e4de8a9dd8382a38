"""An OCPP charger's remote commands from the control-room page, in a real headless
Chromium, on real servers: Mosquitto, InfluxDB, the API, the OCPP central system (csms/)
and a simulated charge point (the ocpp library's charge-point side).

The parking guard opens the charger's detail, unlocks a connector (the dialog asks for the
reason and the connector) and reads the charge point's answer in Chinese as it comes over
the live stream; a stuck connector's UnlockFailed reads as such; a remote start is Accepted
and the charger is seen charging; a viewer and an operator of other zones have no enabled
button; a supervisor has all eight.
"""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest
from playwright.async_api import Browser, Page, async_playwright, expect

from csms.service import CentralSystem
from facility import labels
from facility.settings import OcppSettings, Settings
from facility.site import load_site
from simulators.ocpp_chargers import Settings as SimSettings
from simulators.ocpp_chargers import SimChargePoint
from tests.conftest import SITE_FILE
from tests.helpers import eventually
from tests.test_api_stack import Stack, api_stack, new_site_id
from tests.test_ocpp import CP1, HASHES, PASSWORDS, running
from tests.test_page import ARGS, CHROMIUM, log_in
from tests.test_page_desk import AXE, ENGLISH, RAW_ID, shot

pytestmark = [pytest.mark.servers, pytest.mark.timeout(120)]

CHARGER = "evc-oc-01"  # PYGOV-OC-01, two connectors, zone parking
ANSWER = labels.COMMAND_STATUS  # the charge point's answers are "ocpp:<answer>" there


async def open_charger(browser: Browser, s: Stack, who: str) -> Page:
    page = await log_in(browser, s, who, 1366, 768)
    await page.click(f"#ev tr[data-device={CHARGER}] button")
    await expect(page.locator("#device-dialog")).to_be_visible()
    await expect(page.locator("#charger-panel")).to_be_visible()
    await expect(page.locator("#charger-actions button")).to_have_count(8)
    return page


async def no_serious_violation(page: Page, where: str) -> None:
    """axe-core (tests/vendor/axe.min.js): no serious or critical violation."""
    if not await page.evaluate("() => typeof axe !== 'undefined'"):
        await page.evaluate(AXE.read_text(encoding="utf-8"))
    result = await page.evaluate(
        "() => axe.run(document, { resultTypes: ['violations'] })"
        ".then((r) => r.violations.map((v) => ({ id: v.id, impact: v.impact,"
        " nodes: v.nodes.slice(0, 3).map((n) => n.target.join(' ')) })))")
    bad = [v for v in result if v["impact"] in ("serious", "critical")]
    assert not bad, (where, bad)


async def send(page: Page, action: str, reason: str, connector: int) -> None:
    await page.click(f"#charger-actions [data-action={action}]")
    await expect(page.locator("#charger-dialog")).to_be_visible()
    await page.fill("#charger-connector", str(connector))
    await page.fill("#charger-reason", reason)
    await page.click("#charger-ok")
    await expect(page.locator("#charger-dialog")).to_be_hidden()


async def test_charger_commands_from_the_device_dialog(settings: Settings,
                                                       tmp_path: Path) -> None:
    site_id = new_site_id()
    ocpp = settings.model_copy(update={"ocpp": OcppSettings(
        port=0, site=site_id, heartbeat_interval=2, call_timeout=2.0)})
    async with api_stack(settings, tmp_path, site_id=site_id, ingest=True) as s, \
            CentralSystem(ocpp, load_site(SITE_FILE), credentials=HASHES) as central, \
            async_playwright() as pw:
        await central.wait_ready(20)
        point = SimChargePoint(CP1, SimSettings(f"ws://127.0.0.1:{central.port}/ocpp",
                                                PASSWORDS[CP1], meter_period=3600), 2)
        async with running(point):
            await asyncio.wait_for(point.booted.wait(), 10)
            browser = await pw.chromium.launch(executable_path=CHROMIUM, args=ARGS)
            try:
                # The parking guard: the operator's actions, not the supervisor's.
                guard = await open_charger(browser, s, "otto")
                buttons = guard.locator("#charger-actions")
                for action in ("unlock_connector", "remote_start_transaction",
                               "remote_stop_transaction", "trigger_message",
                               "get_configuration"):
                    await expect(buttons.locator(f"[data-action={action}]")).to_be_enabled()
                for action in ("reset", "change_availability", "change_configuration"):
                    await expect(buttons.locator(f"[data-action={action}]")).to_be_disabled()
                await expect(guard.locator("#charger-hint")).to_contain_text("需要值班长权限")

                await no_serious_violation(guard, "the charger's detail")

                # Unlock: no reason, the dialog says so and sends nothing.
                await guard.click("#charger-actions [data-action=unlock_connector]")
                await guard.fill("#charger-reason", "")
                await guard.click("#charger-ok")
                await expect(guard.locator("#charger-error")).to_contain_text("请填写指令原因")
                await no_serious_violation(guard, "the command dialog")
                await guard.click("#charger-dialog button[value=cancel]")
                await send(guard, "unlock_connector", "车主无法拔枪", 1)
                unlock = guard.locator("#device-commands li[data-command]").first
                await expect(unlock).to_contain_text("解锁充电枪（1号枪）")
                await expect(unlock).to_contain_text(
                    f"充电桩应答：{ANSWER['ocpp:Unlocked']}", timeout=15_000)
                await expect(unlock).to_have_attribute("data-status", "done")
                await expect(unlock).to_contain_text(labels.COMMAND_STATUS["done"])
                # ... and beside the buttons, where the guard is looking.
                await expect(guard.locator("#charger-last")).to_contain_text(
                    f"解锁充电枪（1号枪） · otto · {labels.COMMAND_STATUS['done']}"
                    f" · 充电桩应答：{ANSWER['ocpp:Unlocked']}")

                # A connector that will not unlock: the charge point's UnlockFailed.
                point.stuck.add(2)
                await send(guard, "unlock_connector", "车主无法拔枪", 2)
                await expect(guard.locator("#charger-last")).to_contain_text(
                    f"充电桩应答：{ANSWER['ocpp:UnlockFailed']}", timeout=15_000)
                await expect(guard.locator("#charger-last")).to_have_attribute(
                    "data-outcome", "bad")
                point.stuck.clear()

                # A remote start: Accepted, and the charger is seen charging (live).
                await send(guard, "remote_start_transaction", "车主手机没电，远程启动", 2)
                start = guard.locator("#device-commands li[data-command]").first
                await expect(start).to_contain_text("远程启动充电（2号枪）")
                await expect(start).to_contain_text(
                    f"充电桩应答：{ANSWER['ocpp:Accepted']}", timeout=15_000)
                await expect(guard.locator(f"#ev tr[data-device={CHARGER}]")).to_contain_text(
                    labels.EV_STATUS["charging"], timeout=15_000)
                async def session() -> int | None:
                    return point.connectors[2].transaction_id
                await eventually(session, lambda tx: tx is not None, 10, "the session")
                await expect(guard.locator("#notice")).to_contain_text("远程启动充电：完成")
                said = await guard.locator("#charger-panel").inner_text() + \
                    await guard.locator("#device-commands").inner_text()
                assert not RAW_ID.search(said) and not ENGLISH.search(said), said
                await guard.screenshot(path=shot("charger-commands-1366.png"))

                # The API has them, issued by the guard, with the charge point's words.
                listed = {c["action"]: c for c in (await s.get("/api/chargers/commands")).json()}
                assert listed["unlock_connector"]["requested_by"] == "otto"
                assert listed["unlock_connector"]["detail"] == "Unlocked"
                assert listed["remote_start_transaction"]["detail"] == "Accepted"

                # A viewer and an operator of other zones: buttons, none enabled.
                for who, why in (("vera", "只能查看"), ("olga", "不在您的负责区域内")):
                    page = await open_charger(browser, s, who)
                    await expect(page.locator("#charger-actions button:enabled")) \
                        .to_have_count(0)
                    await expect(page.locator("#charger-hint")).to_contain_text(why)
                    # They see the guard's commands and their answers all the same.
                    await expect(page.locator("#device-commands")).to_contain_text(
                        ANSWER["ocpp:Unlocked"])
                    await page.context.close()

                # A supervisor has all eight.
                boss = await open_charger(browser, s, "sam")
                await expect(boss.locator("#charger-actions button:enabled")).to_have_count(8)
                await expect(boss.locator("#charger-hint")).to_have_text("")
            finally:
                await browser.close()
