"""LiveKit rooms behind bookings, against the real LiveKit server (tests/livekit_server.py)
driven by the real `livekit-api` client."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest
from livekit import api as lk

from core.accounts import Scope
from core.clock import ManualClock
from tests.support.bookings import bearer, book
from tests.support.livekit import LiveKitServer, livekit_binary

pytestmark = pytest.mark.usefixtures("database_url")


@pytest.fixture
def livekit(
    request: pytest.FixtureRequest, tmp_path: Path, balancer: Any
) -> Iterator[LiveKitServer]:
    """The session's server; `indirect` with "own" gives the test one it may stop and start."""
    if getattr(request, "param", None) != "own":
        yield request.getfixturevalue("livekit_server")
        return
    own = LiveKitServer(livekit_binary(), tmp_path / "livekit", balancer.url)
    own.start()
    try:
        yield own
    finally:
        own.stop()


OWN = pytest.mark.parametrize("livekit", ["own"], indirect=True)


@pytest.fixture
def settings_overrides(livekit: LiveKitServer) -> dict[str, Any]:
    return {
        "media_mode": "livekit",
        "livekit_url": livekit.url,
        "livekit_api_key": livekit.key,
        "livekit_api_secret": livekit.secret,
        "livekit_empty_timeout_s": 120,
        "livekit_departure_timeout_s": 30,
        "livekit_retry_interval_s": 0.2,
        "livekit_timeout_s": 2,
    }


@pytest.fixture
async def lkapi(livekit: LiveKitServer) -> AsyncIterator[lk.LiveKitAPI]:
    async with lk.LiveKitAPI(livekit.url, livekit.key, livekit.secret) as api:
        yield api


async def rooms_named(api: lk.LiveKitAPI, name: str) -> list[Any]:
    """The rooms LiveKit itself holds under `name` (empty when there is none)."""
    listed = await api.room.list_rooms(lk.ListRoomsRequest(names=[name]))
    return list(listed.rooms)


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
    lkapi: lk.LiveKitAPI,
) -> None:
    created = await book(
        client, api_keys[Scope.SCHEDULER], clock.now() + timedelta(hours=1), clients=3,
        title="Therapy with Ada Secretname",
    )
    assert created["room"] == {
        "name": created["room"]["name"], "state": "created", "attempts": 1, "error": None
    }
    [room] = await rooms_named(lkapi, created["room"]["name"])
    assert room.max_participants == 4
    assert room.empty_timeout == 120
    assert room.departure_timeout == 30
    metadata = json.loads(room.metadata)
    assert metadata["booking_id"] == created["id"]
    for person in created["participants"]:
        for private in (person["display_name"], person["external_id"]):
            assert private not in room.metadata
    assert "Secretname" not in room.metadata


@OWN
async def test_unreachable_livekit_keeps_the_booking_and_retries(
    client: httpx.AsyncClient,
    api_keys: dict[Scope, str],
    clock: ManualClock,
    livekit: LiveKitServer,
) -> None:
    key = api_keys[Scope.SCHEDULER]
    livekit.stop()
    created = await book(client, key, clock.now() + timedelta(hours=1))
    assert created["room"]["state"] == "pending"
    assert created["room"]["attempts"] >= 1
    assert created["room"]["error"]
    host, port = livekit.url.split("//", 1)[1].rsplit(":", 1)
    for internal in (host, port.rstrip("/")):  # the error says what failed, not where
        assert internal not in created["room"]["error"]
    shown = (await client.get(f"/v1/bookings/{created['id']}", headers=bearer(key))).json()
    assert shown["room"]["state"] == "pending"
    assert shown["participants"] == created["participants"]

    await asyncio.to_thread(livekit.start)
    ready = await until_room_state(client, key, created["id"], "created")
    assert ready["room"]["error"] is None
    assert ready["room"]["attempts"] >= 2
    async with lk.LiveKitAPI(livekit.url, livekit.key, livekit.secret) as api:
        assert len(await rooms_named(api, created["room"]["name"])) == 1


async def test_cancel_deletes_the_room(
    client: httpx.AsyncClient,
    api_keys: dict[Scope, str],
    clock: ManualClock,
    lkapi: lk.LiveKitAPI,
) -> None:
    key = api_keys[Scope.SCHEDULER]
    created = await book(client, key, clock.now() + timedelta(hours=1))
    assert len(await rooms_named(lkapi, created["room"]["name"])) == 1
    cancelled = await client.delete(f"/v1/bookings/{created['id']}", headers=bearer(key))
    assert cancelled.json()["room"]["state"] == "deleted"
    assert await rooms_named(lkapi, created["room"]["name"]) == []


@OWN
async def test_cancel_while_livekit_is_down_deletes_the_room_later(
    client: httpx.AsyncClient,
    api_keys: dict[Scope, str],
    clock: ManualClock,
    livekit: LiveKitServer,
) -> None:
    key = api_keys[Scope.SCHEDULER]
    created = await book(client, key, clock.now() + timedelta(hours=1))
    livekit.stop()
    cancelled = (await client.delete(f"/v1/bookings/{created['id']}", headers=bearer(key))).json()
    assert cancelled["status"] == "cancelled"
    assert cancelled["room"]["state"] == "created"
    assert cancelled["room"]["error"]
    await asyncio.to_thread(livekit.start)
    await until_room_state(client, key, created["id"], "deleted")
    async with lk.LiveKitAPI(livekit.url, livekit.key, livekit.secret) as api:
        assert await rooms_named(api, created["room"]["name"]) == []


async def test_room_closes_with_the_window_and_reopens_on_reschedule(
    client: httpx.AsyncClient,
    api_keys: dict[Scope, str],
    clock: ManualClock,
    lkapi: lk.LiveKitAPI,
) -> None:
    key = api_keys[Scope.SCHEDULER]
    created = await book(client, key, clock.now(), minutes=30)
    name = created["room"]["name"]
    assert len(await rooms_named(lkapi, name)) == 1
    clock.advance(timedelta(minutes=29))
    shown = (await client.get(f"/v1/bookings/{created['id']}", headers=bearer(key))).json()
    assert shown["room"]["state"] == "created"
    clock.advance(timedelta(minutes=1))  # the window (no grace) has closed
    await until_room_state(client, key, created["id"], "deleted")
    assert await rooms_named(lkapi, name) == []

    start = clock.now() + timedelta(hours=1)
    moved = await client.patch(
        f"/v1/bookings/{created['id']}",
        json={"starts_at": start.isoformat(), "ends_at": (start + timedelta(hours=1)).isoformat()},
        headers=bearer(key),
    )
    assert moved.status_code == 200
    assert moved.json()["room"]["state"] == "created"
    assert len(await rooms_named(lkapi, name)) == 1
