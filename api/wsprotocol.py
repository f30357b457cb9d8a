"""uvicorn's WebSocket protocol (websockets-sansio) with less held per open socket.

A signaling socket stays open for the whole call and mostly idle, so what each one holds is a
benchmark goal (docs/performance.md, "Signaling relay": at most 24 KiB per idle socket).
uvicorn's protocol keeps, per socket, an `asyncio.Queue` (three deques and an Event with a
fourth, about 3 KiB) for what is usually one message at a time, an `asyncio.Event` for write
flow control, the handshake's request and answer with their headers after they are done
with, and a keepalive ping timer. This subclass keeps the same behaviour with a list and a
future in place of the queue and the event, lets go of the handshake once answered, stops
reading a socket only when several messages wait (uvicorn does after each one), and sends
no WebSocket pings: the call page pings every 15 s and the hub closes a socket that sent
nothing for `signaling_idle_timeout_s` (docs/signaling.md), which also finds dead peers.

Selected with uvicorn's `ws` setting (`callgate serve`; `--ws api.wsprotocol:SignalingProtocol`
on uvicorn's command line). It relies on the attributes of uvicorn's implementation named
here (uvicorn >= 0.50.2, pyproject.toml).
"""

from __future__ import annotations

import asyncio
from typing import Any

from uvicorn.protocols.websockets.websockets_sansio_impl import WebSocketsSansIOProtocol

PAUSE_AFTER = 8  # messages waiting for the app before the socket is no longer read


class _Inbox:
    """What uvicorn uses of `asyncio.Queue` (`put_nowait`, `get`, `empty`), for the one task
    that reads a socket (the ASGI app's; ASGI has one reader), without the three deques."""

    __slots__ = ("_items", "_waiter")

    def __init__(self) -> None:
        self._items: list[Any] = []
        self._waiter: asyncio.Future[None] | None = None

    def put_nowait(self, item: Any) -> None:
        self._items.append(item)
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    def empty(self) -> bool:
        return not self._items

    def __len__(self) -> int:
        return len(self._items)

    async def get(self) -> Any:
        while not self._items:
            waiter = self._waiter = asyncio.get_running_loop().create_future()
            try:
                await waiter
            finally:
                self._waiter = None
        return self._items.pop(0)


class _Writable:
    """What uvicorn uses of `asyncio.Event` for write flow control (`set`, `clear`, `wait`),
    with no deque until a send has to wait for the transport to drain."""

    __slots__ = ("_open", "_waiters")

    def __init__(self) -> None:
        self._open = True
        self._waiters: list[asyncio.Future[None]] | None = None

    def is_set(self) -> bool:
        return self._open

    def set(self) -> None:
        self._open = True
        waiters, self._waiters = self._waiters, None
        for waiter in waiters or ():
            if not waiter.done():
                waiter.set_result(None)

    def clear(self) -> None:
        self._open = False

    async def wait(self) -> bool:
        while not self._open:
            waiter = asyncio.get_running_loop().create_future()
            if self._waiters is None:
                self._waiters = []
            self._waiters.append(waiter)
            await waiter
        return True


class SignalingProtocol(WebSocketsSansIOProtocol):
    """uvicorn's websockets-sansio protocol, leaner per socket (see the module docstring)."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.queue = _Inbox()  # type: ignore[assignment]
        self.writable = _Writable()  # type: ignore[assignment]

    def send_receive_event_to_app(self) -> None:
        """uvicorn stops reading the socket after every message until the app has taken it
        (two calls into the event loop per message, and an epoll change); here only once
        `PAUSE_AFTER` messages wait, and reading resumes, as in uvicorn, once the app has
        taken them all. A flooder is closed by the hub's rate limit long before."""
        paused = self.read_paused
        self.read_paused = True  # (uvicorn pauses only when this is False)
        super().send_receive_event_to_app()
        self.read_paused = paused
        if not paused and len(self.queue) >= PAUSE_AFTER:  # type: ignore[arg-type]
            self.read_paused = True
            self.transport.pause_reading()

    def start_keepalive(self) -> None:
        """Called once the handshake's answer is written, the place to let go of it: the
        request and the answer are not read again. No pings (see the module docstring)."""
        del self.request
        del self.response
