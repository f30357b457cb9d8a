"""The recordings API: who sees the list, decrypted downloads with ranges, the download log."""

from __future__ import annotations

import hashlib
import io
import uuid
from dataclasses import dataclass
from datetime import timedelta

import av
import httpx
import pytest
from sqlalchemy import select

from consent.purposes import Purpose
from core.accounts import Scope
from core.datakeys import access_data_key, do_destroy_data_key
from core.purposes import RecordingAccess
from core.runtime import Runtime
from media.backends import open_store
from media.ogg import OggOpusWriter
from media.recordings import Recording, RecordingDownload, RecordingState, TrackKind
from tests.support.bookings import bearer
from tests.support.consent_bookings import Person, Seeded, seed_booking
from tests.support.media import encode_opus


@dataclass
class Stored:
    seeded: Seeded
    row: Recording
    plaintext: bytes


async def store_recording(
    runtime: Runtime, person_index: int = 1, state: RecordingState = RecordingState.COMPLETE
) -> Stored:
    """A booking with one finished audio recording of one of its people, as the recorder
    leaves it: an encrypted Ogg file and its row."""
    # Everyone of the booking reads every recording here; who reads what under each
    # `recording_access` is test_session_access.py's.
    seeded = await seed_booking(
        runtime, [Purpose.RECORDING_AUDIO], access=RecordingAccess.PARTICIPANTS
    )
    person = seeded.people[person_index]
    store = open_store(runtime.settings)  # the store the app's recorder writes to
    now = runtime.clock.now()
    async with runtime.db.session() as session:
        key = await access_data_key(session, runtime.keys, person.external_id, now)
    recording_id = uuid.uuid4()
    relative = f"{seeded.booking_id}/{recording_id}.ogg.cgr"
    file = store.open_writer(relative, key)
    writer = OggOpusWriter(file)
    for i, packet in enumerate(encode_opus(100)):
        writer.write(packet, i * 960)
    writer.close()
    row = Recording(
        id=recording_id,
        booking_id=seeded.booking_id,
        participant_id=person.id,
        kind=TrackKind.AUDIO,
        state=state,
        media_type=TrackKind.AUDIO.media_type,
        started_at=now,
        ended_at=now + timedelta(seconds=2),
        consent_entry_ids=[str(uuid.uuid4())],
        frames=100,
        size=file.size,
        sha256=file.sha256,
        retain_until=now + timedelta(days=runtime.settings.recording_retention_days),
        path=relative,
    )
    async with runtime.db.session() as session:
        session.add(row)
    plaintext = b"".join(store.read(relative, key))
    return Stored(seeded, row, plaintext)


def url(stored: Stored, recording_id: uuid.UUID | None = None) -> str:
    base = f"/v1/bookings/{stored.seeded.booking_id}/recordings"
    return base if recording_id is None else f"{base}/{recording_id}"


async def test_participants_and_admins_see_the_list(
    client: httpx.AsyncClient, runtime: Runtime, api_keys: dict[Scope, str]
) -> None:
    stored = await store_recording(runtime)
    for headers in (
        stored.seeded.people[0].headers,
        stored.seeded.people[1].headers,
        bearer(api_keys[Scope.ADMIN]),
    ):
        response = await client.get(url(stored), headers=headers)
        assert response.status_code == 200
        body = response.json()
        assert body["recording"] is False
        [item] = body["recordings"]
        assert item["id"] == str(stored.row.id)
        assert item["participant_id"] == str(stored.seeded.people[1].id)
        assert item["kind"] == "audio"
        assert item["state"] == "complete"
        assert item["size"] == len(stored.plaintext)
        assert item["sha256"] == hashlib.sha256(stored.plaintext).hexdigest()
        assert item["consent_entry_ids"] == stored.row.consent_entry_ids
        assert item["retain_until"] > item["started_at"]


async def test_outsiders_are_refused(
    client: httpx.AsyncClient, runtime: Runtime, api_keys: dict[Scope, str]
) -> None:
    stored = await store_recording(runtime)
    other = await seed_booking(runtime, [Purpose.RECORDING_AUDIO])
    outsider: Person = other.people[1]
    for target in (url(stored), url(stored, stored.row.id)):
        assert (await client.get(target)).status_code == 401
        response = await client.get(target, headers=outsider.headers)
        assert response.status_code == 404
        assert response.json()["code"] == "not_found"
        for scope in (Scope.SCHEDULER, Scope.AUDITOR):
            response = await client.get(target, headers=bearer(api_keys[scope]))
            assert response.status_code == 403
            assert response.json()["code"] == "forbidden"
    # Someone else's recording id under one's own booking is not found either.
    mine = url(stored, stored.row.id).replace(str(stored.seeded.booking_id), str(other.booking_id))
    assert (await client.get(mine, headers=outsider.headers)).status_code == 404
    unknown = url(stored, uuid.uuid4())
    assert (await client.get(unknown, headers=stored.seeded.people[0].headers)).status_code == 404


