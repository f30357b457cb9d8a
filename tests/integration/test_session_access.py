"""Who may read a session's recordings, transcript and summary after the call: the booking's
`recording_access`, the participant access period, restriction, and the read log."""

from __future__ import annotations

import io
import json
import uuid
import zipfile
from dataclasses import dataclass
from datetime import timedelta

import httpx
import pytest

from api.services import Services
from consent.purposes import Purpose
from core.accounts import Scope
from core.clock import ManualClock
from core.datakeys import access_data_key
from core.purposes import RecordingAccess
from core.runtime import Runtime
from media.recorder import Recorder
from media.recordings import Recording, RecordingState, TrackKind
from summaries.outputs import Segment, Summary, Transcript
from tests.support.bookings import bearer
from tests.support.consent_bookings import Person, Seeded, seed_booking

PURPOSES = [Purpose.RECORDING_AUDIO, Purpose.TRANSCRIPTION, Purpose.AI_SUMMARY]


@dataclass
class Session:
    seeded: Seeded
    recordings: dict[uuid.UUID, uuid.UUID]  # person -> their recording
    plaintext: bytes

    @property
    def host(self) -> Person:
        return self.seeded.people[0]

    @property
    def client(self) -> Person:
        return self.seeded.people[1]

    def url(self, tail: str = "") -> str:
        return f"/v1/bookings/{self.seeded.booking_id}{tail}"


async def _recording(
    runtime: Runtime, recorder: Recorder, seeded: Seeded, person: Person, data: bytes
) -> uuid.UUID:
    """A finished recording of `person`, encrypted under their key, as the recorder leaves it."""
    now = runtime.clock.now()
    async with runtime.db.session() as session:
        key = await access_data_key(session, runtime.keys, person.external_id, now)
    recording_id = uuid.uuid4()
    relative = f"{seeded.booking_id}/{recording_id}.ogg.cgr"
    file = recorder.store.open_writer(relative, key)
    file.write(data)
    file.close()
    async with runtime.db.session() as session:
        session.add(Recording(
            id=recording_id, booking_id=seeded.booking_id, participant_id=person.id,
            kind=TrackKind.AUDIO, state=RecordingState.COMPLETE,
            media_type=TrackKind.AUDIO.media_type, started_at=now, ended_at=now,
            consent_entry_ids=[], frames=1, size=file.size, sha256=file.sha256,
            retain_until=now + timedelta(days=30), path=relative,
        ))
    return recording_id


async def _outputs(runtime: Runtime, seeded: Seeded, summary_of: list[Person]) -> None:
    """A transcript with one line per person, and a summary made from `summary_of`'s words."""
    now = runtime.clock.now()
    keep = now + timedelta(days=90)
    async with runtime.db.session() as session:
        session.add(Transcript(
            booking_id=seeded.booking_id, job_id=uuid.uuid4(), purpose=Purpose.TRANSCRIPTION,
            language="en", created_at=now, retain_until=keep,
            segments=[
                Segment(position=i, subject_id=p.id, label=f"Speaker {i}", start_ms=1000 * i,
                        end_ms=1000 * i + 900, text=f"words of {p.display_name}", entry_ids=[])
                for i, p in enumerate(seeded.people)
            ],
        ))
        session.add(Summary(
            booking_id=seeded.booking_id, job_id=uuid.uuid4(), purpose=Purpose.AI_SUMMARY,
            language="en", body={"summary": "what was said", "decisions": [],
                                 "action_items": []},
            subjects=[str(p.id) for p in summary_of], entry_ids=[], created_at=now,
            retain_until=keep,
        ))


async def _session(
    services: Services, access: RecordingAccess, *, summary_of_host_only: bool = False
) -> Session:
    runtime = services.runtime
    seeded = await seed_booking(runtime, PURPOSES, access=access)
    data = b"OggS" + bytes(range(256)) * 8
    recordings = {
        p.id: await _recording(runtime, services.recorder, seeded, p, data)
        for p in seeded.people
    }
    host = seeded.people[0]
    await _outputs(runtime, seeded, [host] if summary_of_host_only else seeded.people)
    return Session(seeded, recordings, data)


async def _seen(client: httpx.AsyncClient, session: Session, headers: dict[str, str]) -> object:
    """Whose recordings and transcript lines the reader gets, and whether the summary."""
    listed = await client.get(session.url("/recordings"), headers=headers)
    if listed.status_code != 200:
        return listed.status_code
    people = {r["participant_id"] for r in listed.json()["recordings"]}
    downloads = set()
    for person, recording_id in session.recordings.items():
        got = await client.get(session.url(f"/recordings/{recording_id}"), headers=headers)
        assert got.status_code in (200, 404), got.text
        if got.status_code == 200:
            assert got.content == session.plaintext
            downloads.add(str(person))
    assert downloads == people
    transcript = await client.get(session.url("/transcript"), headers=headers)
    lines = (
        {s["text"] for s in transcript.json()["segments"]}
        if transcript.status_code == 200 else set()
    )
    summary = (await client.get(session.url("/summary"), headers=headers)).status_code
    return sorted(people), sorted(lines), summary


