"""LiveKit mode end to end: the call page joins the real LiveKit server (tests/livekit_server.py)
through the real `livekit-client` SDK, which callgate itself serves, with the token
`POST /v1/join` gave it; the rooms are the ones callgate created for the bookings, and the
server's own webhooks reach callgate through the test load balancer."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from typing import Any

import httpx
import pytest
from livekit import api as lk
from playwright.async_api import Browser, Page, expect

from core.accounts import Scope, do_create_key
from core.database import Database
from tests.support.bookings import bearer, booking_body, credential_of
from tests.support.livekit import LiveKitServer
from tests.support.liveserver import LiveServer

pytestmark = pytest.mark.e2e

# When the other person's first video frame was painted, counted from the click on "Join".
FIRST_REMOTE_FRAME = """async (id) => {
  const deadline = Date.now() + 60000;
  while (Date.now() < deadline) {
    const v = document.querySelector(`.tile[data-peer="${id}"] video`);
    if (v && v.videoWidth > 0) {
      const painted = await new Promise((done) => v.requestVideoFrameCallback(done));
      return { at: painted - window.__joinClickedAt, width: v.videoWidth };
    }
    await new Promise((r) => setTimeout(r, 20));
  }
  return null;
}"""

DECODED_FRAMES = """(id) => {
  const v = document.querySelector(`.tile[data-peer="${id}"] video`);
  return v ? v.getVideoPlaybackQuality().totalVideoFrames : 0;
}"""


@pytest.fixture
def live_server_overrides(livekit_server: LiveKitServer) -> dict[str, Any]:
    return {
        "media_mode": "livekit",
        "livekit_url": livekit_server.url,
        "livekit_api_key": livekit_server.key,
        "livekit_api_secret": livekit_server.secret,
        "livekit_retry_interval_s": 0.5,
    }


@pytest.fixture
def nodes(live_server: LiveServer, webhook_backends: list[str]) -> LiveServer:
    """The callgate node, behind the load balancer LiveKit's webhooks go to."""
    webhook_backends.append(live_server.base_url)
    return live_server


async def scheduler_key(server: LiveServer) -> str:
    db = Database(server.settings.database_url)
    try:
        async with db.session() as session:
            _, key = await do_create_key(
                session, Scope.SCHEDULER, "e2e", datetime.now(UTC)
            )
        return key
    finally:
        await db.close()


async def book(server: LiveServer, clients: int = 1, **body: Any) -> dict[str, Any]:
    """A booking open now, made through the API (so callgate creates its LiveKit room); the
    answer carries the scheduler key it was made with under `_key`."""
    key = await scheduler_key(server)
    now = datetime.now(UTC).replace(microsecond=0)
    async with httpx.AsyncClient(base_url=server.base_url) as http:
        response = await http.post(
            "/v1/bookings",
            json=booking_body(now, minutes=30, clients=clients, purposes=[], **body),
            headers=bearer(key),
        )
    assert response.status_code == 201, response.text
    created: dict[str, Any] = response.json()
    assert created["room"]["state"] == "created", created["room"]
    created["_key"] = key
    return created


async def present(server: LiveServer, created: dict[str, Any]) -> dict[str, bool]:
    """Attendance as the scheduler reads it: participant id -> present now."""
    async with httpx.AsyncClient(base_url=server.base_url) as http:
        answer = await http.get(
            f"/v1/bookings/{created['id']}/attendance", headers=bearer(created["_key"])
        )
    assert answer.status_code == 200, answer.text
    return {p["participant_id"]: p["present"] for p in answer.json()["people"]}


async def join_page(browser: Browser, server: LiveServer, person: dict[str, Any]) -> Page:
    """A person's call page, joined (camera and microphone published through LiveKit)."""
    context = await browser.new_context()
    page = await context.new_page()
    await page.goto(f"{server.base_url}/join/{credential_of(person)}")
    join = page.get_by_role("button", name="Join the call")
    await expect(join).to_be_enabled()
    await page.evaluate("() => { window.__joinClickedAt = performance.now(); }")
    await join.click()
    await expect(page.locator("#call")).to_be_visible()
    return page


async def until(check: Callable[[], Awaitable[bool]], what: str, seconds: float = 30) -> None:
    deadline = asyncio.get_running_loop().time() + seconds
    while not await check():
        if asyncio.get_running_loop().time() > deadline:
            raise AssertionError(f"never happened: {what}")
        await asyncio.sleep(0.1)


async def test_two_pages_see_each_other_through_livekit(
    browser: Browser, nodes: LiveServer, livekit_server: LiveKitServer,
    record_property: Callable[[str, object], None],
) -> None:
    created = await book(nodes)
    host, guest = created["participants"]
    first = await join_page(browser, nodes, host)
    second = await join_page(browser, nodes, guest)

    seen = await second.evaluate(FIRST_REMOTE_FRAME, host["id"])
    back = await first.evaluate(FIRST_REMOTE_FRAME, guest["id"])
    assert seen is not None, "the guest never saw the host's video"
    assert back is not None, "the host never saw the guest's video"
    assert seen["width"] > 0
    assert back["width"] > 0
    # Frames keep coming (decoded, not one frozen picture) on both sides.
    for page, other in ((first, guest["id"]), (second, host["id"])):
        count = await page.evaluate(DECODED_FRAMES, other)
        await until(
            lambda p=page, o=other, c=count: _more_frames(p, o, c), "more decoded frames"
        )
    record_property("first_remote_frame_ms", round(seen["at"]))
    print(f"\nLiveKit first remote frame, from the click on Join: {seen['at']:.0f} ms")

    # The SDK came from callgate itself: no other origin served a script.
    scripts = await second.evaluate(
        "() => performance.getEntriesByType('resource')"
        ".filter((e) => e.initiatorType === 'script').map((e) => e.name)"
    )
    assert scripts, "no script loaded"
    assert all(name.startswith(nodes.base_url) for name in scripts), scripts
    assert any(name.endswith("/call/livekit-client.js") for name in scripts)

    # LiveKit's own view: both identities in the room callgate created, each publishing two tracks.
    async with lk.LiveKitAPI(livekit_server.url, livekit_server.key, livekit_server.secret) as api:
        listed = await api.room.list_participants(
            lk.ListParticipantsRequest(room=created["room"]["name"])
        )
    assert sorted(p.identity for p in listed.participants) == sorted([host["id"], guest["id"]])
    assert all(len(p.tracks) == 2 for p in listed.participants)

    # LiveKit's own webhooks told callgate who came in, and who went away.
    both = {host["id"]: True, guest["id"]: True}

    async def both_in() -> bool:
        return await present(nodes, created) == both

    await until(both_in, "attendance shows both people in the room")
    await second.context.close()

    async def guest_gone() -> bool:
        return await present(nodes, created) == {host["id"]: True, guest["id"]: False}

    await until(guest_gone, "attendance shows the guest gone")
    await first.context.close()


async def _more_frames(page: Page, other: str, before: int) -> bool:
    return bool(await page.evaluate(DECODED_FRAMES, other) > before)
