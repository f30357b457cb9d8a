"""axe-core (axe-playwright-python) on the pages people use: the call page before and in the
call, the admin page before and after signing in. No serious or critical violation; every
violation found is printed, so the less severe ones are seen too."""

from __future__ import annotations

import pytest
from axe_playwright_python.async_playwright import Axe
from playwright.async_api import Browser, Page, expect

from core.accounts import Scope
from tests.e2e.test_admin_page import World, signed_in, world
from tests.e2e.test_call_page import open_join, seed
from tests.support.liveserver import LiveServer

pytestmark = pytest.mark.e2e
__all__ = ["world"]  # the admin page's fixture, used here too

SEVERE = {"serious", "critical"}


async def severe_violations(page: Page, where: str) -> list[str]:
    results = await Axe().run(page)
    found = []
    for violation in results.response["violations"]:
        nodes = [node["target"] for node in violation["nodes"]]
        line = f"{where}: {violation['impact']} {violation['id']} ({violation['help']}) at {nodes}"
        print(line)
        if violation["impact"] in SEVERE:
            found.append(line)
    return found


async def test_the_call_page_has_no_serious_violations(
    browser: Browser, live_server: LiveServer
) -> None:
    seeded = await seed(live_server)
    host = await open_join(browser, live_server, seeded.host)
    client = await open_join(browser, live_server, seeded.client)
    await expect(host.locator("#prejoin fieldset")).to_have_count(2)
    for summary in await host.locator("#prejoin summary").all():
        await summary.click()
    found = await severe_violations(host, "call page, before joining")
    for page in (host, client):
        await expect(page.locator("#prejoin fieldset")).to_have_count(2)
        await page.get_by_role("button", name="Join the call").click()
        await expect(page.locator("#call")).to_be_visible()
    await expect(host.locator(f".tile[data-peer='{seeded.client.id}']")).to_be_visible()
    await host.get_by_role("button", name="Recording choices").click()
    await expect(host.locator("#consent-incall fieldset")).to_have_count(2)
    await expect(host.get_by_role("button", name="Start recording")).to_be_visible()
    found += await severe_violations(host, "call page, in the call")
    await host.get_by_role("button", name="Leave").click()
    await expect(host.locator("#ended")).to_be_visible()
    found += await severe_violations(host, "call page, after leaving")
    assert found == []


async def test_the_admin_page_has_no_serious_violations(browser: Browser, world: World) -> None:
    page = await (await browser.new_context()).new_page()
    await page.goto(f"{world.server.base_url}/admin")
    await expect(page.get_by_label("Admin or auditor API key")).to_be_visible()
    found = await severe_violations(page, "admin page, signed out")
    page = await signed_in(browser, world, Scope.ADMIN)
    found += await severe_violations(page, "admin page, the consent log")
    assert found == []
