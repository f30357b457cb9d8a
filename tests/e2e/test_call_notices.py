"""The pre-join screen as a person sees it on a 1280x800 screen: readable notices (no Markdown
marks), the days each purpose's data is kept, who records and which AI provider processes,
every choice above the Join button beside the preview, dates once in their own zone, and a
favicon. A screenshot is kept in the test's folder (`prejoin-1280x800.png`)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from playwright.async_api import Browser, expect

from consent.purposes import Purpose
from tests.e2e.test_call_page import seed
from tests.support.liveserver import LiveServer

pytestmark = pytest.mark.e2e

PURPOSES = (
    Purpose.RECORDING_AUDIO, Purpose.RECORDING_VIDEO, Purpose.TRANSCRIPTION, Purpose.AI_SUMMARY,
)


@pytest.fixture
def live_server_overrides() -> dict[str, Any]:
    return {
        "consent_operator_name": "Northwind Coaching GmbH",
        "consent_ai_provider": "Example AI Inc.",
        "recording_retention_days": 45,
        "summary_retention_days": 120,
    }


async def test_the_prejoin_screen_is_readable_and_fits_one_screen(
    browser: Browser, live_server: LiveServer, tmp_path: Path
) -> None:
    seeded = await seed(live_server, purposes=PURPOSES)
    context = await browser.new_context(
        viewport={"width": 1280, "height": 800}, timezone_id="Europe/Berlin", locale="en-GB"
    )
    page = await context.new_page()
    await page.goto(f"{live_server.base_url}/join/{seeded.client.credential}")
    fieldsets = page.locator("#prejoin fieldset")
    await expect(fieldsets).to_have_count(len(PURPOSES))
    await page.wait_for_function("() => document.querySelector('#preview').videoWidth > 0")

    # Everything to decide, and the button, on the first screen; the choices first.
    await page.screenshot(path=str(tmp_path / "prejoin-1280x800.png"))
    join = await page.get_by_role("button", name="Join the call").bounding_box()
    preview = await page.locator("#preview").bounding_box()
    assert join is not None
    assert preview is not None
    assert join["y"] + join["height"] <= 800
    assert preview["y"] + preview["height"] <= 800
    for radio in await page.locator("#prejoin input[type=radio]").all():
        box = await radio.bounding_box()
        assert box is not None
        assert box["y"] + box["height"] < join["y"]

    # The summaries say how long; each notice reads as text, with the names filled in.
    audio = page.locator("#prejoin fieldset[data-purpose='recording.audio']")
    transcription = page.locator("#prejoin fieldset[data-purpose='transcription']")
    await expect(audio.locator("summary")).to_contain_text("Kept 45 days")
    await expect(transcription.locator("summary")).to_contain_text("Kept 120 days")
    for summary in await page.locator("#prejoin fieldset summary").all():
        await summary.click()
    title = audio.get_by_role("heading", name="Audio recording of this session")
    await expect(title).to_be_visible()
    audio_text = audio.locator(".notice-text")
    await expect(audio_text).to_contain_text("Who records: Northwind Coaching GmbH")
    await expect(audio_text).to_contain_text("kept for 45 days after the session")
    await expect(transcription.locator(".notice-text")).to_contain_text(
        "with Example AI Inc. as subprocessor"
    )
    await expect(transcription.locator(".notice-text")).to_contain_text("kept for 120 days")
    shown = await page.locator("#prejoin").inner_text()
    assert "**" not in shown
    assert not [line for line in shown.splitlines() if line.lstrip().startswith("#")]
    await expect(audio.locator(".notice-text strong").first).to_have_text("Who records:")

    # The booking's time in the person's zone, the zone named once.
    when = await page.locator("#when").inner_text()
    assert when.count("Europe/Berlin") == 1, when
    assert "UTC" not in when, when

    icon = await page.request.get(f"{live_server.base_url}/favicon.ico")
    assert icon.status == 200
    assert icon.headers["content-type"] == "image/x-icon"
    await context.close()
