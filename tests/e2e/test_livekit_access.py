"""Who may be in a LiveKit room, as the real LiveKit server enforces it for callgate.

callgate runs in this process (a real uvicorn on a free port, with the manual clock) behind the
test load balancer the server's webhooks go to. People join as browsers do: Chromium pages
running the `livekit-client` SDK callgate serves, with the tokens `POST /v1/join` gives; where a
test must send what no honest SDK sends (a source it was not granted, its own metadata), it
speaks LiveKit's signaling protocol (protobuf over WebSocket) itself.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable
from datetime import timedelta
from typing import Any

import httpx
import pytest
import websockets
from fastapi import FastAPI
from livekit import api as lk
from livekit.protocol import models, rtc
from playwright.async_api import Browser, Page

from core.accounts import Scope
from core.clock import ManualClock
from tests.support.bookings import bearer, book, credential_of
from tests.support.livekit import Balancer, LiveKitServer, serving

pytestmark = pytest.mark.e2e

CONNECT = """async ([url, token]) => {
  const { Room, RoomEvent } = window.LivekitClient;
  const room = new Room();
  window.__room = room;
  window.__disconnected = null;
  room.on(RoomEvent.Disconnected, (reason) => { window.__disconnected = String(reason); });
  try {
    await room.connect(url, token);
    return "connected";
  } catch (error) {
    return "refused: " + error.message;
  }
}"""


@pytest.fixture
def backend() -> str:
    return "postgres"


@pytest.fixture
def settings_overrides(livekit_server: LiveKitServer) -> dict[str, Any]:
    return {
        "media_mode": "livekit",
        "livekit_url": livekit_server.url,
        "livekit_api_key": livekit_server.key,
        "livekit_api_secret": livekit_server.secret,
        "livekit_retry_interval_s": 0.2,
        "livekit_timeout_s": 5,
    }


@pytest.fixture
async def node(app: FastAPI, webhook_backends: list[str]) -> AsyncIterator[str]:
    """The app on a real port, behind the load balancer LiveKit's webhooks go to."""
    async with serving(app) as base:
        webhook_backends.append(base)
        yield base


@pytest.fixture
async def lkapi(livekit_server: LiveKitServer) -> AsyncIterator[lk.LiveKitAPI]:
    async with lk.LiveKitAPI(
        livekit_server.url, livekit_server.key, livekit_server.secret
    ) as api:
        yield api


async def until(check: Callable[[], Awaitable[bool]], what: str, seconds: float = 30) -> None:
    deadline = asyncio.get_running_loop().time() + seconds
    while not await check():
        if asyncio.get_running_loop().time() > deadline:
            raise AssertionError(f"never happened: {what}")
        await asyncio.sleep(0.1)


async def token_of(node: str, person: dict[str, Any]) -> str:
    async with httpx.AsyncClient(base_url=node) as http:
        answer = await http.post("/v1/join", json={"credential": credential_of(person)})
    assert answer.status_code == 200, answer.text
    return str(answer.json()["livekit"]["token"])


async def sdk_page(browser: Browser, node: str) -> Page:
    """A page with callgate's livekit-client loaded, to join with a given token."""
    page = await (await browser.new_context()).new_page()
    await page.goto(f"{node}/healthz")
    await page.add_script_tag(url=f"{node}/call/livekit-client.js")
    return page


async def connect(page: Page, livekit: LiveKitServer, token: str) -> str:
    return str(await page.evaluate(CONNECT, [livekit.url, token]))


async def identities(api: lk.LiveKitAPI, room: str) -> set[str]:
    try:
        listed = await api.room.list_participants(lk.ListParticipantsRequest(room=room))
    except lk.TwirpError:
        return set()  # the room is gone
    return {p.identity for p in listed.participants}


async def disconnected(page: Page) -> bool:
    return await page.evaluate("() => window.__disconnected") is not None


