"""A withdrawal stops the person's egresses at once, on the path that committed it.

The node that commits a withdrawal (or a denial) of a recording purpose starts the stop from
the ledger writer's after-commit hook (`consent.writer.LedgerWriter.watch`, the hook the live
gate's integrity witness uses), before the `consent.changed` event is even published. The
egresses of that person and kind this node knows (it started them, or read them live in a
reconcile: every one of them predates the withdrawal, so every one must stop) get their
StopEgress at once, on the Egress client's kept-alive connections; beside it one statement
moves the person's live egresses of that kind to `ending` in the database and returns them,
and those this node did not know are stopped next. One whose LiveKit id was never stored (the
node that started it died between LiveKit's answer and storing the id) is found in LiveKit's
list of the room's egresses by its file name, which holds the row's id. Nothing waits behind
other work of the node, nor for a database lock (SQLite's write lock can take hundreds of
milliseconds to get under load). A stop may so reach Egress twice (from the committing node
and from the node whose update moved the row); Egress answers the second "not running", which
is what was wanted.

Every other node hears the event and starts the same stop as soon as the event arrives (ahead
of its in-order handling): what it knows at once, and what the update still finds live. The
in-order handling of each event awaits that event's stop before it reconciles the room, so a
grant that follows a withdrawal still starts a new egress after the old one was stopped. What
a lost event or a failed request leaves is caught by the minute's audit (`Egress.audit`).
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Callable, Coroutine
from typing import Any

import structlog

from consent.ledger import Entry
from consent.writer import ledger_writer
from core.purposes import Decision, Purpose
from core.runtime import Runtime
from media.egress import records
from media.recordings import TrackKind

log = structlog.get_logger(__name__)

STOPPING = (Decision.DENIED, Decision.WITHDRAWN)
Stop = Callable[[str], Coroutine[Any, Any, bool]]
StopUnnamed = Callable[[uuid.UUID, str], Coroutine[Any, Any, None]]


def stops(purpose: Purpose, decision: Decision) -> bool:
    return purpose.is_recording and decision in STOPPING


class Withdrawals:
    """The stops in flight, by ledger entry (the commit hook's and the event's are one)."""

    def __init__(self, runtime: Runtime, stop: Stop, stop_unnamed: StopUnnamed) -> None:
        self._runtime = runtime
        self._stop = stop
        self._stop_unnamed = stop_unnamed
        self._running: dict[uuid.UUID, asyncio.Task[None]] = {}
        self._known: dict[str, tuple[uuid.UUID, uuid.UUID, TrackKind]] = {}  # live, by egress id
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
                    known = self.take_known(entry.booking_id, entry.subject_id, entry.purpose)
                    self.begin(
                        entry.id, entry.booking_id, entry.subject_id, entry.purpose, known
                    )
            except Exception:  # the event path stops it instead
                log.exception("egress.withdrawal_not_started")

    def saw(self, record: records.EgressRecord) -> None:
        """A live, named egress this node started or read (what the commit hook may stop)."""
        if record.egress_id and record.state in records.LIVE:
            key = (record.booking_id, record.participant_id, record.kind)
            self._known[record.egress_id] = key

    def ended(self, egress_id: str) -> None:
        self._known.pop(egress_id, None)

    def keep(self, live: set[str]) -> None:
        """Forget what LiveKit no longer runs (the audit's list)."""
        for egress_id in [e for e in self._known if e not in live]:
            del self._known[egress_id]

    def take_known(
        self, booking_id: uuid.UUID, subject_id: uuid.UUID, purpose: Purpose
    ) -> list[str]:
        """The live egresses of that person and purpose this node knows, forgotten (a
        withdrawal is stopping them)."""
        key = (booking_id, subject_id, _kind(purpose))
        found = [egress_id for egress_id, of in self._known.items() if of == key]
        for egress_id in found:
            del self._known[egress_id]
        return found

    def begin(
        self, entry_id: uuid.UUID, booking_id: uuid.UUID, subject_id: uuid.UUID,
        purpose: Purpose, known: list[str] | None = None,
    ) -> asyncio.Task[None]:
        """The stop for ledger entry `entry_id`, started now unless it already is; `known`:
        egress ids to stop without waiting for the database (the commit hook's)."""
        task = self._running.get(entry_id)
        if task is None:
            task = asyncio.create_task(
                self._guarded(booking_id, subject_id, purpose, known or []),
                name="egress-withdrawal",
            )
            self._running[entry_id] = task
            task.add_done_callback(lambda _t: self._running.pop(entry_id, None))
        return task

    async def _guarded(
        self, booking_id: uuid.UUID, subject_id: uuid.UUID, purpose: Purpose, known: list[str]
    ) -> None:
        try:
            await self.withdraw(booking_id, subject_id, purpose, known)
        except Exception:  # a task boundary: the event's reconcile and the audit follow
            log.exception("egress.withdrawal_failed")

    async def withdraw(
        self, booking_id: uuid.UUID, subject_id: uuid.UUID, purpose: Purpose,
        known: list[str] | None = None,
    ) -> None:
        """Stop the person's egresses for `purpose`: those `known` at once, and beside it every
        live one stored (moved to `ending`); no gate, no LiveKit round trip first (stopping is
        always safe). One still unnamed (its node may have died before storing LiveKit's id)
        is looked up in LiveKit and stopped too (`EgressControl.stop_unnamed`)."""
        known = known or []
        first = [asyncio.create_task(self._stop(egress_id)) for egress_id in known]
        now = self._runtime.clock.now()
        try:
            taken = await records.take_over_person(
                self._runtime.db, booking_id, subject_id, _kind(purpose), now
            )
        except Exception:  # the stops already sent stand (the audit finishes the rows)
            await asyncio.gather(*first, return_exceptions=True)
            raise
        rest = [
            self._stop(t.egress_id) for t in taken if t.egress_id and t.egress_id not in known
        ]
        unnamed = [self._stop_unnamed(t.record_id, t.room_name) for t in taken if not t.egress_id]
        await asyncio.gather(*first, *rest, *unnamed)

def _kind(purpose: Purpose) -> TrackKind:
    return TrackKind.AUDIO if purpose is Purpose.RECORDING_AUDIO else TrackKind.VIDEO
