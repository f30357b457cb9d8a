"""Telling the rest of callgate who arrived in and who left a room on this node.

Who is in a room matters to consent (`all_or_nothing` recording counts them, through
`participant.joined` / `participant.left` on the bus) and to attendance (stored by
`signaling.attendance`, idempotent when several nodes report the same leave). The hub
(`signaling.hub`) decides when someone arrived or left; this only tells, off the socket's path.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Callable, Coroutine
from datetime import datetime
from typing import Any

import structlog

from core.bus import publish_all
from core.events import ParticipantJoined, ParticipantLeft
from core.runtime import Runtime
from signaling.attendance import LeaveHow, do_mark_joined, do_mark_left
from signaling.protocol import ByeReason, CloseCode

log = structlog.get_logger(__name__)


def leave_how(ending: ByeReason | int | None) -> LeaveHow:
    """How a socket's ending reads in attendance."""
    if ending == CloseCode.NORMAL.value:  # only the person's own `bye` closes with 1000 here
        return LeaveHow.LEFT
    return LeaveHow.REMOVED if ending is ByeReason.REMOVED else LeaveHow.DROPPED


class Attendees:
    """Publishes arrivals and departures and stores them, in the order they happened."""

    def __init__(
        self, runtime: Runtime, spawn: Callable[[Coroutine[Any, Any, None]], None]
    ) -> None:
        self._runtime = runtime
        self._spawn = spawn
        self._storing = asyncio.Lock()  # FIFO: a join is stored before the leave after it

    def joined(self, booking_id: str, pid: str) -> None:
        self._tell(ParticipantJoined, booking_id, pid, LeaveHow.DROPPED)

    def left(self, booking_id: str, pid: str, how: LeaveHow = LeaveHow.DROPPED) -> None:
        self._tell(ParticipantLeft, booking_id, pid, how)

    def _tell(
        self, kind: type[ParticipantJoined | ParticipantLeft], booking_id: str, pid: str,
        how: LeaveHow,
    ) -> None:
        event = kind(booking_id=uuid.UUID(booking_id), participant_id=uuid.UUID(pid))
        self._spawn(publish_all(self._runtime.bus, [event]))
        self._spawn(self._store(event, how, self._runtime.clock.now()))

    async def _store(
        self, event: ParticipantJoined | ParticipantLeft, how: LeaveHow, at: datetime
    ) -> None:
        rt, booking, person = self._runtime, event.booking_id, event.participant_id
        try:
            async with self._storing:
                if isinstance(event, ParticipantJoined):
                    await do_mark_joined(rt, booking, person, at)
                else:
                    await do_mark_left(rt, booking, person, at, how)
        except Exception:  # a database outage must not take the room down
            log.exception("signaling.attendance_failed", booking_id=str(booking))
