"""Taking finished Egress files in: encrypted under the person's data key into recording
storage (local or S3, as the built-in recorder's files), listed as a recording with the consent
entry that allowed it, and the plaintext deleted. A file of an egress callgate never started,
or of a person erased meanwhile, is deleted unread. Only files inside the shared folder
(`egress_output_dir`) are ever read or deleted, whatever a webhook names.
"""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime
from pathlib import Path

import structlog
from livekit.protocol import egress as lk_egress
from sqlalchemy import select

from core.bookings import Participant
from core.datakeys import access_data_key
from core.errors import Gone
from core.runtime import Runtime
from media.egress.records import EgressRecord
from media.recordings import Recording, RecordingState, do_mark_ready, retention_of
from media.storage import Storage

log = structlog.get_logger(__name__)

MEDIA_TYPES = {"ogg": "audio/ogg", "webm": "video/webm", "mp4": "video/mp4", "m4a": "audio/mp4"}
COPY_BYTES = 1 << 20


def files_of(info: lk_egress.EgressInfo) -> list[lk_egress.FileInfo]:
    return list(info.file_results) or ([info.file] if info.file.filename else [])


def shared_file(runtime: Runtime, filename: str) -> Path | None:
    """The file Egress wrote, if it lies inside the shared folder."""
    root = runtime.settings.egress_output_dir
    if root is None or not filename:
        return None
    base = root.resolve()
    path = Path(filename) if Path(filename).is_absolute() else base / filename
    path = path.resolve()
    if not path.is_relative_to(base):
        log.warning("egress.file_refused", filename=filename)  # outside: never touched
        return None
    if not path.is_file():  # another node already took it in or deleted it
        log.info("egress.file_absent", filename=filename)
        return None
    return path


async def discard(runtime: Runtime, info: lk_egress.EgressInfo) -> None:
    """Delete the files of an egress no consent covers (one callgate did not start)."""
    for result in files_of(info):
        source = shared_file(runtime, result.filename)
        if source is not None:
            await asyncio.to_thread(source.unlink, True)
            log.warning("egress.file_deleted", egress=info.egress_id)


async def take_in(
    runtime: Runtime, store: Storage, record: EgressRecord, info: lk_egress.EgressInfo,
    result: lk_egress.FileInfo,
) -> None:
    """Encrypt one finished egress file into recording storage, list it, drop the plaintext."""
    source = shared_file(runtime, result.filename)
    if source is None:
        return
    now = runtime.clock.now()
    try:
        async with runtime.db.session() as session:
            external_id = await session.scalar(
                select(Participant.external_id).where(Participant.id == record.participant_id)
            )
            if external_id is None:
                raise LookupError("the participant is gone")
            key = await access_data_key(session, runtime.keys, external_id, now)
    except (Gone, LookupError):  # erased meanwhile: the recording must not outlive them
        log.warning("egress.take_in_refused", egress=info.egress_id, exc_info=True)
        await asyncio.to_thread(source.unlink, True)
        return
    recording = Recording(
        booking_id=record.booking_id,
        participant_id=record.participant_id,
        kind=record.kind,
        state=RecordingState.COMPLETE,
        consent_entry_ids=list(record.consent_entry_ids),
        frames=0,
    )
    recording.id = record.id  # one egress, one recording: a repeated report changes nothing
    suffix = source.suffix.lower().lstrip(".") or "bin"
    relative = f"{record.booking_id}/{record.id}.{suffix}.cgr"
    async with runtime.db.session() as session:
        if await session.get(Recording, record.id) is not None:
            return
    size, digest = await asyncio.to_thread(_encrypt_file, store, source, relative, key)
    started = _from_ns(result.started_at or info.started_at) or now
    ended = _from_ns(result.ended_at or info.ended_at) or now
    recording.media_type = MEDIA_TYPES.get(suffix, "application/octet-stream")
    recording.started_at, recording.ended_at = started, ended
    recording.size, recording.sha256, recording.path = size, digest, relative
    async with runtime.db.session() as session:
        # the booking's organization's period
        retention = await retention_of(session, runtime.settings, record.booking_id)
        recording.retain_until = ended + retention
        session.add(recording)
        do_mark_ready(
            session, record.booking_id, record.id, record.participant_id, record.kind, now
        )
    await asyncio.to_thread(store.seal, relative)
    await asyncio.to_thread(source.unlink, True)
    log.info("egress.taken_in", egress=info.egress_id, recording=str(record.id))


def _encrypt_file(store: Storage, source: Path, relative: str, key: bytes) -> tuple[int, str]:
    writer = store.open_writer(relative, key)
    with source.open("rb") as plaintext:
        while block := plaintext.read(COPY_BYTES):
            writer.write(block)
    writer.close()
    return writer.size, writer.sha256


def _from_ns(ns: int) -> datetime | None:
    return datetime.fromtimestamp(ns / 1e9, UTC) if ns > 0 else None
