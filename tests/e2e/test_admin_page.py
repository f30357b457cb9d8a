"""The admin page in real Chromium against a real server: sign in, filter and page the consent
log, open a booking's visual timeline, verify (and see tampering), sign, download exports."""

from __future__ import annotations

import asyncio
import csv
import io
import json
from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path

import httpx
import pytest
from playwright.async_api import Browser, Page, expect
from sqlalchemy import text

from consent.purposes import Purpose
from core.accounts import Scope, do_create_key
from core.runtime import Runtime
from media.recordings import Recording, RecordingState, TrackKind
from tests.support.consent import decide
from tests.support.consent_bookings import Seeded, seed_booking
from tests.support.liveserver import LiveServer

pytestmark = pytest.mark.e2e


@dataclass
class World:
    server: LiveServer
    runtime: Runtime
    keys: dict[Scope, str]
    booking: Seeded
    other: Seeded



async def read(path: Path) -> str:
    return await asyncio.to_thread(path.read_text)


@pytest.fixture
async def world(live_server: LiveServer) -> AsyncIterator[World]:
    """30 decisions through the real server: 24 in one booking, 6 in another."""
    runtime = Runtime.open(live_server.settings)
    try:
        keys = {}
        async with runtime.db.session() as session:
            for scope in (Scope.ADMIN, Scope.AUDITOR, Scope.SCHEDULER):
                _, keys[scope] = await do_create_key(session, scope, "e2e", runtime.clock.now())
        booking = await seed_booking(runtime, [Purpose.RECORDING_AUDIO, Purpose.AI_SUMMARY])
        other = await seed_booking(runtime, [Purpose.RECORDING_VIDEO], names=("Vera", "Walt"))
        async with httpx.AsyncClient(base_url=live_server.base_url) as http:
            for round_ in range(6):
                flip = "granted" if round_ % 2 == 0 else "withdrawn"
                for person in booking.people:
                    await decide(http, person, "recording.audio", flip)
                    await decide(http, person, "ai.summary", "denied" if round_ else "granted")
                await decide(http, other.people[round_ % 2], "recording.video", flip)
        yield World(live_server, runtime, keys, booking, other)
    finally:
        await runtime.close()


async def signed_in(browser: Browser, world: World, scope: Scope) -> Page:
    context = await browser.new_context(accept_downloads=True)
    page = await context.new_page()
    await page.goto(f"{world.server.base_url}/admin")
    await page.get_by_label("Admin or auditor API key").fill(world.keys[scope])
    await page.get_by_role("button", name="Sign in").click()
    await expect(page.locator("#log-status")).to_contain_text("Showing 25 entries")
    return page


async def test_sign_in_filter_and_page_through_the_log(browser: Browser, world: World) -> None:
    context = await browser.new_context()
    page = await context.new_page()
    await page.goto(f"{world.server.base_url}/admin")
    await page.get_by_label("Admin or auditor API key").fill("cg_nothing_here")
    await page.get_by_role("button", name="Sign in").click()
    await expect(page.get_by_role("alert")).to_have_text("That key is not valid.")
    await page.get_by_label("Admin or auditor API key").fill(world.keys[Scope.SCHEDULER])
    await page.get_by_role("button", name="Sign in").click()
    await expect(page.get_by_role("alert")).to_have_text("This key has no admin or auditor scope.")
    await context.close()

    page = await signed_in(browser, world, Scope.AUDITOR)
    rows = page.locator("#log tbody tr")
    await expect(rows).to_have_count(25)
    await expect(rows.first.locator("td").first).to_have_text("30")
    await page.get_by_role("button", name="Older entries").click()
    await expect(page.locator("#log-status")).to_have_text("Showing 5 entries (seq 5\u20131).")
    await expect(page.get_by_role("button", name="Older entries")).to_be_disabled()
    await page.get_by_role("button", name="Newest").click()
    await expect(rows.first.locator("td").first).to_have_text("30")

    await page.get_by_label("Purpose").select_option("recording.video")
    await page.get_by_role("button", name="Apply filters").click()
    await expect(page.locator("#log-status")).to_contain_text("Showing 6 entries")
    await expect(rows.locator("td:nth-child(5)")).to_have_text(["recording.video"] * 6)
    await page.get_by_label("Subject (external id)").fill(world.other.people[0].external_id)
    await page.get_by_label("Decision").select_option("granted")
    await page.get_by_role("button", name="Apply filters").click()
    await expect(rows).to_have_count(3)
    await expect(rows.locator("td:nth-child(4)")).to_have_text(
        [world.other.people[0].external_id] * 3
    )
    # The key survives a reload of the tab (sessionStorage), and signing out forgets it.
    await page.reload()
    await expect(page.locator("#log-status")).to_contain_text("Showing 25 entries")
    await page.get_by_role("button", name="Sign out").click()
    await expect(page.get_by_label("Admin or auditor API key")).to_be_focused()
    assert await page.evaluate("sessionStorage.length") == 0


