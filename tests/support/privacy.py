"""Shared by the privacy tests: people booked through the scheduler API, decisions through the
consent API, and recordings/transcripts/summaries stored the way media/ and summaries/ store
them (encrypted files under the person's data key, output rows with retention deadlines)."""

from __future__ import annotations

import hashlib
import uuid
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

import httpx

from core.accounts import Scope
from core.datakeys import access_data_key
from core.purposes import Purpose
from core.runtime import Runtime
from media.recordings import Recording, RecordingState, TrackKind
from media.storage import RecordingStore
from summaries.outputs import Segment, Summary, Transcript
from tests.support.ai import tone
from tests.support.bookings import bearer, booking_body, credential_of
from tests.support.waiting import eventually


@dataclass(frozen=True)
class Person:
    id: uuid.UUID
    external_id: str
    name: str
    credential: str

    @property
    def headers(self) -> dict[str, str]:
        return {"X-Join-Credential": self.credential}


@dataclass(frozen=True)
class Booked:
    booking_id: uuid.UUID
    people: list[Person]


def person(external_id: str, name: str, *, adult: bool = True) -> dict[str, Any]:
    return {"external_id": external_id, "display_name": name, "adult": adult}


async def book(
    client: httpx.AsyncClient,
    keys: dict[Scope, str],
    starts_at: datetime,
    host: dict[str, Any],
    clients: list[dict[str, Any]],
    purposes: list[str],
) -> Booked:
    body = booking_body(starts_at, purposes=purposes)
    body.update(host=host, clients=clients)
    response = await client.post("/v1/bookings", json=body, headers=bearer(keys[Scope.SCHEDULER]))
    assert response.status_code == 201, response.text
    created = response.json()
    people = [
        Person(uuid.UUID(p["id"]), p["external_id"], p["display_name"], credential_of(p))
        for p in created["participants"]
    ]
    return Booked(uuid.UUID(created["id"]), people)



async def add_recording(
    runtime: Runtime,
    booking_id: uuid.UUID,
    who: Person,
    plaintext: bytes,
    *,
    kind: TrackKind = TrackKind.AUDIO,
    retain_days: int | None = None,
) -> Recording:
    """A finished recording of `who`, encrypted under their data key like the recorder's."""
    store = RecordingStore(runtime.settings.data_dir / "recordings")
    now = runtime.clock.now()
    recording_id = uuid.uuid4()
    relative = f"{booking_id}/{recording_id}.{kind.extension}.cgr"
    async with runtime.db.session() as session:
        key = await access_data_key(session, runtime.keys, who.external_id, now)
    writer = store.open_writer(relative, key)
    for at in range(0, len(plaintext), 256 * 1024):  # chunks as the recorder's flushes make
        writer.write(plaintext[at : at + 256 * 1024])
        writer.flush()
    writer.close()
    days = retain_days if retain_days is not None else runtime.settings.recording_retention_days
    row = Recording(
        id=recording_id, booking_id=booking_id, participant_id=who.id, kind=kind,
        state=RecordingState.COMPLETE, media_type=kind.media_type, started_at=now,
        ended_at=now + timedelta(seconds=1), consent_entry_ids=[], frames=50,
        size=len(plaintext), sha256=hashlib.sha256(plaintext).hexdigest(),
        retain_until=now + timedelta(days=days), path=relative,
    )
    async with runtime.db.session() as session:
        session.add(row)
    return row


async def add_outputs(
    runtime: Runtime, booking_id: uuid.UUID, said: list[tuple[Person, str]]
) -> tuple[uuid.UUID, uuid.UUID]:
    """A transcript with one segment per (speaker, text) and a summary of all of them."""
    now = runtime.clock.now()
    keep = now + timedelta(days=runtime.settings.summary_retention_days)
    transcript = Transcript(
        id=uuid.uuid4(), booking_id=booking_id, job_id=uuid.uuid4(), purpose=Purpose.TRANSCRIPTION,
        language="en", created_at=now, retain_until=keep,
    )
    segments = [
        Segment(id=uuid.uuid4(), transcript_id=transcript.id, position=i, subject_id=who.id,
                label=f"Speaker {i + 1}", start_ms=i * 1000, end_ms=i * 1000 + 900, text=text,
                entry_ids=[])
        for i, (who, text) in enumerate(said)
    ]
    summary = Summary(
        id=uuid.uuid4(), booking_id=booking_id, job_id=uuid.uuid4(), purpose=Purpose.AI_SUMMARY,
        language="en", body={"text": " ".join(text for _, text in said)},
        subjects=list(dict.fromkeys(str(who.id) for who, _ in said)), entry_ids=[],
        created_at=now, retain_until=keep,
    )
    async with runtime.db.session() as session:
        session.add(transcript)
        await session.flush()
        session.add_all([*segments, summary])
    return transcript.id, summary.id


def audio(frequency: float) -> bytes:
    """A one-second Ogg Opus tone, distinct per frequency."""
    return tone(frequency, 1.0)


async def purged_at(client: httpx.AsyncClient, admin: dict[str, str], now: datetime) -> None:
    """Wait for a scheduled retention run that started at `now` (the test clock's) to have
    finished (the server's own periodic purge, `retention_interval_s`)."""

    async def ran() -> bool:
        status = (await client.get("/v1/admin/retention", headers=admin)).json()
        last = status["last_run"]
        return last is not None and datetime.fromisoformat(last["started_at"]) >= now

    await eventually(ran, f"a scheduled retention run at {now}")
