"""Whether a booking is being recorded is kept in the database: a `record_automatically`
booking is on from the start, the host's stop holds, and a restarted node (or another one)
gives the same answer."""

from __future__ import annotations

import httpx
from fastapi import FastAPI

from api.app import create_app
from core.accounts import Scope
from core.clock import ManualClock
from core.runtime import Runtime
from core.settings import Settings
from tests.support.bookings import bearer, book, credential_of
from tests.support.lifecycle import outbox_types


async def recording_flag(client: httpx.AsyncClient, booking_id: str, credential: str) -> bool:
    response = await client.get(
        f"/v1/bookings/{booking_id}/recordings", headers={"X-Join-Credential": credential}
    )
    assert response.status_code == 200, response.text
    flag: bool = response.json()["recording"]
    return flag


async def test_automatic_recording_is_on_from_the_start_and_a_stop_outlives_a_restart(
    client: httpx.AsyncClient,
    runtime: Runtime,
    api_keys: dict[Scope, str],
    settings: Settings,
    clock: ManualClock,
) -> None:
    automatic = await book(
        client, api_keys[Scope.SCHEDULER], clock.now(), record_automatically=True
    )
    manual = await book(client, api_keys[Scope.SCHEDULER], clock.now())
    host, guest = (credential_of(p) for p in automatic["participants"])
    manual_host = credential_of(manual["participants"][0])

    # Nobody has connected yet: the automatic booking is already on, the other is not.
    assert await recording_flag(client, automatic["id"], guest) is True
    assert await recording_flag(client, manual["id"], manual_host) is False

    stopped = await client.post(
        f"/v1/bookings/{automatic['id']}/recording/stop", headers={"X-Join-Credential": host}
    )
    assert stopped.status_code == 200
    assert stopped.json()["recording"] is False
    assert await recording_flag(client, automatic["id"], guest) is False

    # A second node on the same database (or this one restarted) agrees, and its start
    # is what the first node reads next.
    other: FastAPI = create_app(settings, clock=clock)
    async with other.router.lifespan_context(other):
        transport = httpx.ASGITransport(app=other)
        async with httpx.AsyncClient(transport=transport, base_url="http://testserver") as peer:
            assert await recording_flag(peer, automatic["id"], guest) is False
            started = await peer.post(
                f"/v1/bookings/{automatic['id']}/recording/start",
                headers=bearer(api_keys[Scope.ADMIN]),
            )
            assert started.json()["recording"] is True
    assert await recording_flag(client, automatic["id"], host) is True
    assert await recording_flag(client, manual["id"], manual_host) is False
    told = await outbox_types(runtime, automatic["id"])  # the webhooks the scheduler gets
    assert [t for t in told if t.startswith("recording.")] == [
        "recording.stopped", "recording.started"
    ]
