"""The recording switch of each booking: on or off, shared by every node and kept over restarts.

The database holds the switch (`media.recordings.RecordingControl`); each node caches the
answer per booking, reads it on first use and keeps it current from `recording.changed`
events. The built-in recorder and LiveKit Egress both ask this service whether a booking is
being recorded; the people in it are still each asked at every frame (the consent gate).
"""

from __future__ import annotations

import uuid
from collections.abc import Callable

from core.bus import BusEvent
from core.events import RecordingSwitched
from core.runtime import Runtime
from media.gate import GateSource
from media.recordings import do_set_recording_on, read_recording_on

Listener = Callable[[uuid.UUID, bool], None]


class RecordingSwitch:
    """Start, stop and ask about recording per booking (`is_active` is this node's cache)."""

    def __init__(self, runtime: Runtime, gate: GateSource) -> None:
        self._runtime = runtime
        self._gate = gate
        self._active: set[uuid.UUID] = set()
        self._listeners: list[Listener] = []

    def watch(self, listener: Listener) -> None:
        """Call `listener(booking_id, on)` whenever this node learns of a change (or a read
        finds the switch off), e.g. to close open files at once."""
        self._listeners.append(listener)

    def is_active(self, booking_id: uuid.UUID) -> bool:
        """This node's cached answer (read on first use, kept current by the bus)."""
        return booking_id in self._active

    async def recording_on(self, booking_id: uuid.UUID) -> bool:
        """The database's answer (shared by every node, kept over restarts); refreshes the cache."""
        async with self._runtime.db.session() as session:
            on = await read_recording_on(session, booking_id)
        self._apply(booking_id, on)
        return on

    async def load(self, booking_id: uuid.UUID) -> bool:
        """Ready a booking for capture: the gate's decisions first, then the switch."""
        gate = self._gate()
        if gate is not None:
            await gate.ensure_booking(booking_id)
        return await self.recording_on(booking_id)

    async def start(self, booking_id: uuid.UUID, by: str = "system") -> None:
        """Start recording a booking (its people are still each asked at every frame)."""
        await self._set(booking_id, True, by)

    async def stop(self, booking_id: uuid.UUID, by: str = "system") -> None:
        await self._set(booking_id, False, by)

    async def _set(self, booking_id: uuid.UUID, on: bool, by: str) -> None:
        gate = self._gate()
        if gate is not None:
            await gate.ensure_booking(booking_id)
        async with self._runtime.db.session() as session:
            await do_set_recording_on(session, booking_id, on, by, self._runtime.clock.now())
        self._apply(booking_id, on)
        await self._runtime.bus.publish(
            RecordingSwitched(booking_id=booking_id, control="started" if on else "stopped")
        )

    def on_event(self, event: BusEvent) -> bool:
        """Apply a switch event (`RecordingSwitched`) from any node; False for other events."""
        if not isinstance(event, RecordingSwitched):
            return False
        self._apply(event.booking_id, event.control == "started")
        return True

    def _apply(self, booking_id: uuid.UUID, on: bool) -> None:
        if on:
            self._active.add(booking_id)
        else:
            self._active.discard(booking_id)
        for listener in self._listeners:
            listener(booking_id, on)
