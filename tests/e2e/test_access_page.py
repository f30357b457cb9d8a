"""The call page in Chromium when the platform acts on a person: a corrected name shows on
every page at once; a revoked link ends that person's call with the reason."""

from __future__ import annotations

from datetime import UTC, datetime

import httpx
from playwright.async_api import Browser, expect

from core.accounts import Scope, do_create_key
from core.database import Database
from tests.e2e.test_call_page import choose, open_join, seed
from tests.support.liveserver import LiveServer


async def _scheduler_key(server: LiveServer) -> dict[str, str]:
    db = Database(server.settings.database_url)
    try:
        async with db.session() as session:
            _, key = await do_create_key(session, Scope.SCHEDULER, "e2e", datetime.now(UTC))
    finally:
        await db.close()
    return {"Authorization": f"Bearer {key}"}


async def test_a_corrected_name_shows_at_once_and_a_revoked_link_ends_the_call(
    browser: Browser, live_server: LiveServer
) -> None:
    seeded = await seed(live_server)
    host = await open_join(browser, live_server, seeded.host)
    client = await open_join(browser, live_server, seeded.client)
    for page in (host, client):
        await expect(page.locator("#prejoin fieldset")).to_have_count(2)
        await choose(page, "recording.audio", allow=False)
        await choose(page, "recording.video", allow=False)
        await page.get_by_role("button", name="Join the call").click()
        await expect(page.locator("#call")).to_be_visible()
    client_on_host = host.locator(f".tile[data-peer='{seeded.client.id}'] .name")
    await expect(client_on_host).to_have_text("Client 1")

    headers = await _scheduler_key(live_server)
    person = f"/v1/bookings/{seeded.booking_id}/participants/{seeded.client.id}"
    async with httpx.AsyncClient(base_url=live_server.base_url, trust_env=False) as api:
        corrected = await api.patch(person, json={"display_name": "Clara Client"},
                                    headers=headers)
        assert corrected.status_code == 200, corrected.text
        await expect(client_on_host).to_have_text("Clara Client")
        own = client.locator(f".tile[data-peer='{seeded.client.id}'] .name")
        await expect(own).to_have_text("Clara Client (you)")

        revoked = await api.post(f"{person}/revoke", headers=headers)
        assert revoked.status_code == 200, revoked.text
    await expect(client.get_by_text("This join link was replaced")).to_be_visible()
