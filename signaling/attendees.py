"""Telling the rest of callgate who arrived in and who left a room on this node.

Who is in a room matters to consent (`all_or_nothing` recording counts them, through
`participant.joined` / `participant.left` on the bus) and to attendance (stored by
`signaling.attendance`, idempotent when several nodes report the same leave). The hub
(`signaling.hub`) decides when someone arrived or left; this only tells, off the socket's path.
"""

from __future__ import annotations

import uuid
from collections import deque
from collections.abc import Awaitable, Callable, Coroutine
from datetime import datetime
from typing import Any, Generic, TypeVar

import structlog

from core.bus import publish_all
from core.events import ParticipantJoined, ParticipantLeft
from core.runtime import Runtime
from signaling.attendance import LeaveHow, do_mark_joined, do_mark_left
from signaling.protocol import ByeReason, CloseCode

log = structlog.get_logger(__name__)

T = TypeVar("T")
Spawn = Callable[[Coroutine[Any, Any, None]], None]
Told = ParticipantJoined | ParticipantLeft


def leave_how(ending: ByeReason | int | None) -> LeaveHow:
    """How a socket's ending reads in attendance."""
    if ending == CloseCode.NORMAL.value:  # only the person's own `bye` closes with 1000 here
        return LeaveHow.LEFT
    return LeaveHow.REMOVED if ending is ByeReason.REMOVED else LeaveHow.DROPPED


class _Queue(Generic[T]):
    """Items handled one at a time, in order, by a task that exists only while there are any."""

    __slots__ = ("_handle", "_items", "_running", "_spawn")

    def __init__(self, spawn: Spawn, handle: Callable[[T], Awaitable[None]]) -> None:
        self._spawn = spawn
        self._handle = handle
        self._items: deque[T] = deque()
        self._running = False

    def put(self, item: T) -> None:
        self._items.append(item)
        if not self._running:
            self._running = True
            self._spawn(self._drain())

    async def _drain(self) -> None:
        try:
            while self._items:
                await self._handle(self._items.popleft())
        finally:
            self._running = False


class Attendees:
    """Publishes arrivals and departures and stores them, each in the order they happened.

    Two queues, each drained by one task while it has work: a burst of a thousand joins is a
    thousand rows written one after another, and a task (coroutine, frame, lock waiter) per
    pending row cost memory and CPU beside the sockets. The bus events do not wait behind
    the rows."""

    def __init__(self, runtime: Runtime, spawn: Spawn) -> None:
        self._runtime = runtime
        self._published: _Queue[Told] = _Queue(spawn, self._publish)
        self._stored: _Queue[tuple[Told, LeaveHow, datetime]] = _Queue(spawn, self._store)

    def joined(self, booking_id: str, pid: str) -> None:
        self._tell(ParticipantJoined, booking_id, pid, LeaveHow.DROPPED)

    def left(self, booking_id: str, pid: str, how: LeaveHow = LeaveHow.DROPPED) -> None:
        self._tell(ParticipantLeft, booking_id, pid, how)

    def _tell(self, kind: type[Told], booking_id: str, pid: str, how: LeaveHow) -> None:
        event = kind(booking_id=uuid.UUID(booking_id), participant_id=uuid.UUID(pid))
        self._published.put(event)
        self._stored.put((event, how, self._runtime.clock.now()))

    async def _publish(self, event: Told) -> None:
        await publish_all(self._runtime.bus, [event])

    async def _store(self, item: tuple[Told, LeaveHow, datetime]) -> None:
        (event, how, at), rt = item, self._runtime
        booking, person = event.booking_id, event.participant_id
        try:
            if isinstance(event, ParticipantJoined):
                await do_mark_joined(rt, booking, person, at)
            else:
                await do_mark_left(rt, booking, person, at, how)
        except Exception:  # a database outage must not take the room down
            log.exception("signaling.attendance_failed", booking_id=str(booking))