async def test_room_limit_and_window_end(
    browser: Browser, node: str, livekit_server: LiveKitServer, lkapi: lk.LiveKitAPI,
    balancer: Balancer,
    client: httpx.AsyncClient, api_keys: dict[Scope, str], clock: ManualClock,
) -> None:
    created = await book(client, api_keys[Scope.SCHEDULER], clock.now(), minutes=30)
    room = created["room"]["name"]
    host, guest = created["participants"]
    pages = [await sdk_page(browser, node) for _ in range(3)]
    assert await connect(pages[0], livekit_server, await token_of(node, host)) == "connected"
    assert await connect(pages[1], livekit_server, await token_of(node, guest)) == "connected"
    # A third identity with a valid token for the room: the room callgate created holds two.
    intruder = (
        lk.AccessToken(livekit_server.key, livekit_server.secret).with_identity("intruder")
        .with_grants(lk.VideoGrants(room_join=True, room=room)).to_jwt()
    )
    third = await connect(pages[2], livekit_server, intruder)
    assert third.startswith("refused"), third
    assert await identities(lkapi, room) == {host["id"], guest["id"]}

    # The window closes: callgate deletes the room, which disconnects both pages.
    clock.advance(timedelta(minutes=31))
    for page in pages[:2]:
        await until(lambda p=page: disconnected(p), "the page was disconnected")
    assert await identities(lkapi, room) == set()
    # LiveKit's own webhooks of this room reached callgate through the balancer, verified.
    await until(lambda: _seen(balancer, "room_finished", room), "room_finished delivered")
    seen = {(kind, status) for kind, name, status in balancer.events if name == room}
    assert {("participant_joined", 200), ("participant_left", 200),
            ("room_finished", 200)} <= seen
    for page in pages:
        await page.context.close()


async def test_revoked_and_erased_people_are_removed_and_kept_out(
    browser: Browser, node: str, livekit_server: LiveKitServer, lkapi: lk.LiveKitAPI,
    client: httpx.AsyncClient, api_keys: dict[Scope, str], clock: ManualClock,
) -> None:
    created = await book(client, api_keys[Scope.SCHEDULER], clock.now(), minutes=30, clients=2)
    room = created["room"]["name"]
    host, guest, other = created["participants"]
    old_token = await token_of(node, guest)
    host_page, guest_page, other_page = [await sdk_page(browser, node) for _ in range(3)]
    assert await connect(host_page, livekit_server, await token_of(node, host)) == "connected"
    assert await connect(guest_page, livekit_server, old_token) == "connected"
    assert await connect(other_page, livekit_server, await token_of(node, other)) == "connected"
    everyone = {host["id"], guest["id"], other["id"]}
    await until(lambda: _equals(identities(lkapi, room), everyone), "all three in the room")

    revoke = f"/v1/bookings/{created['id']}/participants/{guest['id']}/revoke"
    answer = await client.post(revoke, headers=bearer(api_keys[Scope.SCHEDULER]))
    assert answer.status_code == 200, answer.text
    await until(lambda: disconnected(guest_page), "the revoked guest was removed")
    assert await identities(lkapi, room) == {host["id"], other["id"]}

    # The old token is still valid for LiveKit; the join it makes is undone at once.
    again = await sdk_page(browser, node)
    await connect(again, livekit_server, old_token)
    await until(lambda: disconnected(again), "the old token's join was undone")
    await until(
        lambda: _equals(identities(lkapi, room), {host["id"], other["id"]}), "guest kept out"
    )
    # The guest's new link lets the same person in again.
    renewed = answer.json()
    fresh = await token_of(node, renewed)
    back = await sdk_page(browser, node)
    assert await connect(back, livekit_server, fresh) == "connected"
    await until(lambda: _equals(identities(lkapi, room), everyone), "guest back with new link")

    # Erasure removes the person, and no token of theirs brings them back.
    other_token = await token_of(node, other)
    erase = f"/v1/admin/subjects/{other['external_id']}/erase"
    erased = await client.post(
        erase, headers=bearer(api_keys[Scope.ADMIN]), json={"confirm": other["external_id"]}
    )
    assert erased.status_code == 200, erased.text
    await until(lambda: disconnected(other_page), "the erased person was removed")
    retry = await sdk_page(browser, node)
    await connect(retry, livekit_server, other_token)
    await until(lambda: disconnected(retry), "the erased person's join was undone")
    # The guest who came back with the new link is still in, long after their join's webhook.
    assert await identities(lkapi, room) == {host["id"], guest["id"]}
    assert not await disconnected(back)
    for page in (host_page, guest_page, other_page, again, back, retry):
        await page.context.close()


