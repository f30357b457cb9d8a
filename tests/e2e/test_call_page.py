"""The call page in real Chromium: two people in a real call, consent in the call, refusals."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from zoneinfo import ZoneInfo

import pytest
from playwright.async_api import Browser, Page, expect
from playwright.async_api import TimeoutError as PlaywrightTimeout

from core.bookings import Booking, BookingStatus
from core.database import Database
from core.runtime import build_keyring
from tests.support.liveserver import LiveServer
from tests.support.signaling import Person, Seeded, seed_booking, ticket_for

pytestmark = pytest.mark.e2e


async def seed(server: LiveServer, **kwargs: object) -> Seeded:
    db = Database(server.settings.database_url)
    try:
        return await seed_booking(
            db, build_keyring(server.settings), datetime.now(UTC), **kwargs  # type: ignore[arg-type]
        )
    finally:
        await db.close()


async def open_join(browser: Browser, server: LiveServer, person: Person) -> Page:
    context = await browser.new_context()
    page = await context.new_page()
    await page.goto(f"{server.base_url}/join/{person.credential}")
    return page


async def choose(page: Page, purpose: str, allow: bool, panel: str = "#prejoin") -> None:
    fieldset = page.locator(f"{panel} fieldset[data-purpose='{purpose}']")
    await fieldset.get_by_label("Allow" if allow else "Do not allow", exact=True).check()
    await expect(fieldset.locator(".decided")).to_contain_text(
        "granted" if allow else ("withdrawn" if panel != "#prejoin" else "denied")
    )


VIDEO_PLAYING = """([id, since]) => {
  const v = document.querySelector(`.tile[data-peer="${id}"] video`);
  return !!v && v.videoWidth > 0 && v.currentTime > since;
}"""

AUDIO_BYTES = """async (id) => {
  const peer = window.callgate.peers.get(id);
  if (!peer) return 0;
  let bytes = 0;
  (await peer.pc.getStats()).forEach((r) => {
    if (r.type === "inbound-rtp" && r.kind === "audio") bytes += r.bytesReceived;
  });
  return bytes;
}"""


CALL_STATE = """() => [...window.callgate.peers.values()].map((p) => ({
  id: p.id, connection: p.pc.connectionState, signaling: p.pc.signalingState,
  senders: p.pc.getSenders().map((s) => s.track && s.track.kind),
  receivers: p.pc.getReceivers().map((r) => r.track && r.track.readyState),
}))"""


async def sees_and_hears(page: Page, other: Person) -> None:
    other_id = str(other.id)
    try:
        await page.wait_for_function(VIDEO_PLAYING, arg=[other_id, 0], timeout=30_000)
    except PlaywrightTimeout:
        state = await page.evaluate(CALL_STATE)
        raise AssertionError(f"no video from {other_id}; peer connections: {state}") from None
    time_now = await page.evaluate(
        f"document.querySelector('.tile[data-peer=\"{other_id}\"] video').currentTime"
    )
    await page.wait_for_function(VIDEO_PLAYING, arg=[other_id, time_now], timeout=15_000)
    first = await page.evaluate(AUDIO_BYTES, other_id)
    await page.wait_for_function(
        f"async () => ({AUDIO_BYTES})('{other_id}').then((b) => b > {first})", timeout=15_000
    )


async def test_host_and_client_see_and_hear_each_other_and_consent_changes_show(
    browser: Browser, live_server: LiveServer
) -> None:
    seeded = await seed(live_server)
    host = await open_join(browser, live_server, seeded.host)
    client = await open_join(browser, live_server, seeded.client)
    for page in (host, client):
        await expect(page.locator("#prejoin")).to_be_visible()
        await expect(page.locator("#prejoin fieldset")).to_have_count(2)
        assert await page.locator("#prejoin input[type=radio]:checked").count() == 0
    await choose(host, "recording.audio", allow=True)
    await choose(host, "recording.video", allow=True)
    await choose(client, "recording.audio", allow=True)
    await choose(client, "recording.video", allow=False)
    for page in (host, client):
        await page.get_by_role("button", name="Join the call").click()
        await expect(page.locator("#call")).to_be_visible()

    await sees_and_hears(host, seeded.client)
    await sees_and_hears(client, seeded.host)
    client_tile_on_host = host.locator(f".tile[data-peer='{seeded.client.id}']")
    await expect(client_tile_on_host.locator(".name")).to_have_text("Client 1")
    await expect(client_tile_on_host.locator(".rec")).to_have_text("not recording")
    video_choice = client_tile_on_host.locator("li[data-purpose='recording.video']")
    await expect(video_choice).to_have_attribute("data-decision", "denied")

    await client.get_by_role("button", name="Recording choices").click()
    await choose(client, "recording.audio", allow=False, panel="#consent-incall")
    audio_choice = client_tile_on_host.locator("li[data-purpose='recording.audio']")
    await expect(audio_choice).to_have_attribute("data-decision", "withdrawn")
    await expect(audio_choice).to_contain_text("Record my audio: withdrawn")


async def test_too_early_cancelled_and_invalid_links_are_explained(
    browser: Browser, live_server: LiveServer
) -> None:
    early = await seed(live_server, starts_in=timedelta(days=2))
    db = Database(live_server.settings.database_url)
    try:
        async with db.session() as session:
            booking = await session.get(Booking, early.booking_id)
            assert booking is not None
            starts_at = booking.starts_at
    finally:
        await db.close()
    context = await browser.new_context(timezone_id="Asia/Tokyo", locale="en-GB")
    page = await context.new_page()
    await page.goto(f"{live_server.base_url}/join/{early.host.credential}")
    await expect(page.locator("#problem-title")).to_have_text("Too early")
    tokyo = starts_at.astimezone(ZoneInfo("Asia/Tokyo"))
    detail = page.locator("#problem-detail")
    await expect(detail).to_contain_text(f"{tokyo.day} {tokyo:%B %Y}")  # en-GB: 24 November 2026
    await expect(detail).to_contain_text(f"{tokyo:%H:%M}")
    await expect(detail).to_contain_text("(Asia/Tokyo)")
    await expect(page.locator("#prejoin")).to_be_hidden()

    cancelled = await seed(live_server)
    db = Database(live_server.settings.database_url)
    try:
        async with db.session() as session:
            booking = await session.get(Booking, cancelled.booking_id)
            assert booking is not None
            booking.status = BookingStatus.CANCELLED
    finally:
        await db.close()
    page = await open_join(browser, live_server, cancelled.client)
    await expect(page.locator("#problem-title")).to_have_text("Cancelled")

    page = await (await browser.new_context()).new_page()
    await page.goto(f"{live_server.base_url}/join/not-a-real-link")
    await expect(page.locator("#problem-title")).to_have_text("Link invalid")


async def test_a_foreign_origin_cannot_open_the_signaling_socket(
    browser: Browser, live_server: LiveServer
) -> None:
    seeded = await seed(live_server)
    keys = build_keyring(live_server.settings)
    ticket = ticket_for(keys, seeded, seeded.host, datetime.now(UTC))
    ws_url = f"{live_server.ws_base}/v1/rooms/{seeded.room}/ws?ticket={ticket}"
    page = await (await browser.new_context()).new_page()
    # Same server, other origin: the page at localhost is not the public origin 127.0.0.1.
    await page.goto(f"http://localhost:{live_server.port}/healthz")
    probe = """(url) => new Promise((resolve) => {
      const ws = new WebSocket(url);
      ws.onmessage = (e) => resolve("message " + e.data);
      ws.onclose = (e) => resolve(e.code);
    })"""
    assert await page.evaluate(probe, ws_url) == 4403
    page = await (await browser.new_context()).new_page()
    await page.goto(f"{live_server.base_url}/healthz")  # the public origin, same ticket
    welcome = await page.evaluate(probe, ws_url)
    assert welcome.startswith('message {"type":"welcome"')
