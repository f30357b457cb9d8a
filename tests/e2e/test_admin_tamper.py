"""The admin page shows a red banner while the running server's integrity watch has found the
ledger tampered with, and an admin's acknowledgement (from the banner) clears it."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest
from playwright.async_api import Browser, expect
from sqlalchemy import text

from consent.purposes import Purpose
from core.accounts import Scope, do_create_key
from core.runtime import Runtime
from tests.support.consent import decide
from tests.support.consent_bookings import seed_booking
from tests.support.liveserver import LiveServer

pytestmark = pytest.mark.e2e


@pytest.fixture
def live_server_overrides() -> dict[str, Any]:
    return {"consent_verify_interval_s": 1, "consent_integrity_poll_s": 0.2}


@pytest.fixture
async def runtime(live_server: LiveServer) -> AsyncIterator[Runtime]:
    rt = Runtime.open(live_server.settings)
    try:
        yield rt
    finally:
        await rt.close()


async def test_red_banner_until_acknowledged(
    browser: Browser, live_server: LiveServer, runtime: Runtime
) -> None:
    async with runtime.db.session() as session:
        _, admin_key = await do_create_key(session, Scope.ADMIN, "e2e", runtime.clock.now())
    booking = await seed_booking(runtime, [Purpose.RECORDING_AUDIO])
    async with httpx.AsyncClient(base_url=live_server.base_url) as http:
        for person in booking.people:
            await decide(http, person, "recording.audio", "granted")
    page = await (await browser.new_context()).new_page()
    await page.goto(f"{live_server.base_url}/admin")
    await page.get_by_label("Admin or auditor API key").fill(admin_key)
    await page.get_by_role("button", name="Sign in").click()
    await expect(page.locator("#log-status")).to_contain_text("Showing 2 entries")
    banner = page.locator("#tamper-banner")
    await expect(banner).to_be_hidden()

    async with runtime.db.engine.begin() as conn:
        await conn.execute(text("ALTER TABLE consent_ledger DISABLE TRIGGER USER"))
        await conn.execute(text("UPDATE consent_ledger SET decision = 'denied' WHERE seq = 1"))
        await conn.execute(text("ALTER TABLE consent_ledger ENABLE TRIGGER USER"))
    await page.reload()  # the page also looks every 15 s; a reload looks at once
    await expect(banner).to_be_visible(timeout=20_000)
    await expect(banner).to_contain_text("tampering detected at entry 1 (hash_mismatch")
    color = await banner.evaluate("node => getComputedStyle(node).backgroundColor")
    assert color == "rgb(207, 34, 46)"
    await page.get_by_role("button", name="Acknowledge and resume capture").click()
    await expect(banner).to_be_hidden()
