"""Recordings under data-subject rights (core.subjects.SubjectData).

Export decrypts the person's own recordings into the bundle. Erasure crypto-shreds: the
person's wrapped data key is destroyed (and re-keyed under the tombstone, so nothing can
mint a fresh key for them), their recording rows go and their files (local, or objects in the
bucket) are removed after commit. Other people's recordings of the same sessions are under
other keys and stay untouched.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator, Iterator, Sequence
from datetime import datetime, timedelta
from typing import Any

import structlog
from sqlalchemy import ColumnElement, delete, func, not_, or_, select, update
from sqlalchemy.ext.asyncio import AsyncSession

from core.batches import BATCH, delete_where, table_of
from core.bookings import Booking, Participant
from core.datakeys import DataKey, access_data_key
from core.errors import Gone
from core.purposes import Purpose
from core.runtime import Runtime
from core.subjects import (
    Blob,
    Category,
    Cleanup,
    Cutoff,
    Erasure,
    JsonLines,
    Part,
    Subject,
)
from media.backends import open_store
from media.recordings import Recording, RecordingDownload, RecordingState, TrackKind
from media.storage import Storage

log = structlog.get_logger(__name__)

READABLE = (RecordingState.COMPLETE, RecordingState.RECOVERED)
# A file with no row this long after its last write is an orphan (a span still writing when its
# person was erased, a crash between file and row); the recorder inserts rows within seconds.
ORPHAN_GRACE = timedelta(days=1)


def recording_view(row: Recording) -> dict[str, Any]:
    return {
        "id": str(row.id),
        "booking_id": str(row.booking_id),
        "participant_id": str(row.participant_id),
        "kind": row.kind.value,
        "state": row.state.value,
        "media_type": row.media_type,
        "started_at": row.started_at.isoformat(),
        "ended_at": row.ended_at.isoformat() if row.ended_at else None,
        "consent_entry_ids": list(row.consent_entry_ids),
        "size": row.size,
        "sha256": row.sha256,
        "retain_until": row.retain_until.isoformat(),
    }


def bundle_name(row: Recording) -> str:
    return f"recordings/{row.booking_id}/{row.id}.{row.kind.extension}"


EXPORT_PIECE = 1024 * 1024


def _gather(pieces: Iterator[bytes]) -> bytes:
    """Up to about EXPORT_PIECE decrypted bytes (b"" at the end)."""
    out: list[bytes] = []
    size = 0
    for piece in pieces:
        out.append(piece)
        size += len(piece)
        if size >= EXPORT_PIECE:
            break
    return b"".join(out)


async def _chunks(pieces: Iterator[bytes]) -> AsyncIterator[bytes]:
    """Decrypt off the event loop, about a MiB per hop (constant memory)."""
    while True:
        piece = await asyncio.to_thread(_gather, pieces)
        if not piece:
            return
        yield piece


async def delete_recordings(
    session: AsyncSession, store: Storage, cleanup: Cleanup, condition: Any
) -> int:
    """Delete the recording rows matching `condition`; their files go through `cleanup` once
    the transaction has committed. The one place media erases recordings: a person's erasure,
    a purpose withdrawn for good, and the recorder dropping a person erased mid-call."""
    query = select(Recording.id, Recording.path).where(condition)
    rows = list((await session.execute(query)).all())
    remove_after_commit(store, cleanup, [path for _, path in rows])
    if rows:
        await session.execute(delete(Recording).where(Recording.id.in_([i for i, _ in rows])))
    return len(rows)


def remove_after_commit(store: Storage, cleanup: Cleanup, relatives: Sequence[str]) -> None:
    """The files of rows a transaction deletes: local copies through `cleanup`, and what the
    store published elsewhere once they are gone."""
    for relative in relatives:
        cleanup.remove(store.path(relative))
    if relatives:
        cleanup.after.append(lambda: _delete_published(store, list(relatives)))


def _delete_published(store: Storage, relatives: list[str]) -> None:
    try:
        store.delete_published(relatives)
    except Exception:  # the rows are gone already: the orphan sweep retries later
        log.warning("media.delete_published_failed", count=len(relatives), exc_info=True)


class MediaSubjects:
    name = "media"

    def __init__(self, runtime: Runtime) -> None:
        self._rt = runtime
        self.store: Storage = open_store(runtime.settings)

    async def _rows(self, subject: Subject) -> list[Recording]:
        query = (
            select(Recording)
            .where(Recording.participant_id.in_(subject.participant_ids))
            .order_by(Recording.started_at, Recording.id)
        )
        async with self._rt.db.session() as session:
            return list((await session.execute(query)).scalars())

    async def export(self, subject: Subject) -> AsyncIterator[Part]:
        rows = await self._rows(subject)
        yield JsonLines("recordings.jsonl", self._views(rows))
        yield JsonLines("recording_downloads.jsonl", self._downloads(subject))
        readable = [row for row in rows if row.state in READABLE]
        if not readable:
            return
        try:
            async with self._rt.db.session() as session:
                key = await access_data_key(
                    session, self._rt.keys, subject.external_id, self._rt.clock.now()
                )
        except Gone:
            return
        for row in readable:
            yield Blob(bundle_name(row), _chunks(self.store.read(row.path, key)))

    async def _views(self, rows: list[Recording]) -> AsyncIterator[dict[str, Any]]:
        for row in rows:
            yield {**recording_view(row), "file": bundle_name(row)}

    async def _downloads(self, subject: Subject) -> AsyncIterator[dict[str, Any]]:
        query = (
            select(RecordingDownload)
            .where(RecordingDownload.participant_id.in_(subject.participant_ids))
            .order_by(RecordingDownload.at)
        )
        async with self._rt.db.session() as session:
            rows = list((await session.execute(query)).scalars())
        for row in rows:
            yield {
                "recording_id": str(row.recording_id),
                "at": row.at.isoformat(),
                "participant_id": str(row.participant_id),
                "byte_range": row.byte_range,
            }

    async def erase(
        self, session: AsyncSession, subject: Subject, erasure: Erasure
    ) -> dict[str, int]:
        deleted = await delete_recordings(
            session,
            self.store,
            erasure.cleanup,
            Recording.participant_id.in_(subject.participant_ids),
        )
        shredded = await self._destroy_key(session, subject.external_id, erasure)
        return {"recordings_deleted": deleted, "data_keys_destroyed": shredded}

    async def _destroy_key(
        self, session: AsyncSession, external_id: str, erasure: Erasure
    ) -> int:
        found = await session.execute(
            update(DataKey)
            .where(DataKey.external_id == external_id)
            .values(external_id=erasure.tombstone, wrapped=None, destroyed_at=erasure.at)
        )
        destroyed = int(getattr(found, "rowcount", 0) or 0)
        if not destroyed:
            # Keep a destroyed key under the tombstone anyway: access_data_key then says Gone
            # instead of minting a fresh key for the erased rows.
            session.add(
                DataKey(external_id=erasure.tombstone, wrapped=None, created_at=erasure.at,
                        destroyed_at=erasure.at)
            )
        return destroyed

    async def delete_purpose(
        self, session: AsyncSession, participant: Participant, purpose: Purpose, cleanup: Cleanup
    ) -> dict[str, int]:
        if not purpose.is_recording:
            return {}
        kind = TrackKind.AUDIO if purpose is Purpose.RECORDING_AUDIO else TrackKind.VIDEO
        condition = (Recording.participant_id == participant.id) & (Recording.kind == kind)
        deleted = await delete_recordings(session, self.store, cleanup, condition)
        return {"recordings_deleted": deleted}

    async def purge(self, category: Category, cutoff: Cutoff, *, dry_run: bool) -> int | None:
        recordings = table_of(Recording)
        if category is Category.RECORDINGS:
            expired = or_(
                recordings.c.retain_until <= cutoff.now,
                func.coalesce(recordings.c.ended_at, recordings.c.started_at) < cutoff.before,
            )
            done = recordings.c.state != RecordingState.RECORDING.value
            scope = cutoff.of_bookings(recordings.c.booking_id)
            files = await self._purge_files(expired & done & scope, dry_run=dry_run)
            if not cutoff.sweeps:
                return files
            return files + await self._purge_orphans(cutoff.now, dry_run=dry_run)
        if category is Category.JOIN_LOGS:
            downloads = table_of(RecordingDownload)
            condition = downloads.c.at < cutoff.before
            if not cutoff.everywhere:
                scoped = select(recordings.c.id).where(cutoff.of_bookings(recordings.c.booking_id))
                condition = condition & downloads.c.recording_id.in_(scoped.scalar_subquery())
            return await delete_where(self._rt.db, downloads, condition, dry_run=dry_run)
        if category is Category.BOOKINGS:
            old = select(Booking.id).where(
                Booking.ends_at < cutoff.before, cutoff.of_orgs(Booking.org_id)
            )
            files = await self._purge_files(
                recordings.c.booking_id.in_(old.scalar_subquery()), dry_run=dry_run
            )
            return files + await self._purge_keys(cutoff, dry_run=dry_run)
        return None

    async def _purge_files(self, condition: Any, *, dry_run: bool) -> int:
        """Delete matching recording rows a batch at a time, unlinking each batch's files
        once its transaction committed."""
        recordings = table_of(Recording)
        if dry_run:
            return await delete_where(self._rt.db, recordings, condition, dry_run=True)
        total = 0
        while True:
            cleanup = Cleanup()
            async with self._rt.db.session() as session:
                query = select(recordings.c.id, recordings.c.path).where(condition).limit(BATCH)
                rows = list((await session.execute(query)).all())
                remove_after_commit(self.store, cleanup, [path for _, path in rows])
                if rows:
                    ids: list[uuid.UUID] = [i for i, _ in rows]
                    await session.execute(delete(recordings).where(recordings.c.id.in_(ids)))
            await asyncio.to_thread(cleanup.run)  # S3 deletes must not block the loop
            total += len(rows)
            if len(rows) < BATCH:
                return total

    async def _purge_orphans(self, now: datetime, *, dry_run: bool) -> int:
        """Recording files (and objects) no row names, untouched for ORPHAN_GRACE."""
        async with self._rt.db.session() as session:
            known = set((await session.execute(select(Recording.path))).scalars())
        before = (now - ORPHAN_GRACE).timestamp()
        return await asyncio.to_thread(self.store.sweep, known, before, dry_run=dry_run)

    async def _purge_keys(self, cutoff: Cutoff, *, dry_run: bool) -> int:
        """Data keys of people left only in bookings this cut expires (or in none): a
        person with a booking out of its scope keeps their key."""
        keys = table_of(DataKey)
        kept: ColumnElement[bool] = Booking.ends_at >= cutoff.before
        if not cutoff.everywhere:
            kept = or_(kept, not_(cutoff.of_orgs(Booking.org_id)))
        live = (
            select(Participant.external_id)
            .join(Booking, Booking.id == Participant.booking_id)
            .where(kept)
        )
        condition: ColumnElement[bool] = keys.c.external_id.not_in(live.scalar_subquery())
        if not cutoff.sweeps:  # keys of nobody's booking go with the default group's cut
            people = (
                select(Participant.external_id)
                .join(Booking, Booking.id == Participant.booking_id)
                .where(cutoff.of_orgs(Booking.org_id))
            )
            condition = condition & keys.c.external_id.in_(people.scalar_subquery())
        return await delete_where(self._rt.db, keys, condition, dry_run=dry_run)
