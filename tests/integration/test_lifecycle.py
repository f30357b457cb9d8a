"""The booking lifecycle and attendance, driven by the clock and real sockets: a booking opens
with its window, goes live at the first join, ends when the window closes (no-shows decided
then) and closes when nothing is left to do; a deliberate Leave is announced at once."""

from __future__ import annotations

import asyncio
import json
from datetime import datetime, timedelta
from typing import Any

import httpx
import pytest

from core.accounts import Scope
from core.clock import ManualClock
from core.runtime import Runtime
from tests.support.bookings import bearer, book
from tests.support.lifecycle import enter, outbox_types, until_status
from tests.support.signaling import receive_type

GRACE_S = 60  # a dropped socket's grace: far longer than any wait below


@pytest.fixture
def settings_overrides() -> dict[str, Any]:
    return {"lifecycle_sweep_interval_s": 0.05, "signaling_reconnect_grace_s": GRACE_S}


async def attendance(
    client: httpx.AsyncClient, keys: dict[Scope, str], booking_id: str, scope: Scope
) -> dict[str, dict[str, Any]]:
    path = f"/v1/bookings/{booking_id}/attendance"
    response = await client.get(path, headers=bearer(keys[scope]))
    assert response.status_code == 200, response.text
    return {p["external_id"]: p for p in response.json()["people"]}


async def until_attendance(
    client: httpx.AsyncClient, keys: dict[Scope, str], booking_id: str, who: str, stays: int,
    *, present: bool,
) -> dict[str, Any]:
    async with asyncio.timeout(20):
        while True:
            person = (await attendance(client, keys, booking_id, Scope.SCHEDULER))[who]
            if len(person["stays"]) == stays and person["present"] is present:
                return person
            await asyncio.sleep(0.05)


async def test_a_session_opens_goes_live_ends_and_closes(
    client: httpx.AsyncClient, api_keys: dict[Scope, str], clock: ManualClock, runtime: Runtime,
    ws_base: str,
) -> None:
    created = await book(client, api_keys[Scope.SCHEDULER], clock.now() + timedelta(hours=1))
    booking_id = created["id"]
    host, guest = created["participants"]
    assert created["status"] == "scheduled"
    assert created["opened_at"] is None

    clock.advance(timedelta(minutes=55))  # the join window opens 10 minutes before the start
    opened = await until_status(client, api_keys, booking_id, "open")
    assert datetime.fromisoformat(opened["opened_at"]) == clock.now()

    ws = await enter(client, ws_base, host)
    live = await until_status(client, api_keys, booking_id, "live")
    assert live["live_at"] is not None
    before = await attendance(client, api_keys, booking_id, Scope.ADMIN)
    assert before[host["external_id"]]["present"] is True
    assert before[guest["external_id"]]["no_show"] is None  # not decided while the window is open

    clock.advance(timedelta(minutes=20))
    await ws.send(json.dumps({"type": "bye"}))
    await ws.wait_closed()
    person = await until_attendance(
        client, api_keys, booking_id, host["external_id"], 1, present=False
    )
    assert person["stays"][0]["how"] == "left"
    assert person["seconds_present"] == 20 * 60

    clock.advance(timedelta(hours=1))  # past the end (and the window: no grace by default)
    closed = await until_status(client, api_keys, booking_id, "closed")  # nothing left to do
    assert closed["ended_at"] == closed["closed_at"]
    assert datetime.fromisoformat(closed["closed_at"]) == clock.now()
    after = await attendance(client, api_keys, booking_id, Scope.SCHEDULER)
    assert after[guest["external_id"]]["no_show"] is True
    assert after[guest["external_id"]]["stays"] == []
    assert after[host["external_id"]]["no_show"] is False
    assert "display_name" not in after[host["external_id"]]
    assert await outbox_types(runtime, booking_id) == [
        "booking.created", "booking.opened", "booking.started", "participant.joined",
        "participant.left", "participant.no_show", "booking.ended", "booking.closed",
    ]
    gone = await client.delete(f"/v1/bookings/{booking_id}", headers=bearer(
        api_keys[Scope.SCHEDULER]
    ))
    assert gone.status_code == 409
    assert (await until_status(client, api_keys, booking_id, "closed"))["cancelled_at"] is None


async def test_a_deliberate_leave_is_announced_at_once(
    client: httpx.AsyncClient, api_keys: dict[Scope, str], clock: ManualClock, ws_base: str,
) -> None:
    created = await book(client, api_keys[Scope.SCHEDULER], clock.now())
    host, guest = created["participants"]
    host_ws = await enter(client, ws_base, host)
    guest_ws = await enter(client, ws_base, guest)
    await receive_type(host_ws, "peer-joined")
    await guest_ws.send(json.dumps({"type": "bye"}))
    # A dropped socket would keep the guest present for GRACE_S; a Leave ends it now.
    left = await receive_type(host_ws, "peer-left", wait_s=GRACE_S / 3)
    assert left["id"] == guest["id"]
    person = await until_attendance(
        client, api_keys, created["id"], guest["external_id"], 1, present=False
    )
    assert person["stays"][0]["how"] == "left"
    await host_ws.close()


async def test_attendance_needs_a_scheduler_or_admin_key(
    client: httpx.AsyncClient, api_keys: dict[Scope, str], clock: ManualClock,
) -> None:
    created = await book(client, api_keys[Scope.SCHEDULER], clock.now() + timedelta(days=1))
    path = f"/v1/bookings/{created['id']}/attendance"
    assert (await client.get(path, headers=bearer(api_keys[Scope.AUDITOR]))).status_code == 403
    assert (await client.get(path)).status_code == 401
    missing = await client.get(
        "/v1/bookings/00000000-0000-4000-8000-000000000000/attendance",
        headers=bearer(api_keys[Scope.ADMIN]),
    )
    assert missing.status_code == 404


async def test_rescheduling_an_open_booking_closes_its_window_again(
    client: httpx.AsyncClient, api_keys: dict[Scope, str], clock: ManualClock, runtime: Runtime,
) -> None:
    created = await book(client, api_keys[Scope.SCHEDULER], clock.now() + timedelta(minutes=5))
    await until_status(client, api_keys, created["id"], "open")
    later = clock.now() + timedelta(days=1)
    moved = await client.patch(
        f"/v1/bookings/{created['id']}", headers=bearer(api_keys[Scope.SCHEDULER]),
        json={"starts_at": later.isoformat(), "ends_at": (later + timedelta(hours=1)).isoformat()},
    )
    assert moved.status_code == 200, moved.text
    assert moved.json()["status"] == "scheduled"
    clock.advance(timedelta(days=1))
    await until_status(client, api_keys, created["id"], "open")
    assert await outbox_types(runtime, created["id"]) == [
        "booking.created", "booking.opened", "booking.rescheduled", "booking.opened",
    ]
