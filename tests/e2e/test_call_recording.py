"""The call page records in real Chromium: each page sends the recorder only what its person
allows, the host starts recording from the page, and a withdrawal in the call ends that file."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

import httpx
import pytest
from playwright.async_api import Browser, Page, expect

from core.purposes import RecordingAccess
from tests.e2e.test_call_page import choose, open_join, seed
from tests.support.liveserver import LiveServer
from tests.support.signaling import Person, Seeded

pytestmark = pytest.mark.e2e

Rows = list[dict[str, Any]]

RECORDER_BYTES = """(kind) => (async () => {
  const recorder = window.callgate.recorder;
  if (!recorder) return -1;
  let bytes = 0;
  (await recorder.pc.getStats()).forEach((r) => {
    if (r.type === "outbound-rtp" && r.kind === kind) bytes += r.bytesSent;
  });
  return bytes;
})()"""


async def recordings_until(
    http: httpx.AsyncClient, booking_id: str, viewer: Person, done: Callable[[Rows], bool]
) -> Rows:
    """The booking's recordings as the viewer sees them, polled until `done` (at most ~45 s)."""
    rows: Rows = []
    for _ in range(90):
        response = await http.get(
            f"/v1/bookings/{booking_id}/recordings",
            headers={"X-Join-Credential": viewer.credential},
        )
        assert response.status_code == 200, response.text
        rows = response.json()["recordings"]
        if done(rows):
            return rows
        await asyncio.sleep(0.5)
    raise AssertionError(f"recordings never reached the expected state: {rows}")


def of(rows: Rows, person: Person, kind: str) -> Rows:
    return [r for r in rows if r["participant_id"] == str(person.id) and r["kind"] == kind]


async def join(page: Page) -> None:
    await page.get_by_role("button", name="Join the call").click()
    await expect(page.locator("#call")).to_be_visible()


async def both_in_call(
    browser: Browser, live_server: LiveServer, seeded: Seeded,
    host_allows: tuple[bool, bool], client_allows: tuple[bool, bool],
) -> tuple[Page, Page]:
    """The host's and the client's pages, each having answered (audio, video) before joining."""
    host = await open_join(browser, live_server, seeded.host)
    client = await open_join(browser, live_server, seeded.client)
    for page, (audio, video) in ((host, host_allows), (client, client_allows)):
        await expect(page.locator("#prejoin fieldset")).to_have_count(2)
        await choose(page, "recording.audio", allow=audio)
        await choose(page, "recording.video", allow=video)
    await join(host)
    await join(client)
    return host, client


async def test_page_sends_only_consented_tracks_and_a_withdrawal_ends_the_file(
    browser: Browser, live_server: LiveServer
) -> None:
    seeded = await seed(live_server, access=RecordingAccess.PARTICIPANTS)
    host_person, client_person = seeded.host, seeded.client
    host, client = await both_in_call(
        browser, live_server, seeded, host_allows=(True, True), client_allows=(True, False)
    )

    # Only the host is offered the switch.
    start = host.get_by_role("button", name="Start recording")
    await expect(start).to_be_visible()
    await expect(client.locator("#record-toggle")).to_be_hidden()
    client_tile_on_host = host.locator(f".tile[data-peer='{client_person.id}'] .rec")
    await expect(client_tile_on_host).to_have_text("not recording")

    await start.click()
    await expect(host.get_by_role("button", name="Stop recording")).to_be_visible()

    booking_id = str(seeded.booking_id)
    async with httpx.AsyncClient(base_url=live_server.base_url, trust_env=False) as http:
        rows = await recordings_until(
            http, booking_id, client_person,
            lambda rows: all(
                of(rows, who, kind)
                for who, kind in ((host_person, "audio"), (host_person, "video"),
                                  (client_person, "audio"))
            ),
        )
        assert of(rows, client_person, "video") == []
        for who, kind in ((host_person, "audio"), (host_person, "video"), (client_person, "audio")):
            [row] = of(rows, who, kind)
            assert (row["state"], row["ended_at"]) == ("recording", None), row

        # What each page shows of the other, and what the client's page puts on the wire.
        await expect(client_tile_on_host).to_have_text("recording audio")
        host_tile_on_client = client.locator(f".tile[data-peer='{host_person.id}'] .rec")
        await expect(host_tile_on_client).to_have_text("recording audio and video")
        assert await client.evaluate(RECORDER_BYTES, "audio") > 0
        assert await client.evaluate(RECORDER_BYTES, "video") == 0

        # The host withdraws video in the call: the file ends, audio goes on.
        await host.get_by_role("button", name="Recording choices").click()
        await choose(host, "recording.video", allow=False, panel="#consent-incall")
        await expect(host_tile_on_client).to_have_text("recording audio")
        rows = await recordings_until(
            http, booking_id, client_person,
            lambda rows: all(r["ended_at"] is not None for r in of(rows, host_person, "video")),
        )
        [video] = of(rows, host_person, "video")
        assert video["state"] == "complete", video
        assert video["frames"] > 0, video
        [audio] = of(rows, host_person, "audio")
        assert (audio["state"], audio["ended_at"]) == ("recording", None), audio
        assert of(rows, client_person, "video") == []
        sending = "() => window.callgate.recorder.senders.video.track"
        assert await host.evaluate(sending) is None
        assert await host.evaluate("() => window.callgate.recorder.senders.audio.track.kind") == (
            "audio"
        )

        # Granting again sends the camera again: a new video file, the first one stays ended.
        await choose(host, "recording.video", allow=True, panel="#consent-incall")
        await expect(host_tile_on_client).to_have_text("recording audio and video")
        rows = await recordings_until(
            http, booking_id, client_person,
            lambda rows: len(of(rows, host_person, "video")) == 2,
        )
        first, second = of(rows, host_person, "video")
        assert first["id"] == video["id"]
        assert first["ended_at"] is not None
        assert second["ended_at"] is None

        # The host stops: every file ends and the page drops its recording connection.
        await host.get_by_role("button", name="Stop recording").click()
        await expect(host.get_by_role("button", name="Start recording")).to_be_visible()
        await expect(host_tile_on_client).to_have_text("not recording")
        rows = await recordings_until(
            http, booking_id, client_person,
            lambda rows: all(r["ended_at"] is not None for r in rows),
        )
        assert len(rows) == 4
        await host.wait_for_function("() => window.callgate.recorder === null")
        await client.wait_for_function("() => window.callgate.recorder === null", timeout=15_000)


async def test_a_booking_recorded_automatically_starts_without_the_button(
    browser: Browser, live_server: LiveServer
) -> None:
    from sqlalchemy import update

    from core.bookings import Booking
    from core.database import Database

    seeded = await seed(live_server, access=RecordingAccess.PARTICIPANTS)
    db = Database(live_server.settings.database_url)
    try:
        async with db.session() as session:
            await session.execute(
                update(Booking)
                .where(Booking.id == seeded.booking_id)
                .values(record_automatically=True)
            )
    finally:
        await db.close()
    host = await open_join(browser, live_server, seeded.host)
    await expect(host.locator("#prejoin fieldset")).to_have_count(2)
    await choose(host, "recording.audio", allow=True)
    await choose(host, "recording.video", allow=False)
    await join(host)
    async with httpx.AsyncClient(base_url=live_server.base_url, trust_env=False) as http:
        rows = await recordings_until(
            http, str(seeded.booking_id), seeded.host,
            lambda rows: len(of(rows, seeded.host, "audio")) == 1,
        )
    assert of(rows, seeded.host, "video") == []
    await host.context.close()
