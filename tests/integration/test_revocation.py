"""Access that ends at once, on every node: revoking a link, erasing a person, cancelling the
booking, or the join window closing ends the tickets, sockets, recording connections and
event streams already handed out.

Two app instances share PostgreSQL, Redis and a manual clock: the person's page is on node B
(its socket, a ticket it has not used yet, its recording connection and its job stream), the
cause happens on node A, as a scheduler, an admin or time would make it happen.
"""

from __future__ import annotations

import asyncio
import contextlib
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest
import uvicorn
from aiortc import RTCPeerConnection
from fastapi import FastAPI
from websockets.exceptions import ConnectionClosed

from api.app import create_app
from core.accounts import Scope, do_create_key
from core.clock import ManualClock
from core.runtime import Runtime
from core.settings import Settings
from media.recorder import Recorder
from signaling.hub import Hub
from summaries.jobs import Job, JobKind, JobStatus
from tests import support
from tests.support.bookings import bearer
from tests.support.liveserver import free_port
from tests.support.recording import offer_to_recorder
from tests.support.signaling import Seeded, open_socket, receive, seed_booking

pytestmark = pytest.mark.redis

ORIGIN = "http://testserver"
CAUSES = ["revoked", "erased", "cancelled", "window_closed"]
# What the open socket hears, its close code, and the close code of a ticket issued before.
EXPECTED = {
    "revoked": ("revoked", 4401, 4401),
    "erased": ("erased", 4410, 4401),
    "cancelled": ("booking_cancelled", 4410, 4410),
    "window_closed": ("window_closed", 1000, 4401),  # a ticket never outlives the window
}


@dataclass
class Node:
    app: FastAPI
    runtime: Runtime
    api: httpx.AsyncClient
    ws_base: str


@pytest.fixture
def database_url(pg_url: str) -> str:
    return pg_url


async def _serve(app: FastAPI, stack: contextlib.AsyncExitStack) -> str:
    port = free_port()
    config = uvicorn.Config(app, host="127.0.0.1", port=port, lifespan="off", log_level="error")
    server = uvicorn.Server(config)
    task = asyncio.create_task(server.serve())

    async def stop() -> None:
        server.should_exit = True
        await task

    stack.push_async_callback(stop)
    async with asyncio.timeout(10):
        while not server.started:  # noqa: ASYNC110 (uvicorn offers no event to wait on)
            await asyncio.sleep(0.02)
    return f"ws://127.0.0.1:{port}"


@pytest.fixture
async def nodes(
    settings: Settings, clock: ManualClock, redis_prefix: str, tmp_path: Path
) -> AsyncIterator[list[Node]]:
    started: list[Node] = []
    async with contextlib.AsyncExitStack() as stack:
        for name in ("a", "b"):
            node_settings = settings.model_copy(
                update={"redis_url": support.REDIS_URL, "redis_prefix": redis_prefix,
                        "data_dir": tmp_path / name}
            )
            app = create_app(node_settings, clock=clock)
            await stack.enter_async_context(app.router.lifespan_context(app))
            api = await stack.enter_async_context(
                httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url=ORIGIN)
            )
            started.append(Node(app, app.state.runtime, api, await _serve(app, stack)))
        yield started


async def _key(runtime: Runtime, scope: Scope) -> dict[str, str]:
    async with runtime.db.session() as session:
        _, plaintext = await do_create_key(session, scope, f"test {scope}", runtime.clock.now())
    return bearer(plaintext)


async def _ticket(node: Node, credential: str) -> str:
    joined = await node.api.post("/v1/join", json={"credential": credential})
    assert joined.status_code == 200, joined.text
    ticket: str = joined.json()["builtin"]["ticket"]
    return ticket


async def _closed(ws: Any) -> tuple[int, list[dict[str, Any]]]:
    seen: list[dict[str, Any]] = []
    try:
        while True:
            seen.append(await receive(ws))
    except ConnectionClosed as closed:
        return (closed.rcvd.code if closed.rcvd else -1), seen


async def _stream(node: Node, booking_id: uuid.UUID, credential: str) -> list[str]:
    """The job stream as the page reads it, until the server ends it."""
    lines: list[str] = []
    headers = {"X-Join-Credential": credential}
    async with node.api.stream(
        "GET", f"/v1/bookings/{booking_id}/jobs/events", headers=headers
    ) as response:
        assert response.status_code == 200
        async for line in response.aiter_lines():
            lines.append(line)
    return lines


async def _queued_job(runtime: Runtime, booking_id: uuid.UUID) -> None:
    """A job waiting for a worker (no AI provider runs here), so the stream stays open."""
    now = runtime.clock.now()
    async with runtime.db.session() as session:
        session.add(Job(
            booking_id=booking_id, kind=JobKind.TRANSCRIPTION, status=JobStatus.QUEUED,
            dedupe_key=f"test:{booking_id}", created_at=now, updated_at=now,
            excluded_subjects=[],
        ))