@pytest.mark.parametrize("access", list(RecordingAccess))
async def test_recording_access_decides_who_reads_what(
    client: httpx.AsyncClient, services: Services, api_keys: dict[Scope, str],
    access: RecordingAccess,
) -> None:
    session = await _session(services, access, summary_of_host_only=True)
    host, guest = str(session.host.id), str(session.client.id)
    everything = ([*sorted([host, guest])], ["words of Cleo Client", "words of Hana Host"], 200)
    own_host = ([host], ["words of Hana Host"], 200)
    own_guest = ([guest], ["words of Cleo Client"], 404)  # the summary is not made from them
    expected = {
        RecordingAccess.ADMINS: (403, 403),
        RecordingAccess.OWN: (own_host, own_guest),
        RecordingAccess.HOST: (everything, own_guest),
        RecordingAccess.PARTICIPANTS: (everything, everything),
    }[access]
    assert await _seen(client, session, session.host.headers) == expected[0]
    assert await _seen(client, session, session.client.headers) == expected[1]
    assert await _seen(client, session, bearer(api_keys[Scope.ADMIN])) == everything
    for scope in (Scope.SCHEDULER, Scope.AUDITOR):
        assert await _seen(client, session, bearer(api_keys[scope])) == 403


async def test_default_is_own(
    client: httpx.AsyncClient, runtime: Runtime, api_keys: dict[Scope, str]
) -> None:
    booking = {
        "title": "Access default", "language": "en",
        "starts_at": (runtime.clock.now() + timedelta(hours=1)).isoformat(),
        "ends_at": (runtime.clock.now() + timedelta(hours=2)).isoformat(),
        "host": {"external_id": "h", "display_name": "H", "adult": True},
        "clients": [{"external_id": "c", "display_name": "C", "adult": True}],
    }
    scheduler = bearer(api_keys[Scope.SCHEDULER])
    made = await client.post("/v1/bookings", json=booking, headers=scheduler)
    assert made.status_code == 201, made.text
    assert made.json()["recording_access"] == "own"
    bad = await client.post(
        "/v1/bookings", json={**booking, "recording_access": "everyone"},
        headers=bearer(api_keys[Scope.SCHEDULER]),
    )
    assert bad.status_code == 422
    assert bad.headers["content-type"].startswith("application/problem+json")


async def test_participant_access_ends_after_the_period_and_at_once_under_restriction(
    client: httpx.AsyncClient, services: Services, api_keys: dict[Scope, str],
    clock: ManualClock,
) -> None:
    runtime = services.runtime
    session = await _session(services, RecordingAccess.PARTICIPANTS)
    admin = bearer(api_keys[Scope.ADMIN])
    guest = session.client
    paths = [session.url("/recordings"), session.url("/transcript"), session.url("/summary"),
             session.url(f"/recordings/{session.recordings[guest.id]}")]

    async def statuses(headers: dict[str, str]) -> list[int]:
        return [(await client.get(p, headers=headers)).status_code for p in paths]

    assert await statuses(guest.headers) == [200] * 4
    restricted = await client.post(f"/v1/admin/subjects/{guest.external_id}/restriction",
                                   headers=admin)
    assert restricted.status_code == 200, restricted.text
    assert await statuses(guest.headers) == [403] * 4
    assert await statuses(session.host.headers) == [200] * 4
    lifted = await client.delete(f"/v1/admin/subjects/{guest.external_id}/restriction",
                                 headers=admin)
    assert lifted.status_code == 200
    assert await statuses(guest.headers) == [200] * 4

    days = runtime.settings.participant_access_days
    assert days == 7
    ends = runtime.clock.now() + timedelta(minutes=5, hours=1, days=days)  # seeded window
    clock.advance(ends - runtime.clock.now() - timedelta(seconds=1))
    assert await statuses(guest.headers) == [200] * 4
    clock.advance(timedelta(seconds=1))
    refused = await client.get(paths[0], headers=guest.headers)
    assert refused.status_code == 403
    assert refused.json()["access_ended_at"] == ends.isoformat()
    assert await statuses(guest.headers) == [403] * 4
    assert await statuses(admin) == [200] * 4


async def test_every_read_is_logged_for_admins_and_in_the_export(
    client: httpx.AsyncClient, services: Services, api_keys: dict[Scope, str]
) -> None:
    session = await _session(services, RecordingAccess.HOST)
    admin = bearer(api_keys[Scope.ADMIN])
    host, guest = session.host, session.client
    guest_file = session.url(f"/recordings/{session.recordings[guest.id]}")
    ranged = await client.get(guest_file, headers={**host.headers, "Range": "bytes=0-99"})
    assert ranged.status_code == 206
    transcript = await client.get(session.url("/transcript"), headers=guest.headers)
    summary = await client.get(session.url("/summary"), headers=admin)
    assert transcript.status_code == summary.status_code == 200

    log = await client.get("/v1/admin/reads", params={"booking_id": str(session.seeded.booking_id)},
                           headers=admin)
    assert log.status_code == 200
    reads = {r["kind"]: r for r in log.json()["reads"]}
    assert reads["recording"]["reader"] == {"participant_id": str(host.id)}
    assert reads["recording"]["subjects"] == [str(guest.id)]
    assert reads["recording"]["bytes"] == 100
    assert reads["transcript"]["reader"] == {"participant_id": str(guest.id)}
    assert reads["transcript"]["subjects"] == [str(guest.id)]
    assert reads["transcript"]["bytes"] == len(transcript.content)
    assert set(reads["summary"]["reader"]) == {"api_key_id"}
    assert reads["summary"]["bytes"] == len(summary.content)
    for scope in (Scope.SCHEDULER, Scope.AUDITOR):
        refused = await client.get("/v1/admin/reads", headers=bearer(api_keys[scope]))
        assert refused.status_code == 403

    exported = await client.post(f"/v1/admin/subjects/{guest.external_id}/export", headers=admin)
    assert exported.status_code == 200
    with zipfile.ZipFile(io.BytesIO(exported.content)) as bundle:
        lines = bundle.read("data_reads.jsonl").decode().splitlines()
    kinds = sorted(json.loads(line)["kind"] for line in lines)
    # their own transcript read, the host's read of their recording, the admin's summary read
    assert kinds == ["recording", "summary", "transcript"]
