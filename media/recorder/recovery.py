"""Crash recovery: files a killed process left open, and uploads a restart interrupted.

Run once when the recorder starts. A row still `recording` whose file nobody touched for a
while belongs to a dead process: its whole chunks are kept, sealed, and the row completed (a
WebM file finished with its Duration and Cues on the way, `media.finalize`).
"""

from __future__ import annotations

import asyncio
import time

from sqlalchemy import select

from core.bookings import Participant
from core.datakeys import access_data_key
from core.runtime import Runtime
from media.finalize import finalize_webm
from media.recordings import Recording, RecordingState, TrackKind, retention_of
from media.storage import Storage

STALE_AFTER_S = 10.0  # a file untouched this long after a crash is salvaged on start


class Recovery:
    def __init__(self, runtime: Runtime, store: Storage) -> None:
        self._runtime = runtime
        self._store = store

    async def recover_stale(self, *, min_age_s: float = STALE_AFTER_S) -> int:
        """Salvage files a killed process left open (rows still `recording`, file untouched
        for `min_age_s`): keep their whole chunks, seal them, complete the rows."""
        query = (
            select(Recording, Participant.external_id)
            .join(Participant, Participant.id == Recording.participant_id)
            .where(Recording.state == RecordingState.RECORDING)
        )
        async with self._runtime.db.session() as session:
            rows = (await session.execute(query)).all()
        recovered = 0
        for row, external_id in rows:
            if await self._recover_one(row, external_id, min_age_s):
                recovered += 1
        await self._publish_leftovers()
        return recovered

    async def _publish_leftovers(self) -> None:
        """Complete files whose publishing (an upload) an outage or a restart interrupted."""
        spooled = await asyncio.to_thread(self._store.unpublished)
        if not spooled:
            return
        done = (RecordingState.COMPLETE, RecordingState.RECOVERED)
        query = select(Recording.path).where(
            Recording.path.in_(spooled), Recording.state.in_(done)
        )
        async with self._runtime.db.session() as session:
            paths = list((await session.execute(query)).scalars())
        for path in paths:
            await asyncio.to_thread(self._store.seal, path)

    async def _recover_one(self, row: Recording, external_id: str, min_age_s: float) -> bool:
        path = self._store.path(row.path)
        try:
            age = time.time() - path.stat().st_mtime
        except FileNotFoundError:
            age = None
        if age is not None and age < min_age_s:
            return False
        now = self._runtime.clock.now()
        async with self._runtime.db.session() as session:
            key = await access_data_key(session, self._runtime.keys, external_id, now)
            found = await session.get(Recording, row.id)
            if found is None:
                return False
            if age is None:
                await session.delete(found)
                return False
        # Outside any transaction: re-sealing and uploading may take long, and on SQLite an
        # open transaction holds the write lock every other writer waits for.
        size, digest = await asyncio.to_thread(self._salvage, found, key)
        async with self._runtime.db.session() as session:
            fresh = await session.get(Recording, row.id)
            if fresh is None:  # erased meanwhile: the salvaged file must not outlive the row
                await asyncio.to_thread(self._drop, row.path)
                return False
            fresh.state = RecordingState.RECOVERED
            fresh.size = size
            fresh.sha256 = digest
            fresh.ended_at = now
            fresh.retain_until = now + await retention_of(
                session, self._runtime.settings, fresh.booking_id
            )
        return True

    def _drop(self, relative: str) -> None:
        """Delete a salvaged file, local and published (the orphan sweep would, later)."""
        self._store.delete(relative)
        self._store.delete_published([relative])

    def _salvage(self, row: Recording, key: bytes) -> tuple[int, str]:
        """Keep the file's whole chunks, sealed complete, and publish it; a WebM file also
        gets its Duration and Cues (kept to its whole blocks), as a closed span's does."""
        if row.kind is TrackKind.VIDEO:
            finished = finalize_webm(self._store.path(row.path), key, salvage=True)
            if finished is not None:
                self._store.seal(row.path)
                return finished
        return self._store.recover(row.path, key)
