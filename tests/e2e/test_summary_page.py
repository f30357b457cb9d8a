"""The agenda/summary page (`/summary/<join credential>`) in real Chromium: it follows the
booking's AI jobs over server-sent events and shows the agenda once every participant agreed
to `ai.agenda` (the provider is the local OpenAI stand-in, driven by the real `openai` client)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from datetime import UTC, datetime
from typing import Any

import httpx
import pytest
from playwright.async_api import Browser, expect

from core.accounts import Scope, do_create_key
from core.runtime import Runtime
from tests.standins.openai import OpenAIStandIn
from tests.support.ai import book_session, decide, grant, soon
from tests.support.liveserver import LiveServer

pytestmark = pytest.mark.e2e


@pytest.fixture
async def openai_standin() -> AsyncIterator[OpenAIStandIn]:
    async with OpenAIStandIn() as server:
        yield server


@pytest.fixture
def live_server_overrides(openai_standin: OpenAIStandIn) -> dict[str, Any]:
    return {"openai_base_url": openai_standin.base_url, "openai_api_key": "sk-test"}


async def scheduler_key(server: LiveServer) -> dict[Scope, str]:
    runtime = Runtime.open(server.settings)
    try:
        async with runtime.db.session() as session:
            _, key = await do_create_key(session, Scope.SCHEDULER, "e2e", runtime.clock.now())
    finally:
        await runtime.close()
    return {Scope.SCHEDULER: key}


async def test_summary_page_follows_the_agenda_job_and_shows_the_agenda(
    browser: Browser, live_server: LiveServer, openai_standin: OpenAIStandIn
) -> None:
    keys = await scheduler_key(live_server)
    async with httpx.AsyncClient(base_url=live_server.base_url, trust_env=False) as http:
        starts = soon(datetime.now(UTC))
        session = await book_session(http, keys, starts, purposes=("ai.agenda",))
        host, guest = session.people
        context = await browser.new_context()
        page = await context.new_page()
        await page.goto(f"{live_server.base_url}/summary/{guest.credential}")
        await expect(page.locator("#status")).to_have_text("No AI jobs for this session yet.")
        await expect(page.locator("#agenda-box")).to_be_hidden()

        # The agenda is drafted once everyone agreed (a denial first, then a grant).
        await grant(http, host, "ai.agenda")
        await decide(http, guest, "ai.agenda", "denied")
        await decide(http, guest, "ai.agenda", "granted")
        await expect(page.locator("#jobs li")).to_have_text(
            ["ai.agenda: succeeded, 100%"], timeout=30_000
        )
        await expect(page.locator("#agenda li")).to_have_text(
            ["Goals (10 min)", "Next steps (5 min)"]
        )
        assert len(openai_standin.requests) == 1

        stranger = await context.new_page()
        await stranger.goto(f"{live_server.base_url}/summary/{'x' * 43}")
        await expect(stranger.locator("#status")).to_have_text("This link is not valid.")
        await context.close()
