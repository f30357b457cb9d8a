"""A signaling connection's outgoing messages: in order, none lost, whether the socket takes
them at once or makes the sender wait (a full send buffer), and a dead socket never raises
into whoever relayed to it."""

from __future__ import annotations

import asyncio

import pytest

from signaling.connection import Connection
from signaling.protocol import ByeReason, Peer


class Socket:
    """A transport whose sends wait while `open` is cleared, like a socket with a full buffer."""

    def __init__(self) -> None:
        self.sent: list[str] = []
        self.closed: tuple[int, str | None] | None = None
        self.open = asyncio.Event()
        self.open.set()
        self.broken = False

    async def send_text(self, data: str) -> None:
        await self.open.wait()
        if self.broken:
            raise ConnectionResetError("gone")
        self.sent.append(data)

    async def close(self, code: int = 1000, reason: str | None = None) -> None:
        self.closed = (code, reason)


def connection(socket: Socket) -> Connection:
    return Connection(socket, "room", Peer(id="p1", name="P", role="client"), rate_per_s=50)


async def test_messages_arrive_in_order_when_the_socket_takes_them_at_once() -> None:
    socket = Socket()
    conn = connection(socket)
    for text in ("a", "b", "c"):
        conn.send(text)
    await conn.wait_closed()
    assert socket.sent == ["a", "b", "c"]


async def test_a_socket_that_makes_the_sender_wait_still_gets_everything_in_order() -> None:
    socket = Socket()
    conn = connection(socket)
    conn.send("a")
    socket.open.clear()
    for text in ("b", "c", "d"):
        conn.send(text)  # returns at once: the relaying side never waits for this socket
    conn.finish(ByeReason.IDLE)
    assert socket.sent == ["a"]
    socket.open.set()
    await conn.wait_closed()
    assert socket.sent == ["a", "b", "c", "d", '{"type":"bye","reason":"idle"}']
    assert socket.closed == (1001, "idle")


@pytest.mark.parametrize("writer_ran", [False, True])
async def test_a_waiting_send_can_be_cancelled_and_the_connection_still_works(
    writer_ran: bool,
) -> None:
    socket = Socket()
    conn = connection(socket)
    socket.open.clear()
    conn.send("lost")
    conn.send("lost too")
    if writer_ran:
        await asyncio.sleep(0)  # one turn of the loop: the writer task is now waiting too
    conn.cancel()
    await conn.wait_closed()
    socket.open.set()
    conn.send("after")
    await conn.wait_closed()
    assert socket.sent == ["after"]


@pytest.mark.parametrize("waits", [False, True])
async def test_a_dead_socket_never_raises_into_the_sender(waits: bool) -> None:
    socket = Socket()
    socket.broken = True
    conn = connection(socket)
    if waits:
        socket.open.clear()
    conn.send("x")
    conn.send("y")
    socket.open.set()
    await conn.wait_closed()
    assert socket.sent == []
