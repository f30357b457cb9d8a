"""A withdrawal stops the person's egresses at once, on the path that committed it.

The node that commits a withdrawal (or a denial) of a recording purpose starts the stop from
the ledger writer's after-commit hook (`consent.writer.LedgerWriter.watch`, the hook the live
gate's integrity witness uses), before the `consent.changed` event is even published: one
statement moves the person's live egresses of that kind to `ending` and returns their ids (the
stored state says stopping before any request leaves), then one StopEgress each, concurrently,
on the Egress client's kept-alive connections. Nothing waits behind other work of the node.

Every other node hears the event and starts the same stop as soon as the event arrives (ahead
of its in-order handling); the update finds nothing left to move there, so each egress is
stopped once. The in-order handling of each event awaits that event's stop before it
reconciles the room, so a grant that follows a withdrawal still starts a new egress after the
old one was stopped. What a lost event or a failed request leaves is caught by the minute's
audit (`Egress.audit`).
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Awaitable, Callable

import structlog

from consent.ledger import Entry
from consent.writer import ledger_writer
from core.purposes import Decision, Purpose
from core.runtime import Runtime
from media.egress import records
from media.recordings import TrackKind

log = structlog.get_logger(__name__)

STOPPING = (Decision.DENIED, Decision.WITHDRAWN)
Stop = Callable[[str], Awaitable[bool]]


def stops(purpose: Purpose, decision: Decision) -> bool:
    return purpose.is_recording and decision in STOPPING


class Withdrawals:
    """The stops in flight, by ledger entry (the commit hook's and the event's are one)."""

    def __init__(self, runtime: Runtime, stop: Stop) -> None:
        self._runtime = runtime
        self._stop = stop
        self._running: dict[uuid.UUID, asyncio.Task[None]] = {}
        self._open = False
        self._watching = False

    def open(self) -> None:
        """Start following this process's commits (the hook stays; closed, it does nothing)."""
        if not self._watching:
            ledger_writer(self._runtime).watch(self._committed)
            self._watching = True
        self._open = True

    async def close(self) -> None:
        self._open = False
        running = list(self._running.values())
        if running:  # a stop already asked for is finished, not cut off
            await asyncio.gather(*running, return_exceptions=True)

    def _committed(self, entries: list[Entry]) -> None:
        """The ledger writer's hook, right after a commit; it must never raise."""
        if not self._open:
            return
        for entry in entries:
            try:
                if stops(entry.purpose, entry.decision):
                    self.begin(entry.id, entry.booking_id, entry.subject_id, entry.purpose)
            except Exception:  # the event path stops it instead
                log.exception("egress.withdrawal_not_started")

    def begin(
        self, entry_id: uuid.UUID, booking_id: uuid.UUID, subject_id: uuid.UUID,
        purpose: Purpose,
    ) -> asyncio.Task[None]:
        """The stop for ledger entry `entry_id`, started now unless it already is."""
        task = self._running.get(entry_id)
        if task is None:
            task = asyncio.create_task(
                self.withdraw(booking_id, subject_id, purpose), name="egress-withdrawal"
            )
            self._running[entry_id] = task
            task.add_done_callback(lambda _t: self._running.pop(entry_id, None))
        return task

    def running(self, entry_id: uuid.UUID) -> asyncio.Task[None] | None:
        return self._running.get(entry_id)

    async def withdraw(
        self, booking_id: uuid.UUID, subject_id: uuid.UUID, purpose: Purpose
    ) -> None:
        """Stop the person's egresses for `purpose`: no gate, no LiveKit round trip first
        (stopping is always safe); those still unnamed are stopped by the node naming them."""
        kind = TrackKind.AUDIO if purpose is Purpose.RECORDING_AUDIO else TrackKind.VIDEO
        now = self._runtime.clock.now()
        ids = await records.take_over_person(self._runtime.db, booking_id, subject_id, kind, now)
        await asyncio.gather(*(self._stop(egress_id) for egress_id in ids))
