"""The district on the control-room page, in a real headless Chromium: an API serving the
campus, a school and a hospital (tests/test_api_district.py), their rules engines on
PostgreSQL. The page shows the overview of every site (their open incidents, alerts by
severity, connectivity, in Chinese), and switching to a site shows that site: its name,
its alerts, the switch set to it; and back."""

from __future__ import annotations

import pytest
from playwright.async_api import async_playwright, expect

from facility import labels
from facility.settings import Settings
from tests.test_api_district import (
    CAMPUS,
    HOSPITAL,
    SCHOOL,
    district_api,
    flood_the_school_and_the_hospital,
)
from tests.test_api_stack import PASSWORD
from tests.test_page import ARGS, CHROMIUM
from tests.test_page_desk import ENGLISH, RAW_ID, shot

pytestmark = [pytest.mark.servers, pytest.mark.timeout(120)]


@pytest.mark.parametrize("state_url", ["postgresql"], indirect=True)
async def test_the_page_shows_the_district_and_switches_sites(settings: Settings,
                                                              state_url: str) -> None:
    async with district_api(settings, state_url) as d, async_playwright() as pw:
        school, hospital = d.ids[SCHOOL], d.ids[HOSPITAL]
        await flood_the_school_and_the_hospital(d)
        browser = await pw.chromium.launch(executable_path=CHROMIUM, args=ARGS)
        try:
            context = await browser.new_context(viewport={"width": 1366, "height": 768},
                                                locale="zh-CN", timezone_id="Asia/Shanghai")
            page = await context.new_page()
            await page.goto(d.api.url + "/")
            await page.fill("#username", "vera")
            await page.fill("#password", PASSWORD)
            await page.click("#login-form button[type=submit]")
            await expect(page.locator("#live")).to_have_text("实时连接：正常", timeout=20_000)
            await expect(page.locator("#site-name")).to_have_text("番禺区行政办公中心")

            # The overview: three sites, the school's flood first (critical).
            rows = page.locator("#district tbody tr")
            school_row = page.locator(f"#district tr[data-site='{school}']")
            await expect(school_row).to_contain_text(f"{labels.SEVERITY['critical']} 1",
                                                     timeout=30_000)
            await expect(rows).to_have_count(3)
            await expect(rows.first).to_have_attribute("data-site", school)
            await expect(school_row).to_contain_text(labels.CONNECTIVITY["online"])
            await expect(school_row).to_contain_text(labels.PUBLIC_BODY_KIND["school"])
            hospital_row = page.locator(f"#district tr[data-site='{hospital}']")
            await expect(hospital_row).to_contain_text(f"{labels.SEVERITY['warning']} 1")
            await expect(hospital_row).to_contain_text(labels.CONNECTIVITY["partial"])
            campus_row = page.locator(f"#district tr[data-site='{d.ids[CAMPUS]}']")
            await expect(campus_row).to_have_class("current")
            await expect(campus_row).to_contain_text(labels.CONNECTIVITY["unknown"])
            await expect(page.locator("#district-summary")).to_contain_text("未关闭事件 2 起")
            words = await page.locator("#district-panel").inner_text()
            assert not RAW_ID.search(words) and not ENGLISH.search(words), words
            await expect(page.locator("#alerts tbody tr")).to_have_count(0)
            await page.screenshot(path=shot("district-1366.png"))

            # Switch to the school: its name, its flood alert, the switch and the row.
            await school_row.locator("button.link").click()
            await expect(page.locator("#site-name")).to_have_text("番禺区市桥第一小学",
                                                                  timeout=20_000)
            await expect(page.locator("#live")).to_have_text("实时连接：正常", timeout=20_000)
            await expect(page.locator("#site-switch")).to_have_value(school)
            await expect(page.locator("#alerts tbody tr")).to_have_count(1)
            await expect(page.locator("#alerts")).to_contain_text("校门排水水位")
            await expect(school_row).to_have_class("current")
            assert await page.title() == "番禺区市桥第一小学 · 监控中心"

            # And to the hospital through the header's switch.
            await page.select_option("#site-switch", hospital)
            await expect(page.locator("#site-name")).to_have_text("番禺区中心医院门诊楼",
                                                                  timeout=20_000)
            await expect(page.locator("#alerts")).to_contain_text("地下室集水井水位")
        finally:
            await browser.close()
