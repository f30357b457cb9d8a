"""Bookings, tickets and sockets for signaling tests (integration, multi-node, benchmark).

Creates bookings straight in the database (as the bookings API would) and mints tickets
with `signaling.tickets.issue_ticket`, so signaling is tested on its own.
"""

from __future__ import annotations

import asyncio
import json
import secrets
import uuid
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy.ext.asyncio import AsyncSession
from websockets.asyncio.client import ClientConnection, connect
from websockets.typing import Origin

from core.bookings import Booking, BookingStatus, Participant, Role, RoomState
from core.crypto import Keyring
from core.database import Database
from core.purposes import Purpose, RecordingAccess, RecordingPolicy
from signaling.credentials import credential_hash, join_credential
from signaling.tickets import issue_ticket
from tests.support.waiting import DEADLINE_S


@dataclass(frozen=True)
class Person:
    id: uuid.UUID
    name: str
    credential: str


@dataclass(frozen=True)
class Seeded:
    booking_id: uuid.UUID
    room: str
    people: list[Person]

    @property
    def host(self) -> Person:
        return self.people[0]

    @property
    def client(self) -> Person:
        return self.people[1]


async def seed_booking(
    db: Database, keys: Keyring, now: datetime, *, starts_in: timedelta = timedelta(0),
    length: timedelta = timedelta(hours=1), clients: int = 1,
    purposes: tuple[Purpose, ...] = (Purpose.RECORDING_AUDIO, Purpose.RECORDING_VIDEO),
    access: RecordingAccess = RecordingAccess.OWN,
) -> Seeded:
    """A scheduled booking starting `starts_in` from `now`, with a host and `clients`."""
    async with db.session() as session:
        return await add_booking(
            session, keys, now, now + starts_in, length, clients, purposes, access=access
        )


async def seed_bookings(db: Database, keys: Keyring, now: datetime, count: int) -> list[Seeded]:
    """`count` bookings of a host and one client, open now, in one transaction."""
    purposes = (Purpose.RECORDING_AUDIO, Purpose.RECORDING_VIDEO)
    async with db.session() as session:
        return [
            await add_booking(session, keys, now, now, timedelta(hours=1), 1, purposes)
            for _ in range(count)
        ]


async def add_booking(
    session: AsyncSession, keys: Keyring, now: datetime, starts_at: datetime,
    length: timedelta, clients: int, purposes: tuple[Purpose, ...],
    access: RecordingAccess = RecordingAccess.OWN,
) -> Seeded:
    booking_id = uuid.uuid4()
    room = secrets.token_urlsafe(24)
    people: list[Person] = []
    session.add(
        Booking(
            id=booking_id, title="Signaling test", language="en", starts_at=starts_at,
            ends_at=starts_at + length, status=BookingStatus.SCHEDULED,
            recording_policy=RecordingPolicy.PER_PARTICIPANT, recording_access=access,
            requested_purposes=[p.value for p in purposes], record_automatically=False,
            room_name=room, room_state=RoomState.NOT_NEEDED, created_by="test",
            created_at=now, updated_at=now,
        )
    )
    await session.flush()
    for position in range(clients + 1):
        pid = uuid.uuid4()
        credential = join_credential(keys, pid, 0)
        name = "Host" if position == 0 else f"Client {position}"
        session.add(
            Participant(
                id=pid, booking_id=booking_id, position=position,
                external_id=f"ext-{position}", display_name=name,
                role=Role.HOST if position == 0 else Role.CLIENT, adult=True,
                credential_hash=credential_hash(credential), created_at=now,
            )
        )
        people.append(Person(pid, name, credential))
    return Seeded(booking_id, room, people)


def ticket_for(keys: Keyring, seeded: Seeded, person: Person, now: datetime) -> str:
    return issue_ticket(keys, person.id, seeded.booking_id, 0, now + timedelta(seconds=60))


async def open_socket(
    ws_base: str, room: str, ticket: str, origin: str, **kwargs: Any
) -> ClientConnection:
    url = f"{ws_base}/v1/rooms/{room}/ws?ticket={ticket}"
    return await connect(url, origin=Origin(origin), open_timeout=10, proxy=None, **kwargs)


async def receive(ws: ClientConnection, wait_s: float = DEADLINE_S) -> dict[str, Any]:
    raw = await asyncio.wait_for(ws.recv(), wait_s)
    message: dict[str, Any] = json.loads(raw)
    return message


async def receive_type(
    ws: ClientConnection, kind: str, wait_s: float = DEADLINE_S
) -> dict[str, Any]:
    """The next message of type `kind`, skipping others."""
    async with asyncio.timeout(wait_s):
        while True:
            message = await receive(ws, wait_s)
            if message["type"] == kind:
                return message


async def until_pong(ws: ClientConnection) -> list[dict[str, Any]]:
    """Send a ping and return every message received before its pong (what the page saw)."""
    await ws.send(json.dumps({"type": "ping"}))
    seen: list[dict[str, Any]] = []
    while True:
        message = await receive(ws)
        if message["type"] == "pong":
            return seen
        seen.append(message)