async def _cause(cause: str, node: Node, seeded: Seeded, clock: ManualClock) -> None:
    booking = f"/v1/bookings/{seeded.booking_id}"
    if cause == "revoked":
        headers = await _key(node.runtime, Scope.SCHEDULER)
        answer = await node.api.post(
            f"{booking}/participants/{seeded.client.id}/revoke", headers=headers
        )
    elif cause == "erased":
        headers = await _key(node.runtime, Scope.ADMIN)
        answer = await node.api.post(
            "/v1/admin/subjects/ext-1/erase", headers=headers, json={"confirm": "ext-1"}
        )
    elif cause == "cancelled":
        headers = await _key(node.runtime, Scope.SCHEDULER)
        answer = await node.api.delete(booking, headers=headers)
    else:
        clock.advance(timedelta(hours=1, seconds=1))
        return
    assert answer.status_code == 200, answer.text


async def _eventually(check: Any, what: str) -> None:
    async with asyncio.timeout(15):
        while not check():  # noqa: ASYNC110 (the recorder offers no event to wait on)
            await asyncio.sleep(0.02)
    assert check(), what


@pytest.mark.parametrize("cause", CAUSES)
async def test_access_already_handed_out_ends_on_every_node(
    nodes: list[Node], clock: ManualClock, cause: str
) -> None:
    node_a, node_b = nodes
    seeded = await seed_booking(node_b.runtime.db, node_b.runtime.keys, clock.now())
    guest = seeded.client
    host_ws = await open_socket(
        node_a.ws_base, seeded.room, await _ticket(node_a, seeded.host.credential), ORIGIN
    )
    assert (await receive(host_ws))["type"] == "welcome"
    guest_ws = await open_socket(
        node_b.ws_base, seeded.room, await _ticket(node_b, guest.credential), ORIGIN
    )
    assert (await receive(guest_ws))["type"] == "welcome"
    spare = await _ticket(node_b, guest.credential)  # fetched, not used yet

    recorder: Recorder = node_b.app.state.services.recorder
    page = RTCPeerConnection()
    page.addTransceiver("audio", direction="sendonly")
    await offer_to_recorder(node_b.api, {"X-Join-Credential": guest.credential}, page)
    assert recorder.connected(guest.id)

    await _queued_job(node_b.runtime, seeded.booking_id)
    stream = asyncio.create_task(_stream(node_b, seeded.booking_id, guest.credential))
    try:
        await _cause(cause, node_a, seeded, clock)

        reason, socket_code, ticket_code = EXPECTED[cause]
        code, seen = await _closed(guest_ws)
        assert seen[-1] == {"type": "bye", "reason": reason}
        assert code == socket_code
        late = await open_socket(node_b.ws_base, seeded.room, spare, ORIGIN)
        assert await _closed(late) == (ticket_code, [])
        await _eventually(lambda: not recorder.connected(guest.id), "recording connection closed")
        if cause != "window_closed":  # after the session the outputs stay readable
            lines = await asyncio.wait_for(stream, 15)
            assert "event: ended" in lines
            ending = {"revoked": "revoked", "erased": "erased", "cancelled": "booking_cancelled"}
            assert f'data: {{"reason":"{ending[cause]}"}}' in lines
    finally:
        stream.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await stream
        await page.close()
        await host_ws.close()


async def test_a_reschedule_moves_the_window_end_on_every_node(
    nodes: list[Node], clock: ManualClock
) -> None:
    node_a, node_b = nodes
    seeded = await seed_booking(node_b.runtime.db, node_b.runtime.keys, clock.now())
    guest_ws = await open_socket(
        node_b.ws_base, seeded.room, await _ticket(node_b, seeded.client.credential), ORIGIN
    )
    assert (await receive(guest_ws))["type"] == "welcome"
    recorder: Recorder = node_b.app.state.services.recorder
    page = RTCPeerConnection()
    page.addTransceiver("audio", direction="sendonly")
    headers = {"X-Join-Credential": seeded.client.credential}
    await offer_to_recorder(node_b.api, headers, page)
    try:
        later = {"starts_at": clock.now().isoformat(),
                 "ends_at": (clock.now() + timedelta(hours=2)).isoformat()}
        moved = await node_a.api.patch(
            f"/v1/bookings/{seeded.booking_id}", json=later,
            headers=await _key(node_a.runtime, Scope.SCHEDULER),
        )
        assert moved.status_code == 200, moved.text
        hub: Hub = node_b.app.state.services.hub
        new_end = clock.now() + timedelta(hours=2)
        await _eventually(  # node B heard of it (over Redis) before the clock moves
            lambda: hub.rooms[seeded.room].closes_at == new_end, "node B has the new window"
        )
        peer = recorder._peers[seeded.client.id]  # (the recorder exposes no window)
        await _eventually(lambda: peer.closes_at == new_end, "node B's recorder too")
        clock.advance(timedelta(hours=1, seconds=1))  # past the old end, before the new one
        await guest_ws.send('{"type":"ping"}')
        assert await receive(guest_ws) == {"type": "pong"}
        assert recorder.connected(seeded.client.id)
        clock.advance(timedelta(hours=1))
        code, seen = await _closed(guest_ws)
        assert (code, seen[-1]) == (1000, {"type": "bye", "reason": "window_closed"})
        await _eventually(lambda: not recorder.connected(seeded.client.id), "recording closed")
    finally:
        await page.close()
