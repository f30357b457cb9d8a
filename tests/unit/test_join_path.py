"""The join path's own pieces: the LiveKit token signed without livekit-api's AccessToken, and
the join reader's connections (handed over, waited for, dropped after failures)."""

from __future__ import annotations

import asyncio
import time
from datetime import timedelta
from typing import Any

import jwt
import pytest
from livekit import api as lk

from core.bookings import Role
from signaling.connections import Connections
from signaling.credentials import livekit_token
from signaling.livekit import room_grants

KEY, SECRET = "APIunit", "unit-secret-" + "u" * 32
ROOM = "cg-4f9c1d2e8a7b6c5d4e3f2a1b0c9d8e7f"
IDENTITY = "0b8f6f5e-3f0e-4f43-9a55-2f1a3e0c9d11"


def claims_of(token: str) -> dict[str, Any]:
    decoded: dict[str, Any] = jwt.decode(token, options={"verify_signature": False})
    return decoded


@pytest.mark.parametrize("role", list(Role))
@pytest.mark.parametrize("name", ["Ada Lovelace", "Zoë Ünïcode 😀", ""])
def test_token_carries_what_access_token_writes(role: Role, name: str) -> None:
    now = int(time.time())
    ours = livekit_token(
        KEY, SECRET, identity=IDENTITY, name=name, role=role, room=ROOM,
        not_before=now, expires=now + 3600,
    )
    reference = (
        lk.AccessToken(KEY, SECRET).with_identity(IDENTITY).with_name(name)
        .with_grants(room_grants(role, ROOM)).with_ttl(timedelta(hours=1))
        .with_attributes({"callgate.generation": "0"}).to_jwt()
    )
    mine, theirs = claims_of(ours), claims_of(reference)
    assert abs(theirs.pop("nbf") - mine.pop("nbf")) <= 1
    assert abs(theirs.pop("exp") - mine.pop("exp")) <= 1
    assert mine == theirs
    assert jwt.get_unverified_header(ours) == jwt.get_unverified_header(reference)
    verified = lk.TokenVerifier(KEY, SECRET).verify(ours)
    assert verified.identity == IDENTITY
    assert verified.video is not None
    assert verified.video.room == ROOM
    assert bool(verified.video.room_admin) is (role is Role.HOST)


def test_token_signed_with_another_secret_is_refused() -> None:
    now = int(time.time())
    forged = livekit_token(
        KEY, "another-secret-" + "x" * 32, identity=IDENTITY, name="A", role=Role.HOST,
        room=ROOM, not_before=now, expires=now + 60,
    )
    with pytest.raises(jwt.InvalidSignatureError):
        lk.TokenVerifier(KEY, SECRET).verify(forged)


def test_token_needs_identity_and_room() -> None:
    with pytest.raises(ValueError, match="identity and room"):
        livekit_token(KEY, SECRET, identity=IDENTITY, name="A", role=Role.CLIENT, room="",
                      not_before=0, expires=60)


class FakeConnection:
    """Answers `fetchrow` once `release` is set (or at once), or fails when told to."""

    opened = 0
    start_held = False

    def __init__(self) -> None:
        FakeConnection.opened += 1
        self.number = FakeConnection.opened
        self.closed = False
        self.fail = False
        self.release = asyncio.Event()
        if not FakeConnection.start_held:
            self.release.set()

    async def fetchrow(self, sql: str, *args: Any) -> Any:
        await self.release.wait()
        if self.fail:
            raise ConnectionResetError("connection lost")
        return (self.number, sql, *args)

    def is_closed(self) -> bool:
        return self.closed

    def terminate(self) -> None:
        self.closed = True

    async def close(self, **_: object) -> None:  # asyncpg: close(timeout=...)
        self.closed = True


@pytest.fixture
def opened() -> list[FakeConnection]:
    FakeConnection.opened = 0
    FakeConnection.start_held = False
    return []


def connections(opened: list[FakeConnection], size: int) -> Connections:
    async def connect() -> FakeConnection:
        conn = FakeConnection()
        opened.append(conn)
        return conn

    return Connections(connect, size)


async def test_connections_are_reused_and_bounded(opened: list[FakeConnection]) -> None:
    pool = connections(opened, 2)
    assert await pool.fetchrow("q", 1) == (1, "q", 1)
    assert await pool.fetchrow("q", 2) == (1, "q", 2)  # the same connection again
    opened[0].release.clear()
    FakeConnection.start_held = True
    busy = [asyncio.create_task(pool.fetchrow("q", n)) for n in range(3)]
    for _ in range(20):
        await asyncio.sleep(0)
    assert len(opened) == 2  # the third waits rather than open a third connection
    assert not any(task.done() for task in busy)
    for conn in opened:
        conn.release.set()
    results = await asyncio.gather(*busy)
    assert sorted(number for number, *_ in results) in ([1, 1, 2], [1, 2, 2])
    await pool.close()
    assert all(conn.closed for conn in opened)


async def test_a_failed_query_drops_its_connection(opened: list[FakeConnection]) -> None:
    pool = connections(opened, 1)
    await pool.fetchrow("q")
    opened[0].fail = True
    with pytest.raises(ConnectionResetError):
        await pool.fetchrow("q")
    assert opened[0].closed
    assert await pool.fetchrow("q") == (2, "q")  # a new connection in the freed slot


async def test_a_waiter_gets_the_slot_of_a_dropped_connection(
    opened: list[FakeConnection],
) -> None:
    pool = connections(opened, 1)
    await pool.fetchrow("q")
    opened[0].release.clear()
    opened[0].fail = True
    failing = asyncio.create_task(pool.fetchrow("q", "a"))
    waiting = asyncio.create_task(pool.fetchrow("q", "b"))
    for _ in range(20):
        await asyncio.sleep(0)
    opened[0].release.set()
    with pytest.raises(ConnectionResetError):
        await failing
    assert await waiting == (2, "q", "b")


async def test_a_cancelled_waiter_leaves_nothing_behind(opened: list[FakeConnection]) -> None:
    pool = connections(opened, 1)
    await pool.fetchrow("q")
    opened[0].release.clear()
    holder = asyncio.create_task(pool.fetchrow("q", "held"))
    waiter = asyncio.create_task(pool.fetchrow("q", "gives up"))
    for _ in range(20):
        await asyncio.sleep(0)
    waiter.cancel()
    opened[0].release.set()
    assert await holder == (1, "q", "held")
    with pytest.raises(asyncio.CancelledError):
        await waiter
    assert await pool.fetchrow("q", "later") == (1, "q", "later")
    assert len(opened) == 1


async def test_expire_replaces_every_connection(opened: list[FakeConnection]) -> None:
    pool = connections(opened, 2)
    await pool.fetchrow("q")
    opened[0].release.clear()
    in_flight = asyncio.create_task(pool.fetchrow("q", "during"))
    for _ in range(20):
        await asyncio.sleep(0)
    pool.expire()
    opened[0].release.set()
    assert await in_flight == (1, "q", "during")
    assert opened[0].closed  # returned after the expiry: dropped, not reused
    assert (await pool.fetchrow("q"))[0] == 2
