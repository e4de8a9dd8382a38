"""The control-room page in a real headless Chromium (Debian's, driven by Playwright), on
the real stack: simulated campus, gateways, rules engine, screens, API. Log in, watch the
plan fill with live data, see a simulated fire arrive as an alert without a reload,
acknowledge it from the page and find it acknowledged in the store; command a bollard
from the page; lose the live connection and see the page say so. Screenshots are kept in
test-artifacts/ (gitignored)."""

from __future__ import annotations

import time
from pathlib import Path

from playwright.async_api import Browser, Page, async_playwright, expect

from facility.messages import Family
from facility.settings import Settings
from tests.conftest import REPO
from tests.helpers import eventually
from tests.test_api_stack import PASSWORD, Stack, api_stack

ARTIFACTS = REPO / "test-artifacts"
CHROMIUM = "/usr/bin/chromium"
ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking",
        "--disable-component-update", "--no-first-run"]
FAMILIES = {Family.BOLLARD, Family.FIRE, Family.EV_CHARGER, Family.DRAINAGE, Family.GAS,
            Family.ENERGY}


async def log_in(browser: Browser, s: Stack, who: str, width: int = 1920,
                 height: int = 1080) -> Page:
    context = await browser.new_context(viewport={"width": width, "height": height},
                                        locale="zh-CN", timezone_id="Asia/Shanghai")
    page = await context.new_page()
    await page.goto(s.api.url + "/")
    await expect(page.locator("#login h2")).to_have_text("值班人员登录")
    await page.fill("#username", who)
    await page.fill("#password", PASSWORD)
    await page.click("#login-form button[type=submit]")
    await expect(page.locator("#live")).to_have_text("实时连接：正常", timeout=20_000)
    return page


async def test_control_room_page(settings: Settings, tmp_path: Path) -> None:
    ARTIFACTS.mkdir(exist_ok=True)
    # Simulated time starts now (device clocks then agree with the gateway's: no stale data).
    async with api_stack(settings, tmp_path, rules=True, simulate=FAMILIES, scale=20,
                         start=None, ingest=True) as s, \
            async_playwright() as pw:
        assert s.campus is not None and s.rules is not None
        browser = await pw.chromium.launch(executable_path=CHROMIUM, args=ARGS)
        try:
            # A wrong password is refused on the page.
            page = await browser.new_page()
            await page.goto(s.api.url + "/")
            await page.fill("#username", "olga")
            await page.fill("#password", "not the password")
            await page.click("#login-form button[type=submit]")
            await expect(page.locator("#login-error")).to_have_text("用户名或密码错误")
            await page.close()

            page = await log_in(browser, s, "olga")
            await expect(page.locator("#user")).to_have_text("olga（值班员）")
            await page.evaluate("window.loadedOnce = 'yes'")  # gone if the page reloads

            # The plan fills with live data: most devices coloured by their state.
            # Functions, not expressions: the page's CSP forbids eval, which expressions need.
            await page.wait_for_function(
                "() => document.querySelectorAll('#plan .dev:not(.state-unknown)').length >= 50",
                timeout=60_000)
            await page.wait_for_function(
                "() => document.querySelectorAll('#bollards .bollard:not(.b-unknown)').length"
                " === 42", timeout=30_000)
            await expect(page.locator("#water tr[data-device=wl-west-gate] td.num")) \
                .to_contain_text("cm")
            await expect(page.locator("#displays tr[data-display=led-south-gate]")) \
                .to_contain_text("欢迎来到番禺区行政办公中心")

            # A fire in the west e-bike shed arrives as an alert, without a reload.
            s.campus.fire("ebike-shed-west")
            fire = page.locator("#alerts tr[data-rule=fire-panel-alarm][data-state=active_unack]")
            await expect(fire.first).to_be_visible(timeout=60_000)
            alert_id = await fire.first.get_attribute("data-alert")
            assert alert_id
            assert await page.evaluate("window.loadedOnce") == "yes"
            row = page.locator(f"#alerts tr[data-alert='{alert_id}']")
            await expect(row).to_contain_text("紧急")
            await expect(page.locator("#plan .dev.state-alarm").first).to_be_visible()
            await expect(page.locator("#plan .ring[data-place=ebike-shed-west]")).to_be_visible()
            await expect(page.locator("#plan .ring[data-place=canteen]")).to_be_hidden()

            # Acknowledged from the page: the store has it, with who and when.
            await row.locator("button.ack").click()
            await page.click("#ack-ok")  # the dialog: a comment is optional
            await expect(row).to_have_attribute("data-state", "active_ack", timeout=20_000)
            assert s.rules is not None
            store = s.rules.store
            assert store is not None
            stored = await eventually(lambda: store.alert(alert_id),
                                      lambda a: a is not None and a.acknowledged, 20,
                                      "the acknowledgement in the store")
            assert stored is not None and stored.acked_by == "olga"
            assert abs(stored.acked_at - time.time_ns()) < 60 * 10**9
            await expect(page.locator("#displays tr[data-display=led-west-gate]")) \
                .to_contain_text("疏散", timeout=30_000)
            # Today's energy per building, from the meters through ingest and InfluxDB.
            await expect(page.locator("#energy tbody tr").first).to_be_visible(timeout=40_000)
            await page.screenshot(path=ARTIFACTS / "control-room-wall.png", full_page=True)

            # A bollard commanded from the page, by the south-gate operator; a viewer's page
            # offers no commands.
            viewer = await log_in(browser, s, "vera", 1366, 768)
            await expect(viewer.locator("#emergency")).to_be_disabled()
            actions = f"#alerts tr[data-alert='{alert_id}'] td.alert-actions button"
            await expect(viewer.locator(actions)).to_have_count(0)
            guard = await log_in(browser, s, "otto", 1366, 768)
            await guard.click("#bollards [data-bollard=bollard-s07]")
            await guard.fill("#reason", "放行救护车")
            await guard.click("#lower-selected")
            await expect(guard.locator("#bollards [data-bollard=bollard-s07]")) \
                .to_have_attribute("data-state", "down", timeout=30_000)
            await expect(guard.locator("#commands li").first).to_contain_text("完成",
                                                                               timeout=20_000)
            await guard.click("#lower-all")  # no reason: the page asks for one
            await expect(guard.locator("#notice")).to_contain_text("请填写指令原因")
            await guard.fill("#reason", "大型活动")
            await guard.click("#lower-all")  # an operator may not: the page says why
            await expect(guard.locator("#notice")).to_contain_text("无权限")
            await guard.screenshot(path=ARTIFACTS / "control-room-desk.png", full_page=True)

            # The live connection is lost: the page says so plainly, and recovers.
            await guard.route("**/api/stream", lambda route: route.abort())
            s.api.app.state.ctx.hub.close()  # every stream ends; reconnects are refused
            await expect(guard.locator("#lost")).to_be_visible(timeout=20_000)
            await expect(guard.locator("#lost")).to_contain_text("实时数据连接已中断")
            await expect(guard.locator("#live")).to_have_text("实时连接：已中断")
            await guard.screenshot(path=ARTIFACTS / "control-room-lost.png")
            await guard.unroute("**/api/stream")
            await expect(guard.locator("#live")).to_have_text("实时连接：正常", timeout=30_000)
            await expect(guard.locator("#lost")).to_be_hidden()
        finally:
            await browser.close()
