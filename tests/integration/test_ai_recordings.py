"""Transcription from the recorder's real files: encrypted Ogg Opus recordings, decrypted
under each person's data key, and only the spans of persons who granted transcription."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from datetime import timedelta
from typing import Any

import httpx
import pytest

from core.accounts import Scope
from core.bookings import Participant
from core.clock import ManualClock
from core.datakeys import access_data_key, do_destroy_data_key
from core.runtime import Runtime
from media.recordings import Recording, RecordingState, TrackKind
from media.storage import RecordingStore
from tests.standins.openai import OpenAIStandIn
from tests.support.ai import Person, book_session, decide, grant, settle, soon, tone


@pytest.fixture
async def standin() -> AsyncIterator[OpenAIStandIn]:
    async with OpenAIStandIn() as server:
        yield server


@pytest.fixture
def settings_overrides(standin: OpenAIStandIn) -> dict[str, Any]:
    return {"openai_base_url": standin.base_url, "openai_api_key": "sk-test"}


async def record(
    runtime: Runtime, booking_id: uuid.UUID, person: Person, offset_s: int, audio: bytes
) -> None:
    """What the recorder leaves for one consent span: an encrypted file and its row."""
    store = RecordingStore(runtime.settings.data_dir / "recordings")
    now = runtime.clock.now()
    async with runtime.db.session() as session:
        participant = await session.get(Participant, person.id)
        assert participant is not None
        key = await access_data_key(session, runtime.keys, participant.external_id, now)
        relative = f"{booking_id}/{person.id}-{offset_s}.ogg"
        store.path(relative).parent.mkdir(parents=True, exist_ok=True)
        writer = store.open_writer(relative, key)
        writer.write(audio)
        writer.close()
        started = participant.booking.starts_at + timedelta(seconds=offset_s)
        session.add(
            Recording(
                id=uuid.uuid4(), booking_id=booking_id, participant_id=person.id,
                kind=TrackKind.AUDIO, state=RecordingState.COMPLETE, media_type="audio/ogg",
                started_at=started, ended_at=started + timedelta(seconds=1),
                consent_entry_ids=[person.entries["recording.audio"]], frames=50,
                size=len(audio), sha256=writer.sha256, retain_until=now + timedelta(days=30),
                path=relative,
            )
        )


async def test_transcribes_consented_recordings_only(
    client: httpx.AsyncClient, api_keys: dict[Scope, str], clock: ManualClock,
    standin: OpenAIStandIn, runtime: Runtime,
) -> None:
    session = await book_session(
        client, api_keys, soon(clock.now()), purposes=("recording.audio", "transcription"),
        names=("Ada Lovelace", "Grace Hopper", "Linus Secret", "Erin Erased"),
        recording_access="participants",  # each reads everyone's lines (test_session_access)
    )
    ada, grace, linus, erin = session.people
    for person in (ada, grace, erin):
        await grant(client, person, "recording.audio", "transcription")
    await grant(client, linus, "recording.audio")
    await decide(client, linus, "transcription", "denied")
    audio = {p.id: tone(200 + 100 * i) for i, p in enumerate(session.people)}
    for i, person in enumerate(session.people):
        await record(runtime, session.booking_id, person, 10 * i, audio[person.id])
    standin.hear(audio[ada.id], "Hello from the host.")
    standin.hear(audio[grace.id], "Hello from a client.")
    async with runtime.db.session() as db:
        erin_row = await db.get(Participant, erin.id)
        assert erin_row is not None
        assert await do_destroy_data_key(db, erin_row.external_id, clock.now())

    started = await client.post(
        f"/v1/bookings/{session.booking_id}/jobs", json={"kind": "transcription"},
        headers=ada.headers,
    )
    assert started.status_code == 202
    (job,) = await settle(client, session)
    assert job["status"] == "succeeded"
    uploads = [r.files["file"] for r in standin.on("/v1/audio/transcriptions")]
    assert uploads == [audio[ada.id], audio[grace.id]]
    transcript = (await client.get(
        f"/v1/bookings/{session.booking_id}/transcript", headers=grace.headers
    )).json()
    assert [(s["speaker"], s["start_ms"], s["text"]) for s in transcript["segments"]] == [
        ("Host", 0, "Hello from the host."), ("Client 1", 10_000, "Hello from a client."),
    ]