async def test_download_is_decrypted_ranged_and_logged(
    client: httpx.AsyncClient, runtime: Runtime, api_keys: dict[Scope, str]
) -> None:
    stored = await store_recording(runtime)
    host = stored.seeded.people[0]
    target = url(stored, stored.row.id)
    whole = await client.get(target, headers=host.headers)
    assert whole.status_code == 200
    assert whole.headers["content-type"] == "audio/ogg"
    assert whole.headers["accept-ranges"] == "bytes"
    assert whole.content == stored.plaintext
    with av.open(io.BytesIO(whole.content)) as container:
        assert container.streams.audio[0].codec_context.name == "opus"

    part = await client.get(target, headers={**host.headers, "Range": "bytes=10-99"})
    assert part.status_code == 206
    assert part.headers["content-range"] == f"bytes 10-99/{len(stored.plaintext)}"
    assert part.content == stored.plaintext[10:100]
    admin = bearer(api_keys[Scope.ADMIN])
    tail = await client.get(target, headers={**admin, "Range": "bytes=-100"})
    assert tail.status_code == 206
    assert tail.content == stored.plaintext[-100:]
    beyond = f"bytes={len(stored.plaintext)}-"
    refused = await client.get(target, headers={**host.headers, "Range": beyond})
    assert refused.status_code == 416
    assert refused.json()["code"] == "range_not_satisfiable"
    assert refused.headers["content-range"] == f"bytes */{len(stored.plaintext)}"

    async with runtime.db.session() as session:
        query = select(RecordingDownload).order_by(RecordingDownload.id)
        log = list((await session.execute(query)).scalars())
    assert [(d.participant_id, d.api_key_id is not None, d.byte_range) for d in log] == [
        (host.id, False, None),
        (host.id, False, "bytes=10-99"),
        (None, True, f"bytes={len(stored.plaintext) - 100}-{len(stored.plaintext) - 1}"),
    ]


async def test_unfinished_and_erased_recordings_are_not_served(
    client: httpx.AsyncClient, runtime: Runtime
) -> None:
    open_one = await store_recording(runtime, state=RecordingState.RECORDING)
    response = await client.get(
        url(open_one, open_one.row.id), headers=open_one.seeded.people[0].headers
    )
    assert response.status_code == 409

    erased = await store_recording(runtime)
    async with runtime.db.session() as session:
        owner = erased.seeded.people[1]
        assert await do_destroy_data_key(session, owner.external_id, runtime.clock.now())
    response = await client.get(url(erased, erased.row.id), headers=owner.headers)
    assert response.status_code == 410
    assert response.json()["code"] == "gone"


async def test_host_or_admin_starts_and_stops_recording(
    client: httpx.AsyncClient, runtime: Runtime, api_keys: dict[Scope, str]
) -> None:
    seeded = await seed_booking(runtime, [Purpose.RECORDING_AUDIO])
    host, guest = seeded.people
    other = (await seed_booking(runtime, [Purpose.RECORDING_AUDIO])).people[0]
    base = f"/v1/bookings/{seeded.booking_id}/recording"
    assert (await client.post(f"{base}/start")).status_code == 401
    assert (await client.post(f"{base}/start", headers=guest.headers)).status_code == 403
    assert (await client.post(f"{base}/start", headers=other.headers)).status_code == 404
    scheduler = bearer(api_keys[Scope.SCHEDULER])
    assert (await client.post(f"{base}/start", headers=scheduler)).status_code == 403
    started = await client.post(f"{base}/start", headers=host.headers)
    assert started.status_code == 200
    assert started.json() == {"booking_id": str(seeded.booking_id), "recording": True}
    listed = await client.get(f"/v1/bookings/{seeded.booking_id}/recordings", headers=guest.headers)
    assert listed.json()["recording"] is True
    stopped = await client.post(f"{base}/stop", headers=bearer(api_keys[Scope.ADMIN]))
    assert stopped.json()["recording"] is False


async def test_offer_needs_a_valid_link_and_an_open_window(
    client: httpx.AsyncClient, runtime: Runtime
) -> None:
    offer = {"sdp": "v=0\r\n", "type": "offer"}
    response = await client.post(
        "/v1/recording/offer", json=offer, headers={"X-Join-Credential": "x" * 43}
    )
    assert response.status_code == 404
    late = await seed_booking(
        runtime, [Purpose.RECORDING_AUDIO], starts_at=runtime.clock.now() - timedelta(hours=3)
    )
    response = await client.post("/v1/recording/offer", json=offer, headers=late.people[0].headers)
    assert response.status_code == 403
    assert response.json()["code"] == "outside_join_window"
    bad = await client.post(
        "/v1/recording/offer", json={"sdp": "v=0", "type": "answer"}, headers=late.people[0].headers
    )
    assert bad.status_code == 422


@pytest.mark.parametrize("kind", list(TrackKind))
def test_track_kinds_map_to_their_purposes(kind: TrackKind) -> None:
    expected = {TrackKind.AUDIO: Purpose.RECORDING_AUDIO, TrackKind.VIDEO: Purpose.RECORDING_VIDEO}
    assert kind.purpose is expected[kind]
