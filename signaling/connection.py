"""One admitted signaling socket: its bounded queue and the writer that drains it.

A message for an idle socket is sent at once; only when the socket makes a send wait does the
connection keep a writer task, so a slow browser never stalls the room that broadcasts to it.
The hub (`signaling.hub`) owns the connections; it knows them only through this class.
"""

from __future__ import annotations

import asyncio
import contextlib
import secrets
import time
from collections import deque
from collections.abc import Coroutine, Generator
from dataclasses import dataclass
from typing import Any, Protocol

from signaling.protocol import Bye, ByeReason, CloseCode, Peer, encode, signal_envelope

QUEUE_LIMIT = 512

BYE_CLOSE = {
    ByeReason.WINDOW_CLOSED: CloseCode.NORMAL,
    ByeReason.BOOKING_CANCELLED: CloseCode.CANCELLED,
    ByeReason.REMOVED: CloseCode.FORBIDDEN,
    ByeReason.REPLACED: CloseCode.REPLACED,
    ByeReason.IDLE: CloseCode.GOING_AWAY,
    ByeReason.REVOKED: CloseCode.BAD_TICKET,
    ByeReason.ERASED: CloseCode.CANCELLED,
}


class Transport(Protocol):
    """The socket under a connection (a Starlette WebSocket in production)."""

    async def send_text(self, data: str) -> None: ...

    async def close(self, code: int = 1000, reason: str | None = None) -> None: ...


@dataclass(frozen=True)
class _Close:
    code: int
    reason: str


class _Resumed:
    """A coroutine stepped by hand that is now waiting on `waiting_on`: awaiting this runs the
    rest of it in the awaiting task, as if that task had started it (the PEP 492 protocol:
    pass what it yields up to the event loop, and what the loop sends or throws back down)."""

    __slots__ = ("_coro", "_waiting_on")

    def __init__(self, coro: Coroutine[Any, Any, None], waiting_on: Any) -> None:
        self._coro = coro
        self._waiting_on = waiting_on

    def __await__(self) -> Generator[Any, Any, None]:
        value = self._waiting_on
        while True:
            try:
                sent = yield value
            except GeneratorExit:
                self._coro.close()
                raise
            except BaseException as exc:  # a cancellation, thrown in by the task
                try:
                    value = self._coro.throw(exc)
                except StopIteration:
                    return
                continue
            try:
                value = self._coro.send(sent)
            except StopIteration:
                return


class Connection:
    """One admitted socket. `finish()` is idempotent: queued messages go out, then the close.

    A message for an idle socket is handed to it at once, without a task; only when the
    socket makes a send wait do later messages queue in a small deque, drained by a writer
    task that exists only while there is something to send, so an idle connection costs no
    task (memory per idle socket is a benchmark goal, docs/performance.md)."""

    __slots__ = (
        "_burst", "_outbox", "_rate", "_stamp", "_tokens", "_writer", "ending", "envelope", "id",
        "last_seen", "peer", "room", "transport",
    )

    def __init__(self, transport: Transport, room: str, peer: Peer, rate_per_s: float) -> None:
        self.id = secrets.token_hex(8)
        self.room = room
        self.peer = peer
        self.envelope = signal_envelope(peer.id)  # what this person's relayed signals start with
        self.transport = transport
        self.ending: ByeReason | int | None = None
        self.last_seen = time.monotonic()
        self._rate = rate_per_s
        self._burst = rate_per_s * 2
        self._tokens = self._burst
        self._stamp = self.last_seen
        self._outbox: deque[str | _Close] | None = None  # made when a send first has to wait
        self._writer: asyncio.Task[None] | None = None

    def send(self, text: str) -> None:
        if self.ending is not None:
            return
        if self._writer is None and not self._outbox:
            self._send_now(text)
            return
        if self._outbox is not None and len(self._outbox) >= QUEUE_LIMIT:
            # a browser that does not read: drop it
            self.finish(CloseCode.POLICY, "not reading")
            return
        self._push(text)

    def _push(self, item: str | _Close) -> None:
        if self._outbox is None:
            self._outbox = deque()
        self._outbox.append(item)
        if self._writer is None:
            self._writer = asyncio.get_running_loop().create_task(self._drain())

    def _send_now(self, text: str) -> None:
        """Nothing is queued: run the transport's send here, without a task (a task per
        relayed message was a measurable part of the relay's CPU). It normally completes at
        once; if it has to wait (the socket's buffer is full), a writer task takes it over
        and finishes it before anything queued after it."""
        sending = self.transport.send_text(text)
        try:
            waiting_on = sending.send(None)
        except StopIteration:
            return
        except Exception:  # the socket went away; the reader side notices and detaches
            return
        resumed = _Resumed(sending, waiting_on)
        self._writer = asyncio.get_running_loop().create_task(self._drain(resumed))

    def finish(self, how: ByeReason | int, reason: str = "") -> None:
        """Close after what is queued: with a `bye` first when `how` is a ByeReason."""
        if self.ending is not None:
            return
        code = how if isinstance(how, int) else CloseCode.NORMAL.value
        if isinstance(how, ByeReason):
            self._push(encode(Bye(reason=how)))
            code, reason = BYE_CLOSE[how].value, how.value
        self.ending = how
        self._push(_Close(code, reason))

    def allow(self) -> bool:
        """Token bucket: `rate` messages per second sustained, bursts of twice that."""
        now = time.monotonic()
        self.last_seen = now
        self._tokens = min(self._burst, self._tokens + (now - self._stamp) * self._rate)
        self._stamp = now
        if self._tokens < 1:
            return False
        self._tokens -= 1
        return True

    async def _drain(self, started: _Resumed | None = None) -> None:
        try:
            if started is not None:
                await started
            outbox = self._outbox
            while outbox:
                item = outbox.popleft()
                if isinstance(item, _Close):
                    outbox.clear()
                    with contextlib.suppress(Exception):
                        await self.transport.close(item.code, item.reason)
                    return
                await self.transport.send_text(item)
            self._outbox = None  # drained: an idle socket holds no queue
        except asyncio.CancelledError:
            raise
        except Exception:  # the socket went away; the reader side notices and detaches
            # (as a dropped socket, so the reconnect grace still applies)
            self._outbox = None
        finally:
            if self._writer is asyncio.current_task():  # (not a successor after cancel())
                self._writer = None

    async def wait_closed(self) -> None:
        writer = self._writer
        if writer is not None:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await writer

    def cancel(self) -> None:
        """Drop what is queued or being sent (a writer cancelled before it ever ran would
        not clear itself)."""
        writer, self._writer = self._writer, None
        self._outbox = None
        if writer is not None:
            writer.cancel()
