"""The transcription job's audio: the recorder's finished audio files, decrypted for the job.

`RecordedAudio` is the `core.audio.AudioSource` the composition root hands summaries/. Reads
the recording rows (one Ogg Opus file per person per consent span) and decrypts
each under its owner's data key. A person whose key was destroyed (erased) has no audio any
more and is left out. Which spans go to the provider is still decided by the payload gate.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Sequence

import structlog
from sqlalchemy import select

from core.audio import AudioSpan
from core.bookings import Booking, Participant
from core.datakeys import access_data_key
from core.errors import Gone
from core.runtime import Runtime
from media.backends import open_store
from media.recordings import Recording, RecordingState, TrackKind
from media.storage import Storage

log = structlog.get_logger(__name__)

# The OpenAI transcription endpoint takes files up to 25 MB.
MAX_UPLOAD_BYTES = 25 * 1024 * 1024
READABLE = (RecordingState.COMPLETE, RecordingState.RECOVERED)


class RecordedAudio:
    def __init__(self, runtime: Runtime) -> None:
        self._rt = runtime
        self._store: Storage = open_store(runtime.settings)

    async def spans(self, booking_id: uuid.UUID) -> Sequence[AudioSpan]:
        out: list[AudioSpan] = []
        async with self._rt.db.session() as session:
            booking = await session.get(Booking, booking_id)
            if booking is None:
                return out
            query = (
                select(Recording, Participant.external_id)
                .join(Participant, Participant.id == Recording.participant_id)
                .where(Recording.booking_id == booking_id, Recording.kind == TrackKind.AUDIO)
                .where(Recording.state.in_(READABLE))
                .order_by(Recording.started_at, Recording.id)
            )
            rows = [(row, str(ext)) for row, ext in (await session.execute(query)).all()]
            keys: dict[str, bytes] = {}
            for external_id in dict.fromkeys(e for _, e in rows):
                try:
                    keys[external_id] = await access_data_key(
                        session, self._rt.keys, external_id, self._rt.clock.now()
                    )
                except Gone:
                    continue
        for row, external_id in rows:
            key = keys.get(external_id)
            if key is None or row.size > MAX_UPLOAD_BYTES:
                log.info("ai.audio_left_out", recording_id=str(row.id), size=row.size)
                continue
            audio = await asyncio.to_thread(self._read, row.path, key)
            start_ms = int((row.started_at - booking.starts_at).total_seconds() * 1000)
            ended = row.ended_at or row.started_at
            end_ms = int((ended - booking.starts_at).total_seconds() * 1000)
            out.append(AudioSpan(row.participant_id, start_ms, end_ms, audio, row.media_type))
        return out

    def _read(self, path: str, key: bytes) -> bytes:
        return b"".join(self._store.read(path, key))
