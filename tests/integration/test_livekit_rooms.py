"""LiveKit rooms behind bookings, against the local Twirp stand-in driven by the real client."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from datetime import timedelta
from typing import Any

import httpx
import pytest
from livekit import api as lk
from livekit.protocol import room

from core.accounts import Scope
from core.clock import ManualClock
from tests.standins.livekit import LiveKitStandIn
from tests.support.bookings import bearer, book

pytestmark = pytest.mark.usefixtures("database_url")

LK_KEY, LK_SECRET = "APIrooms", "rooms-secret-" + "r" * 32


@pytest.fixture
async def standin() -> AsyncIterator[LiveKitStandIn]:
    async with LiveKitStandIn(LK_KEY, LK_SECRET) as server:
        yield server


@pytest.fixture
def settings_overrides(standin: LiveKitStandIn) -> dict[str, Any]:
    return {
        "media_mode": "livekit",
        "livekit_url": standin.url,
        "livekit_api_key": LK_KEY,
        "livekit_api_secret": LK_SECRET,
        "livekit_empty_timeout_s": 120,
        "livekit_departure_timeout_s": 30,
        "livekit_retry_interval_s": 0.2,
        "livekit_timeout_s": 2,
    }


async def until_room_state(
    client: httpx.AsyncClient, key: str, booking_id: str, state: str
) -> dict[str, Any]:
    """Poll the booking (as the scheduler would) until its room reaches `state`."""
    for _ in range(600):
        shown: dict[str, Any] = (
            await client.get(f"/v1/bookings/{booking_id}", headers=bearer(key))
        ).json()
        if shown["room"]["state"] == state:
            return shown
        await asyncio.sleep(0.05)  # the retry loop runs every 0.2 s
    raise AssertionError(f"room never became {state}: {shown['room']}")


async def test_booking_creates_the_room_with_limits_and_no_personal_data(
    client: httpx.AsyncClient,
    api_keys: dict[Scope, str],
    clock: ManualClock,
    standin: LiveKitStandIn,
) -> None:
    created = await book(
        client, api_keys[Scope.SCHEDULER], clock.now() + timedelta(hours=1), clients=3,
        title="Therapy with Ada Secretname",
    )
    assert created["room"] == {
        "name": created["room"]["name"], "state": "created", "attempts": 1, "error": None
    }
    calls = standin.calls_to("CreateRoom")
    assert [c.status for c in calls] == [200]
    assert calls[0].content_type == "application/protobuf"
    request = calls[0].request
    assert isinstance(request, room.CreateRoomRequest)
    assert request.name == created["room"]["name"]
    assert request.max_participants == 4
    assert request.empty_timeout == 120
    assert request.departure_timeout == 30
    metadata = json.loads(request.metadata)
    assert metadata["booking_id"] == created["id"]
    for person in created["participants"]:
        for private in (person["display_name"], person["external_id"]):
            assert private not in request.metadata
    assert "Secretname" not in request.metadata
    assert created["room"]["name"] in standin.rooms


async def test_unreachable_livekit_keeps_the_booking_and_retries(
    client: httpx.AsyncClient,
    api_keys: dict[Scope, str],
    clock: ManualClock,
    standin: LiveKitStandIn,
) -> None:
    key = api_keys[Scope.SCHEDULER]
    await standin.stop()
    created = await book(client, key, clock.now() + timedelta(hours=1))
    assert created["room"]["state"] == "pending"
    assert created["room"]["attempts"] >= 1
    assert created["room"]["error"]
    shown = (await client.get(f"/v1/bookings/{created['id']}", headers=bearer(key))).json()
    assert shown["room"]["state"] == "pending"
    assert shown["participants"] == created["participants"]

    await standin.start()
    ready = await until_room_state(client, key, created["id"], "created")
    assert ready["room"]["error"] is None
    assert ready["room"]["attempts"] >= 2
    assert created["room"]["name"] in standin.rooms


async def test_cancel_deletes_the_room(
    client: httpx.AsyncClient,
    api_keys: dict[Scope, str],
    clock: ManualClock,
    standin: LiveKitStandIn,
) -> None:
    key = api_keys[Scope.SCHEDULER]
    created = await book(client, key, clock.now() + timedelta(hours=1))
    assert created["room"]["name"] in standin.rooms
    cancelled = await client.delete(f"/v1/bookings/{created['id']}", headers=bearer(key))
    assert cancelled.json()["room"]["state"] == "deleted"
    assert created["room"]["name"] not in standin.rooms
    assert [c.status for c in standin.calls_to("DeleteRoom")] == [200]


async def test_cancel_while_livekit_is_down_deletes_the_room_later(
    client: httpx.AsyncClient,
    api_keys: dict[Scope, str],
    clock: ManualClock,
    standin: LiveKitStandIn,
) -> None:
    key = api_keys[Scope.SCHEDULER]
    created = await book(client, key, clock.now() + timedelta(hours=1))
    await standin.stop()
    cancelled = (await client.delete(f"/v1/bookings/{created['id']}", headers=bearer(key))).json()
    assert cancelled["status"] == "cancelled"
    assert cancelled["room"]["state"] == "created"
    assert cancelled["room"]["error"]
    await standin.start()
    await until_room_state(client, key, created["id"], "deleted")
    assert created["room"]["name"] not in standin.rooms


async def test_standin_speaks_json_and_checks_grants(standin: LiveKitStandIn) -> None:
    def token(grants: lk.VideoGrants, secret: str = LK_SECRET) -> str:
        return lk.AccessToken(LK_KEY, secret).with_grants(grants).to_jwt()

    url = f"{standin.url}/twirp/livekit.RoomService/CreateRoom"
    async with httpx.AsyncClient() as http:
        ok = await http.post(
            url,
            json={"name": "json-room", "maxParticipants": 2},
            headers={"Authorization": f"Bearer {token(lk.VideoGrants(room_create=True))}"},
        )
        assert ok.status_code == 200
        assert ok.headers["content-type"].startswith("application/json")
        assert ok.json()["name"] == "json-room"
        assert ok.json()["maxParticipants"] == 2
        denied = await http.post(
            url,
            json={"name": "x"},
            headers={"Authorization": f"Bearer {token(lk.VideoGrants(room_list=True))}"},
        )
        assert (denied.status_code, denied.json()["code"]) == (403, "permission_denied")
        forged = await http.post(
            url,
            json={"name": "x"},
            headers={"Authorization": "Bearer " + token(
                lk.VideoGrants(room_create=True), "wrong-" + "w" * 32)},
        )
        assert (forged.status_code, forged.json()["code"]) == (401, "unauthenticated")
    async with lk.LiveKitAPI(standin.url, LK_KEY, LK_SECRET) as client:
        listed = await client.room.list_rooms(lk.ListRoomsRequest(names=["json-room"]))
        assert [r.name for r in listed.rooms] == ["json-room"]
        with pytest.raises(lk.TwirpError) as missing:
            await client.room.delete_room(lk.DeleteRoomRequest(room="no-such-room"))
        assert missing.value.code == "not_found"



async def test_room_closes_with_the_window_and_reopens_on_reschedule(
    client: httpx.AsyncClient,
    api_keys: dict[Scope, str],
    clock: ManualClock,
    standin: LiveKitStandIn,
) -> None:
    key = api_keys[Scope.SCHEDULER]
    created = await book(client, key, clock.now(), minutes=30)
    name = created["room"]["name"]
    assert name in standin.rooms
    clock.advance(timedelta(minutes=29))
    shown = (await client.get(f"/v1/bookings/{created['id']}", headers=bearer(key))).json()
    assert shown["room"]["state"] == "created"
    clock.advance(timedelta(minutes=1))  # the window (no grace) has closed
    await until_room_state(client, key, created["id"], "deleted")
    assert name not in standin.rooms

    start = clock.now() + timedelta(hours=1)
    moved = await client.patch(
        f"/v1/bookings/{created['id']}",
        json={"starts_at": start.isoformat(), "ends_at": (start + timedelta(hours=1)).isoformat()},
        headers=bearer(key),
    )
    assert moved.status_code == 200
    assert moved.json()["room"]["state"] == "created"
    assert name in standin.rooms
