"""The admin page's data-subject tools in real Chromium against a real server: find a person,
download their export, restrict and free their processing, read retention status and the
processing register, and erase them after typing their id to confirm."""

from __future__ import annotations

import asyncio
import io
import json
import uuid
import zipfile
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from playwright.async_api import Browser, Page, expect

from consent.purposes import Purpose
from core.accounts import Scope, do_create_key
from core.runtime import Runtime
from summaries.register import Outcome, do_register
from tests.support.consent_bookings import Seeded, seed_booking
from tests.support.liveserver import LiveServer
from tests.support.privacy import Person, add_recording, audio

pytestmark = pytest.mark.e2e


@dataclass
class World:
    server: LiveServer
    runtime: Runtime
    key: str
    booking: Seeded
    tone: bytes


@pytest.fixture
async def world(live_server: LiveServer) -> AsyncIterator[World]:
    """A booked person with a recording, and one row in the processing register."""
    runtime = Runtime.open(live_server.settings)
    try:
        async with runtime.db.session() as session:
            _, key = await do_create_key(session, Scope.ADMIN, "e2e", runtime.clock.now())
        booking = await seed_booking(runtime, [Purpose.RECORDING_AUDIO, Purpose.AI_SUMMARY],
                                     names=("Priya Private", "Carl Client"))
        host = booking.people[0]
        tone = audio(440)
        await add_recording(runtime, booking.booking_id,
                            Person(host.id, host.external_id, host.display_name, host.credential),
                            tone)
        async with runtime.db.session() as session:
            do_register(
                session, at=runtime.clock.now(), booking_id=booking.booking_id,
                job_id=uuid.uuid4(), purpose=Purpose.AI_SUMMARY, subjects=[host.id],
                categories=["speech_text"], entry_ids=[], provider="openai",
                model="summary-model", endpoint="api.example", input_bytes=120,
                outcome=Outcome.SENT,
            )
        yield World(live_server, runtime, key, booking, tone)
    finally:
        await runtime.close()


async def signed_in(browser: Browser, world: World) -> Page:
    context = await browser.new_context(accept_downloads=True)
    page = await context.new_page()
    await page.goto(f"{world.server.base_url}/admin")
    await page.get_by_label("Admin or auditor API key").fill(world.key)
    await page.get_by_role("button", name="Sign in").click()
    await expect(page.locator("#log-status")).to_have_text("No entries match these filters.")
    return page


async def test_find_export_restrict_and_erase_a_person(browser: Browser, world: World) -> None:
    host = world.booking.people[0]
    page = await signed_in(browser, world)
    await page.get_by_label("Person (external id or name)").fill("priya")
    await page.get_by_role("button", name="Find people").click()
    row = page.locator(f"#subjects tr[data-external-id='{host.external_id}']")
    await expect(row.locator("td").nth(1)).to_have_text("Priya Private")
    await expect(row.locator("td").nth(3)).to_have_text("active")

    async with page.expect_download() as info:
        await row.get_by_role("button", name="Export").click()
    download = await info.value
    assert download.suggested_filename == f"callgate-export-{host.external_id}.zip"
    data = await asyncio.to_thread(Path(await download.path()).read_bytes)
    archive = zipfile.ZipFile(io.BytesIO(data))
    about = json.loads(archive.read("subject.jsonl"))
    assert about["display_names"] == ["Priya Private"]
    (recording,) = [json.loads(line) for line in archive.read("recordings.jsonl").splitlines()]
    assert archive.read(recording["file"]) == world.tone
    await expect(page.locator("#subject-status")).to_contain_text("Exported")

    await row.get_by_role("button", name="Restrict processing").click()
    await expect(row.locator("td").nth(3)).to_have_text("restricted")
    await expect(page.locator("#subject-status")).to_contain_text("processing restricted")
    await row.get_by_role("button", name="Lift restriction").click()
    await expect(row.locator("td").nth(3)).to_have_text("active")

    await row.get_by_role("button", name="Erase…").click()
    dialog = page.get_by_role("dialog")
    await expect(dialog).to_be_visible()
    erase = dialog.get_by_role("button", name="Erase for good")
    await dialog.get_by_role("textbox").fill("not-the-id")
    await expect(erase).to_be_disabled()
    await dialog.get_by_role("button", name="Cancel").click()
    await expect(dialog).to_be_hidden()
    await expect(row.locator("td").nth(3)).to_have_text("active")  # nothing happened

    await row.get_by_role("button", name="Erase…").click()
    await dialog.get_by_role("textbox").fill(host.external_id)
    await erase.click()
    await expect(page.locator("#subject-status")).to_contain_text(
        f"Erased {host.external_id}: now erased-"
    )
    await expect(page.locator("#subject-status")).to_contain_text("erased-")
    await expect(page.locator("#subjects tbody tr")).to_have_count(0)
    await page.get_by_label("Person (external id or name)").fill("erased-")
    await page.get_by_role("button", name="Find people").click()
    tombstone = page.locator("#subjects tbody tr")
    await expect(tombstone.locator("td").nth(1)).to_have_text("Erased participant")
    await expect(tombstone.locator("td").nth(3)).to_have_text("erased")


async def test_retention_status_and_processing_register(browser: Browser, world: World) -> None:
    page = await signed_in(browser, world)
    await page.get_by_role("button", name="Show retention status").click()
    rows = page.locator("#retention tbody tr")
    await expect(rows).to_have_count(8)
    attendance = page.locator("#retention tr[data-category='attendance'] td")
    await expect(attendance.nth(1)).to_have_text("90")
    webhook_log = page.locator("#retention tr[data-category='webhook_log'] td")
    await expect(webhook_log.nth(1)).to_have_text("30")
    recordings = page.locator("#retention tr[data-category='recordings'] td")
    await expect(recordings).to_have_text(["recordings", "30", "0", "deleted", "never"])
    ledger = page.locator("#retention tr[data-category='consent_ledger'] td")
    await expect(ledger.nth(3)).to_have_text("kept (append-only ledger)")
    await expect(page.locator("#retention-status")).to_contain_text("No purge has run yet")

    await page.get_by_role("button", name="Show processing register").click()
    register = page.locator("#register tbody tr")
    await expect(register).to_have_count(1)
    await expect(register.locator("td").nth(2)).to_have_text("ai.summary")
    await expect(register.locator("td").nth(3)).to_have_text(str(world.booking.people[0].id))
    await expect(register.locator("td").nth(5)).to_have_text("openai · summary-model")
    await expect(page.locator("#register-status")).to_have_text("1 processing step(s).")