async def _seen(balancer: Balancer, kind: str, room: str) -> bool:
    return any(k == kind and name == room for k, name, _ in balancer.events)


async def _equals(found: Awaitable[set[str]], expected: set[str]) -> bool:
    return await found == expected


async def signal(livekit: LiveKitServer, token: str) -> websockets.ClientConnection:
    """A signaling connection as an SDK opens it (`/rtc`, LiveKit's protobuf messages)."""
    url = livekit.url.replace("http", "ws", 1) + f"/rtc?access_token={token}&protocol=16"
    connection = await websockets.connect(url)
    first = rtc.SignalResponse.FromString(await _binary(connection))
    assert first.WhichOneof("message") == "join", first
    return connection


async def _binary(connection: websockets.ClientConnection) -> bytes:
    while True:
        message = await asyncio.wait_for(connection.recv(), 15)
        if isinstance(message, bytes):
            return message


async def answer_to(
    connection: websockets.ClientConnection, request: rtc.SignalRequest, kinds: set[str]
) -> rtc.SignalResponse:
    """Send `request`; the first response of one of `kinds` (others are skipped)."""
    await connection.send(request.SerializeToString())
    while True:
        response = rtc.SignalResponse.FromString(await _binary(connection))
        if response.WhichOneof("message") in kinds:
            return response


async def test_livekit_enforces_the_grants_of_callgate_tokens(
    node: str, livekit_server: LiveKitServer, lkapi: lk.LiveKitAPI,
    client: httpx.AsyncClient, api_keys: dict[Scope, str], clock: ManualClock,
) -> None:
    created = await book(client, api_keys[Scope.SCHEDULER], clock.now(), minutes=30)
    room = created["room"]["name"]
    guest = created["participants"][1]
    connection = await signal(livekit_server, await token_of(node, guest))
    kinds = {"request_response", "track_published"}
    try:
        screen = rtc.SignalRequest(add_track=rtc.AddTrackRequest(
            cid="screen", name="screen", type=models.TrackType.VIDEO,
            source=models.TrackSource.SCREEN_SHARE,
        ))
        refused = await answer_to(connection, screen, kinds)
        assert refused.WhichOneof("message") == "request_response"
        assert refused.request_response.reason == rtc.RequestResponse.NOT_ALLOWED
        camera = rtc.SignalRequest(add_track=rtc.AddTrackRequest(
            cid="camera", name="camera", type=models.TrackType.VIDEO,
            source=models.TrackSource.CAMERA, width=640, height=480,
        ))
        accepted = await answer_to(connection, camera, kinds)  # what it was granted: fine
        assert accepted.WhichOneof("message") == "track_published"
        assert accepted.track_published.cid == "camera"

        metadata = rtc.SignalRequest(update_metadata=rtc.UpdateParticipantMetadata(
            metadata="I am the host", request_id=7,
        ))
        denied = await answer_to(connection, metadata, {"request_response"})
        assert denied.request_response.request_id == 7
        assert denied.request_response.reason == rtc.RequestResponse.NOT_ALLOWED
        listed = await lkapi.room.list_participants(lk.ListParticipantsRequest(room=room))
        [shown] = [p for p in listed.participants if p.identity == guest["id"]]
        assert shown.metadata == ""
        assert list(shown.permission.can_publish_sources) == [
            models.TrackSource.CAMERA, models.TrackSource.MICROPHONE
        ]
    finally:
        await connection.close()
