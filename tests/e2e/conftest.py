"""Fixtures for tests that drive a real server from real Chromium.

`live_server`: a callgate uvicorn subprocess on a free port over a fresh migrated PostgreSQL
database, with the fixed test secret and master keys; override its settings by defining a
`live_server_overrides` fixture. `browser`: headless Chromium at /usr/bin/chromium with fake
camera and microphone (never downloaded by Playwright).
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest
from playwright.async_api import Browser, async_playwright, expect

from tests.support.liveserver import LiveServer, start_server
from tests.support.waiting import DEADLINE_S

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
    "--use-fake-ui-for-media-stream",
    "--use-fake-device-for-media-stream",
]


@pytest.fixture(autouse=True, scope="session")
def _patient_assertions() -> None:
    """`expect(...)` polls until the page shows what it expects; Playwright's 5 s default is
    less than a page may need on a loaded machine. The same hang guard as `eventually`."""
    expect.set_options(timeout=DEADLINE_S * 1000)


@pytest.fixture
def live_server_overrides() -> dict[str, Any]:
    """Settings for the live server (field name -> value); override in a test module."""
    return {}


@pytest.fixture
def live_server(
    pg_url: str, tmp_path: Path, live_server_overrides: dict[str, Any]
) -> Iterator[LiveServer]:
    """A real callgate process; `.base_url`, `.settings` (what it runs with), `.kill()`."""
    server = start_server(pg_url, tmp_path / "live", live_server_overrides)
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
async def browser() -> AsyncIterator[Browser]:
    async with async_playwright() as playwright:
        chromium = await playwright.chromium.launch(
            executable_path=CHROMIUM, headless=True, args=CHROMIUM_ARGS
        )
        try:
            yield chromium
        finally:
            await chromium.close()
