"""Recording rows and `recording.changed` events, written in order off the frame path.

The frame path writes files synchronously and queues the database and bus work here; one task
runs it in order, so a span's row is inserted before it is completed, and a page hears of a
state change in the order it happened. A closed WebM file is finished (Duration and Cues) in a
thread beside that queue, then its row completed.
"""

from __future__ import annotations

import asyncio
import functools
import time
from collections import deque
from collections.abc import Awaitable, Callable
from datetime import datetime
from typing import Any

import structlog

from core.events import TrackRecording
from core.runtime import Runtime
from media.finalize import finalize_webm
from media.recorder.capture import PeerSession
from media.recorder.grants import GrantEntries
from media.recorder.spans import Span, SpanSummary
from media.recordings import (
    Recording,
    RecordingState,
    TrackKind,
    do_mark_ready,
    retention_of,
)
from media.storage import Storage

log = structlog.get_logger("media.recorder")

Op = Callable[[], Awaitable[None]]

FINISHING_AT_ONCE = 2


class SpanRows:
    def __init__(
        self,
        runtime: Runtime,
        store: Storage,
        grants: GrantEntries,
        spawn: Callable[[Awaitable[Any]], None],
    ) -> None:
        self._runtime = runtime
        self._store = store
        self._grants = grants
        self._spawn = spawn
        self._ops: asyncio.Queue[Op | None] = asyncio.Queue()
        self.closed_spans: deque[SpanSummary] = deque(maxlen=10_000)
        self._finishing: set[asyncio.Task[None]] = set()
        # Files finished at once (worker threads): the rest of the CPU stays with the frames.
        self._finish_slots = asyncio.Semaphore(FINISHING_AT_ONCE)

    def put(self, op: Op) -> None:
        self._ops.put_nowait(op)

    async def run(self) -> None:
        """Run the queued work until `finish`."""
        while True:
            op = await self._ops.get()
            if op is None:
                await self._finished()
                return
            try:
                await op()
            except Exception:  # rows are bookkeeping; the files are already safe
                log.exception("recorder.op_failed")

    async def finish(self) -> None:
        """Let `run` return once the work queued so far is done."""
        await self._ops.put(None)

    async def settled(self) -> None:
        """Wait until the row and file work queued so far is done."""
        done = asyncio.Event()

        async def mark() -> None:
            done.set()

        self.put(mark)
        await done.wait()
        await self._finished()

    async def _finished(self) -> None:
        """Wait for the files being finished (started by the work queued so far)."""
        if self._finishing:
            await asyncio.gather(*self._finishing, return_exceptions=True)

    def opened(self, peer: PeerSession, span: Span) -> None:
        now = self._runtime.clock.now()

        async def insert() -> None:
            purpose = span.kind.purpose
            entries = await self._grants.entries(peer.booking_id, peer.subject_id, purpose)
            async with self._runtime.db.session() as session:
                retention = await retention_of(session, self._runtime.settings, peer.booking_id)
                session.add(
                    Recording(
                        id=span.recording_id,
                        booking_id=peer.booking_id,
                        participant_id=peer.subject_id,
                        kind=span.kind,
                        state=RecordingState.RECORDING,
                        media_type=span.kind.media_type,
                        started_at=now,
                        consent_entry_ids=entries,
                        frames=0,
                        size=0,
                        retain_until=now + retention,
                        path=span.relative_path,
                    )
                )

        self.put(insert)

    def closed(self, peer: PeerSession, span: Span) -> None:
        now = self._runtime.clock.now()
        self.closed_spans.append(
            SpanSummary(
                span.recording_id,
                peer.subject_id,
                span.kind,
                span.frames,
                span.first_arrival,
                span.last_arrival,
                time.time(),
                tuple(span.arrivals),
            )
        )
        if span.frames == 0:  # a video span that never saw a key frame: no file, no row
            self._store.delete(span.relative_path)
            return
        if span.kind is TrackKind.AUDIO:
            self.put(lambda: self._complete(span, now, None))
            return

        async def finish_later() -> None:  # after its row's insert, off the queue
            task = asyncio.create_task(self._complete(span, now, peer.data_key))
            self._finishing.add(task)
            task.add_done_callback(self._finishing.discard)

        self.put(finish_later)

    async def _complete(self, span: Span, now: datetime, key: bytes | None) -> None:
        """Complete a closed span's row, then publish its file. A WebM file (`key` given) is
        first finished with its Duration and Cues (`media.finalize`), in a thread and outside
        the ordered queue, so neither the event loop nor other people's rows and events wait
        for it; its row stays `recording` (downloads 409) until the file is final."""
        size, digest = span.file.size, span.file.sha256
        try:
            if key is not None:
                path = self._store.path(span.relative_path)
                async with self._finish_slots:
                    finished = await asyncio.to_thread(
                        functools.partial(finalize_webm, path, key, frames=span.frames)
                    )
                if finished is not None:
                    size, digest = finished
            async with self._runtime.db.session() as session:
                row = await session.get(Recording, span.recording_id)
                if row is None:
                    if key is not None:  # erased while it was finished: it outlived the erasure
                        self._store.delete(span.relative_path)
                    return
                row.state = RecordingState.COMPLETE
                row.ended_at = now
                row.frames = span.frames
                row.size = size
                row.sha256 = digest
                row.retain_until = now + await retention_of(
                    session, self._runtime.settings, row.booking_id
                )
                do_mark_ready(session, row.booking_id, row.id, row.participant_id, row.kind, now)
        except Exception:  # rows are bookkeeping; the files are already safe
            log.exception("recorder.complete_failed")
            return
        # Publish off the ops queue (an upload must not hold up rows and events).
        self._spawn(asyncio.to_thread(self._store.seal, span.relative_path))

    def publish(self, event: TrackRecording) -> None:
        """Queue a track's state event (after the rows queued before it)."""

        async def publish() -> None:
            await self._runtime.bus.publish(event)

        self.put(publish)
