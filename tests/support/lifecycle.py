"""Waiting for a booking's lifecycle and reading its outbox, for lifecycle and webhook tests."""

from __future__ import annotations

import asyncio
import uuid
from typing import Any

import httpx
from sqlalchemy import select
from websockets.asyncio.client import ClientConnection

from core.accounts import Scope
from core.outbox import OutboxEvent
from core.runtime import Runtime
from tests.support.bookings import bearer, credential_of
from tests.support.signaling import open_socket, receive_type

ORIGIN = "http://testserver"


async def until_status(
    client: httpx.AsyncClient, keys: dict[Scope, str], booking_id: uuid.UUID | str, status: str,
    *, within_s: float = 30,
) -> dict[str, Any]:
    """Poll `GET /v1/bookings/{id}` until the booking has `status`; the booking then."""
    deadline = asyncio.get_running_loop().time() + within_s
    while True:
        response = await client.get(
            f"/v1/bookings/{booking_id}", headers=bearer(keys[Scope.SCHEDULER])
        )
        assert response.status_code == 200, response.text
        booking: dict[str, Any] = response.json()
        if booking["status"] == status:
            return booking
        if asyncio.get_running_loop().time() > deadline:
            raise AssertionError(f"booking stayed {booking['status']}, never {status}")
        await asyncio.sleep(0.05)


async def outbox_types(runtime: Runtime, booking_id: uuid.UUID | str) -> list[str]:
    """The event types written to the outbox for the booking, in order."""
    async with runtime.db.session() as session:
        query = (
            select(OutboxEvent.type)
            .where(OutboxEvent.booking_id == uuid.UUID(str(booking_id)))
            .order_by(OutboxEvent.seq)
        )
        return list((await session.scalars(query)).all())


async def enter(
    client: httpx.AsyncClient, ws_base: str, person: dict[str, Any]
) -> ClientConnection:
    """Join as the page does: `POST /v1/join` with the link's credential, then the socket."""
    grant = await client.post("/v1/join", json={"credential": credential_of(person)})
    assert grant.status_code == 200, grant.text
    builtin = grant.json()["builtin"]
    room = builtin["ws_url"].split("/v1/rooms/", 1)[1].removesuffix("/ws")
    ws = await open_socket(ws_base, room, builtin["ticket"], ORIGIN)
    await receive_type(ws, "welcome")
    return ws