async def test_booking_timeline_is_drawn_per_person(browser: Browser, world: World) -> None:
    started = world.runtime.clock.now() - timedelta(seconds=5)
    async with world.runtime.db.session() as session:
        session.add(
            Recording(
                booking_id=world.booking.booking_id, participant_id=world.booking.people[0].id,
                kind=TrackKind.AUDIO, state=RecordingState.RECORDING, media_type="audio/ogg",
                started_at=started, consent_entry_ids=[], frames=0, size=0,
                retain_until=started + timedelta(days=30), path="a.ogg",
            )
        )
    page = await signed_in(browser, world, Scope.AUDITOR)
    await page.get_by_label("Booking id").fill(str(world.booking.booking_id))
    await page.get_by_role("button", name="Apply filters").click()
    await expect(page.locator("#log-status")).to_contain_text("Showing 24 entries")
    await page.get_by_role(
        "button", name=f"Open the timeline of booking {world.booking.booking_id}"
    ).first.click()
    timeline = page.locator("#timeline svg")
    await expect(timeline).to_be_visible()
    await expect(page.locator("#timeline-title")).to_be_focused()
    lanes = timeline.locator("g.lane")
    await expect(lanes).to_have_count(2)
    host = world.booking.people[0].external_id
    host_lane = timeline.locator(f"g.lane[data-person='{host}']")
    await expect(host_lane.locator("circle.marker")).to_have_count(12)
    await expect(host_lane.locator("circle.marker.withdrawn")).to_have_count(3)
    summary_denials = host_lane.locator("circle.marker[data-purpose='ai.summary'].denied")
    await expect(summary_denials).to_have_count(5)
    await expect(host_lane.locator("rect.recorded[data-kind='audio']")).to_have_count(1)
    guest = world.booking.people[1].external_id
    await expect(timeline.locator(f"g.lane[data-person='{guest}'] rect.recorded")).to_have_count(0)
    first = host_lane.locator("circle.marker").first
    label = await first.get_attribute("aria-label")
    assert label is not None
    assert label.startswith("Hana Host granted recording.audio at ")
    await first.focus()
    assert await page.evaluate("document.activeElement.getAttribute('aria-label')") == label
    await expect(page.locator("#timeline-table tbody tr")).to_have_count(24)
    box = await timeline.bounding_box()
    assert box is not None
    assert box["width"] > 400


async def test_verify_sign_and_see_tampering(browser: Browser, world: World) -> None:
    auditor = await signed_in(browser, world, Scope.AUDITOR)
    await auditor.get_by_role("button", name="Verify chain").click()
    result = auditor.locator("#verify-result")
    await expect(result).to_contain_text("Chain intact: 30 entries verified, head seq 30.")
    await expect(result).to_contain_text("No checkpoint yet.")
    await auditor.get_by_role("button", name="Sign checkpoint now").click()
    await expect(result).to_contain_text("(forbidden)")

    admin = await signed_in(browser, world, Scope.ADMIN)
    await admin.get_by_role("button", name="Sign checkpoint now").click()
    await expect(admin.locator("#verify-result")).to_contain_text("Checkpoint signed at seq 30")

    async with world.runtime.db.engine.begin() as conn:
        await conn.execute(text("ALTER TABLE consent_ledger DISABLE TRIGGER USER"))
        await conn.execute(text("UPDATE consent_ledger SET decision = 'granted' WHERE seq = 17"))
        await conn.execute(text("ALTER TABLE consent_ledger ENABLE TRIGGER USER"))
    await auditor.get_by_role("button", name="Verify chain").click()
    await expect(result).to_have_text(
        "Tampering detected at entry 17: hash_mismatch — the entry's content does not match "
        "its hash."
    )


async def test_downloads_follow_the_filters(browser: Browser, world: World) -> None:
    page = await signed_in(browser, world, Scope.AUDITOR)
    await page.get_by_label("Booking id").fill(str(world.other.booking_id))
    await page.get_by_role("button", name="Apply filters").click()
    await expect(page.locator("#log-status")).to_contain_text("Showing 6 entries")
    async with page.expect_download() as info:
        await page.get_by_role("button", name="Download CSV").click()
    download = await info.value
    assert download.suggested_filename == "consent-log.csv"
    rows = list(csv.DictReader(io.StringIO(await read(await download.path()))))
    assert [int(r["seq"]) for r in rows] == [30, 25, 20, 15, 10, 5]
    assert {r["booking_id"] for r in rows} == {str(world.other.booking_id)}
    async with page.expect_download() as info:
        await page.get_by_role("button", name="Download JSON Lines").click()
    download = await info.value
    assert download.suggested_filename == "consent-log.jsonl"
    lines = (await read(await download.path())).splitlines()
    assert [json.loads(line)["purpose"] for line in lines] == ["recording.video"] * 6
    await expect(page.locator("#export-status")).to_contain_text("Downloaded consent-log.jsonl")
