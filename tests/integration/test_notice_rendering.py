"""Notices people can read: GET /v1/consent gives each notice as safe HTML (Markdown rendered
with raw HTML disabled, then sanitized) and the purpose's retention days; the shipped notices
name the operator and the AI provider from the settings; the favicon answers."""

from __future__ import annotations

import struct
from typing import Any

import httpx
import pytest

from consent.notices import latest_notice, seed_notices
from consent.purposes import Purpose
from core.accounts import Scope
from core.runtime import Runtime
from tests.support.bookings import bearer
from tests.support.consent_bookings import seed_booking


@pytest.fixture
def settings_overrides() -> dict[str, Any]:
    return {
        "consent_operator_name": "Northwind Coaching GmbH",
        "consent_ai_provider": "Example AI Inc.",
        "recording_retention_days": 45,
        "summary_retention_days": 120,
    }


async def test_notices_come_as_safe_html_with_days_and_names(
    client: httpx.AsyncClient, runtime: Runtime
) -> None:
    seeded = await seed_booking(runtime, [Purpose.RECORDING_AUDIO, Purpose.TRANSCRIPTION])
    body = (await client.get("/v1/consent", headers=seeded.people[1].headers)).json()
    audio, transcription = body["purposes"]
    assert (audio["retention_days"], transcription["retention_days"]) == (45, 120)
    html = audio["notice"]["html"]
    assert html.startswith("<h4>Audio recording of this session</h4>")
    assert "<strong>Who records:</strong> Northwind Coaching GmbH" in html
    assert "kept for 45 days after the session" in html
    assert "**" not in html
    assert "Example AI Inc." in transcription["notice"]["html"]
    assert "kept for 120 days" in transcription["notice"]["text"]


async def test_raw_html_and_script_links_in_a_notice_stay_text(
    client: httpx.AsyncClient, runtime: Runtime, api_keys: dict[Scope, str]
) -> None:
    seeded = await seed_booking(runtime, [Purpose.RECORDING_AUDIO])
    hostile = (
        "# Title\n\n<script>alert(1)</script> <img src=x onerror=alert(2)>\n\n"
        "[click](javascript:alert(3)) [policy](https://example.org/privacy)\n"
    )
    published = await client.post(
        "/v1/admin/consent-notices", headers=bearer(api_keys[Scope.ADMIN]),
        json={"purpose": "recording.audio", "language": "en", "text": hostile},
    )
    assert published.status_code == 201
    body = (await client.get("/v1/consent", headers=seeded.people[0].headers)).json()
    html = body["purposes"][0]["notice"]["html"]
    assert "<script" not in html
    assert "<img" not in html
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in html  # shown as the text it is
    assert "href=\"javascript" not in html  # left as the words it was written as
    assert '<a href="https://example.org/privacy" rel="noopener noreferrer nofollow">' in html
    assert body["purposes"][0]["notice"]["text"] == hostile  # the hashed text is untouched


async def test_a_changed_setting_republishes_the_shipped_notice_but_not_an_operators(
    runtime: Runtime,
) -> None:
    now = runtime.clock.now()
    await seed_notices(runtime.db, runtime.settings, now)
    changed = runtime.settings.model_copy(update={"recording_retention_days": 60})
    assert await seed_notices(runtime.db, changed, now) == 2  # recording.audio and .video
    async with runtime.db.session() as session:
        audio = await latest_notice(session, Purpose.RECORDING_AUDIO, "en")
        summary = await latest_notice(session, Purpose.AI_SUMMARY, "en")
    assert audio is not None
    assert summary is not None
    assert (audio.version, summary.version) == (2, 1)
    assert "kept for 60 days" in audio.text
    assert await seed_notices(runtime.db, changed, now) == 0


async def test_the_favicon_answers_with_an_icon(client: httpx.AsyncClient) -> None:
    response = await client.get("/favicon.ico")
    assert response.status_code == 200
    assert response.headers["content-type"] == "image/x-icon"
    reserved, kind, count = struct.unpack("<HHH", response.content[:6])
    assert (reserved, kind, count) == (0, 1, 1)  # ICONDIR: an icon with one image
    width, height = response.content[6], response.content[7]
    assert (width, height) == (32, 32)
