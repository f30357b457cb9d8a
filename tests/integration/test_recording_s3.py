"""Recordings in S3-compatible object storage (CALLGATE_STORAGE_BACKEND=s3).

The bucket is a real local S3 server (moto's, speaking the S3 wire protocol over HTTP on a
loopback port); callgate talks to it with the same boto3 client it would use against AWS or
MinIO. A real aiortc page is recorded; the sealed file must end up in the bucket as
ciphertext only, the local spool copy gone, downloads (ranged or whole) and exports must come
back decrypted from the object, and erasing the person must delete it.
"""

from __future__ import annotations

import hashlib
import io
import os
import secrets
import time
import uuid
import zipfile
from collections.abc import AsyncIterator, Iterator
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import boto3
import httpx
import pytest
from aiortc import RTCPeerConnection
from fastapi import FastAPI
from moto.server import ThreadedMotoServer
from mypy_boto3_s3 import S3Client
from sqlalchemy import select

from api.app import create_app
from api.services import Services
from consent.purposes import Purpose
from core.accounts import Scope
from core.clock import ManualClock
from core.crypto import Keyring
from core.datakeys import access_data_key
from core.runtime import Runtime
from core.settings import Settings
from media.audio import RecordedAudio
from media.objectstore import ObjectStore
from media.ogg import OggOpusWriter
from media.recorder import Recorder
from media.recordings import Recording, RecordingState, TrackKind
from media.storage import MAGIC, IntegrityError, LocalStore, decrypt
from media.webm import WebmVp8Writer
from tests.support.bookings import bearer
from tests.support.consent import decide
from tests.support.consent_bookings import Person, Seeded, seed_booking
from tests.support.media import EncodedTrack, encode_opus, encode_vp8
from tests.support.recording import offer_to_recorder
from tests.support.waiting import eventually
from tests.support.webm import cue_times_ms, segment_children

PREFIX = "rec/"
CREDENTIALS = {"aws_access_key_id": "testing", "aws_secret_access_key": "testing"}


@pytest.fixture(scope="module")
def s3_endpoint() -> Iterator[str]:
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    yield f"http://{host}:{port}"
    server.stop()


@pytest.fixture
def s3(s3_endpoint: str) -> S3Client:
    client: S3Client = boto3.session.Session().client(
        "s3", endpoint_url=s3_endpoint, region_name="us-east-1", **CREDENTIALS
    )
    return client


@pytest.fixture
def bucket(s3: S3Client) -> str:
    name = f"callgate-{secrets.token_hex(6)}"
    s3.create_bucket(Bucket=name)
    return name


@pytest.fixture
def settings_overrides(s3_endpoint: str, bucket: str) -> dict[str, Any]:
    return {
        "storage_backend": "s3",
        "s3_endpoint_url": s3_endpoint,
        "s3_region": "us-east-1",
        "s3_bucket": bucket,
        "s3_access_key_id": CREDENTIALS["aws_access_key_id"],
        "s3_secret_access_key": CREDENTIALS["aws_secret_access_key"],
        "s3_prefix": PREFIX,
    }


@pytest.fixture
async def pages() -> AsyncIterator[list[RTCPeerConnection]]:
    opened: list[RTCPeerConnection] = []
    yield opened
    for pc in opened:
        await pc.close()


def objects(s3: S3Client, bucket: str) -> dict[str, int]:
    """Key -> size of every object in the bucket."""
    listed = s3.list_objects_v2(Bucket=bucket)
    return {item["Key"]: item["Size"] for item in listed.get("Contents", [])}


def spooled(root: Path) -> list[Path]:
    return sorted(root.rglob("*.cgr*")) if root.is_dir() else []


async def connect_microphone(
    client: httpx.AsyncClient, person: Person, pages: list[RTCPeerConnection]
) -> EncodedTrack:
    """A page sending pre-encoded Opus (real time, looped) to the recording peer."""
    pc = RTCPeerConnection()
    pages.append(pc)
    track = EncodedTrack("audio", encode_opus(50))
    pc.addTransceiver(track, direction="sendonly")
    await offer_to_recorder(client, person.headers, pc)
    return track


async def test_a_recording_lives_in_the_bucket_as_ciphertext_until_its_person_is_erased(
    app: FastAPI,
    client: httpx.AsyncClient,
    runtime: Runtime, services: Services,
    api_keys: dict[Scope, str],
    pages: list[RTCPeerConnection],
    s3: S3Client,
    bucket: str,
) -> None:
    seeded = await seed_booking(runtime, [Purpose.RECORDING_AUDIO])
    host, guest = seeded.people
    await decide(client, guest, Purpose.RECORDING_AUDIO, "granted")
    started = await client.post(
        f"/v1/bookings/{seeded.booking_id}/recording/start", headers=host.headers
    )
    assert started.status_code == 200
    await connect_microphone(client, guest, pages)
    recorder: Recorder = services.recorder
    await eventually(
        lambda: recorder.frames_written[TrackKind.AUDIO] >= 150, "three seconds of audio"
    )
    await decide(client, guest, Purpose.RECORDING_AUDIO, "withdrawn")  # closes the span

    listing = f"/v1/bookings/{seeded.booking_id}/recordings"
    spool = runtime.settings.data_dir / "recordings"

    def published() -> bool:
        return bool(objects(s3, bucket)) and not spooled(spool)

    await eventually(
        published, "the sealed file uploaded and its spool copy removed", in_thread=True
    )
    rows = (await client.get(listing, headers=guest.headers)).json()["recordings"]
    assert [row["state"] for row in rows] == ["complete"]
    row = rows[0]
    async with runtime.db.session() as session:
        path = (await session.execute(select(Recording.path))).scalar_one()
    assert path.endswith(f"{row['id']}.ogg.cgr")
    assert list(objects(s3, bucket)) == [PREFIX + path]
    stored = s3.get_object(Bucket=bucket, Key=PREFIX + path)["Body"].read()
    assert stored.startswith(MAGIC)
    for plaintext_marker in (b"OggS", b"OpusHead", b"OpusTags"):
        assert plaintext_marker not in stored

    # The whole file, decrypted from the object.
    url = f"{listing}/{row['id']}"
    whole = await client.get(url, headers=guest.headers)
    assert whole.status_code == 200
    body = whole.content
    assert body.startswith(b"OggS")
    assert len(body) == row["size"]
    assert hashlib.sha256(body).hexdigest() == row["sha256"]

    # Ranges: inside, across chunk boundaries, the tail, and open-ended.
    size = len(body)
    for header, (start, end) in {
        "bytes=0-99": (0, 100),
        f"bytes={size // 3}-{size // 2}": (size // 3, size // 2 + 1),
        "bytes=-500": (size - 500, size),
        f"bytes={size - 1234}-": (size - 1234, size),
    }.items():
        part = await client.get(url, headers={**guest.headers, "Range": header})
        assert part.status_code == 206, header
        assert part.headers["Content-Range"] == f"bytes {start}-{end - 1}/{size}"
        assert part.content == body[start:end], header

    # The person's export carries the same bytes, read from the bucket.
    admin = bearer(api_keys[Scope.ADMIN])
    exported = await client.post(f"/v1/admin/subjects/{guest.external_id}/export", headers=admin)
    assert exported.status_code == 200
    with zipfile.ZipFile(io.BytesIO(exported.content)) as bundle:
        name = f"recordings/{seeded.booking_id}/{row['id']}.ogg"
        assert bundle.read(name) == body

    # So does the transcription job's input.
    spans = await RecordedAudio(runtime).spans(seeded.booking_id)
    assert [(span.subject_id, span.audio) for span in spans] == [(guest.id, body)]

    erased = await client.post(
        f"/v1/admin/subjects/{guest.external_id}/erase",
        headers=admin,
        json={"confirm": guest.external_id},
    )
    assert erased.status_code == 200, erased.text
    assert erased.json()["counts"]["media"]["recordings_deleted"] == 1
    assert objects(s3, bucket) == {}
    assert spooled(spool) == []
    gone = await client.get(url, headers=bearer(api_keys[Scope.ADMIN]))
    assert gone.status_code == 404


def spool_file(
    recorder: Recorder, relative: str, key: bytes, *, sealed: bool
) -> tuple[Path, int, str]:
    """An Ogg Opus file in the spool, as a finished span (or a killed process) leaves it."""
    file = recorder.store.open_writer(relative, key)
    writer = OggOpusWriter(file)
    for i, packet in enumerate(encode_opus(100)):
        writer.write(packet, i * 960)
        file.flush()
    if sealed:
        writer.close()
    else:
        file.abandon()
    return file.path, file.size, file.sha256


async def guest_with_key(
    runtime: Runtime, purpose: Purpose, now: datetime
) -> tuple[Seeded, Person, bytes]:
    """A booking asking for `purpose`, its guest, and the guest's data key."""
    seeded = await seed_booking(runtime, [purpose])
    guest = seeded.people[1]
    async with runtime.db.session() as session:
        key = await access_data_key(session, runtime.keys, guest.external_id, now)
    return seeded, guest, key


async def test_a_restart_publishes_what_an_outage_or_a_crash_left_in_the_spool(
    client: httpx.AsyncClient,
    runtime: Runtime, services: Services,
    settings: Settings,
    clock: ManualClock,
    s3: S3Client,
    bucket: str,
) -> None:
    seeded, guest, key = await guest_with_key(runtime, Purpose.RECORDING_AUDIO, clock.now())
    recorder: Recorder = services.recorder
    now = clock.now()
    rows = {}
    for name, state in (("finished", RecordingState.COMPLETE),
                        ("crashed", RecordingState.RECORDING)):
        recording_id = uuid.uuid4()
        relative = f"{seeded.booking_id}/{recording_id}.ogg.cgr"
        path, size, digest = spool_file(
            recorder, relative, key, sealed=state is RecordingState.COMPLETE
        )
        stale = path.stat().st_mtime - 3600  # a crash an hour ago
        os.utime(path, (stale, stale))
        rows[name] = Recording(
            id=recording_id, booking_id=seeded.booking_id, participant_id=guest.id,
            kind=TrackKind.AUDIO, state=state, media_type=TrackKind.AUDIO.media_type,
            started_at=now, ended_at=now + timedelta(seconds=2) if size else None,
            consent_entry_ids=[], frames=100, size=size, sha256=digest,
            retain_until=now + timedelta(days=30), path=relative,
        )
    async with runtime.db.session() as session:
        session.add_all(rows.values())
    spool = settings.data_dir / "recordings"
    assert len(spooled(spool)) == 2
    assert objects(s3, bucket) == {}

    restarted = create_app(settings, clock=clock)
    async with restarted.router.lifespan_context(restarted):
        assert sorted(objects(s3, bucket)) == sorted(PREFIX + r.path for r in rows.values())
        assert spooled(spool) == []
    listing = (await client.get(
        f"/v1/bookings/{seeded.booking_id}/recordings", headers=guest.headers
    )).json()["recordings"]
    states = {row["id"]: row["state"] for row in listing}
    assert states == {str(rows["finished"].id): "complete", str(rows["crashed"].id): "recovered"}
    for row in listing:
        url = f"/v1/bookings/{seeded.booking_id}/recordings/{row['id']}"
        body = (await client.get(url, headers=guest.headers)).content
        assert body.startswith(b"OggS")
        assert hashlib.sha256(body).hexdigest() == row["sha256"]


async def test_a_crash_cut_video_is_finished_before_it_is_uploaded(
    client: httpx.AsyncClient,
    runtime: Runtime, services: Services,
    settings: Settings,
    clock: ManualClock,
    s3: S3Client,
    bucket: str,
) -> None:
    seeded, guest, key = await guest_with_key(runtime, Purpose.RECORDING_VIDEO, clock.now())
    recorder: Recorder = services.recorder
    now = clock.now()
    recording_id = uuid.uuid4()
    relative = f"{seeded.booking_id}/{recording_id}.webm.cgr"
    file = recorder.store.open_writer(relative, key)
    writer = WebmVp8Writer(file)
    for i, frame in enumerate(encode_vp8(60, keyframe_every=30)):
        writer.write(frame, i * 3000)
    file.flush()
    file.abandon()  # killed: no final chunk, no Duration, no Cues
    stale = file.path.stat().st_mtime - 3600
    os.utime(file.path, (stale, stale))
    async with runtime.db.session() as session:
        session.add(Recording(
            id=recording_id, booking_id=seeded.booking_id, participant_id=guest.id,
            kind=TrackKind.VIDEO, state=RecordingState.RECORDING,
            media_type=TrackKind.VIDEO.media_type, started_at=now, consent_entry_ids=[],
            frames=0, size=0, retain_until=now + timedelta(days=30), path=relative,
        ))

    restarted = create_app(settings, clock=clock)
    async with restarted.router.lifespan_context(restarted):
        assert list(objects(s3, bucket)) == [PREFIX + relative]
        assert spooled(settings.data_dir / "recordings") == []
    listing = (await client.get(
        f"/v1/bookings/{seeded.booking_id}/recordings", headers=guest.headers
    )).json()["recordings"]
    [row] = listing
    assert row["state"] == "recovered"
    url = f"/v1/bookings/{seeded.booking_id}/recordings/{row['id']}"
    body = (await client.get(url, headers=guest.headers)).content
    assert len(body) == row["size"]
    assert hashlib.sha256(body).hexdigest() == row["sha256"]
    assert segment_children(body)[0]  # the uploaded file is the finished one
    assert cue_times_ms(body) == [0, 1000]


# The store itself, against the same server: large files, failures, crashes, orphans.

PIECES = [os.urandom(700_000) for _ in range(9)] + [os.urandom(3), b""]
PLAIN = b"".join(PIECES)


@pytest.fixture
def store(s3: S3Client, bucket: str, tmp_path: Path) -> ObjectStore:
    # Multipart from 5 MiB (S3's smallest part), so the ~6 MiB file below goes in parts.
    return ObjectStore(LocalStore(tmp_path / "spool"), s3, bucket, PREFIX, part_bytes=5 << 20)


def write(store: ObjectStore, relative: str, key: bytes, pieces: list[bytes]) -> Path:
    writer = store.open_writer(relative, key)
    for piece in pieces:
        writer.write(piece)
        writer.flush()
    writer.close()
    return writer.path


def test_a_large_file_goes_up_in_parts_and_reads_back_by_range(
    store: ObjectStore, s3: S3Client, bucket: str
) -> None:
    key = Keyring.new_data_key()
    spool = write(store, "b/big.webm.cgr", key, PIECES)
    assert store.seal("b/big.webm.cgr")
    assert not spool.exists()
    head = s3.head_object(Bucket=bucket, Key=PREFIX + "b/big.webm.cgr")
    assert head["ETag"].strip('"').endswith("-2")  # a multipart upload of two parts
    assert b"".join(store.read("b/big.webm.cgr", key)) == PLAIN
    for start, end in [(0, 1), (699_999, 700_001), (3_000_000, 4_900_000), (len(PLAIN) - 3,
                                                                            len(PLAIN))]:
        assert b"".join(store.read("b/big.webm.cgr", key, start, end)) == PLAIN[start:end]
    with pytest.raises(IntegrityError):
        b"".join(store.read("b/big.webm.cgr", Keyring.new_data_key()))
    with pytest.raises(FileNotFoundError):
        b"".join(store.read("b/missing.webm.cgr", key))


def test_a_range_fetches_only_the_chunks_holding_it(
    store: ObjectStore, s3: S3Client, bucket: str
) -> None:
    key = Keyring.new_data_key()
    write(store, "b/seek.webm.cgr", key, PIECES)
    assert store.seal("b/seek.webm.cgr")
    fetched: list[int] = []

    def count(http_response: Any, parsed: dict[str, Any], **_: Any) -> None:
        fetched.append(int(http_response.headers["Content-Length"]))

    s3.meta.events.register("after-call.s3.GetObject", count)
    # Bytes 3,000,000..3,000,009 sit in the fifth 700,000-byte chunk: the tail with the
    # index, then that one chunk (length, nonce, ciphertext, tag) and nothing else.
    assert b"".join(store.read("b/seek.webm.cgr", key, 3_000_000, 3_000_010)) == (
        PLAIN[3_000_000:3_000_010]
    )
    assert fetched[1:] == [4 + 12 + 700_000 + 16]
    assert fetched[0] <= 64 * 1024


def test_an_object_whose_index_lies_does_not_read(
    store: ObjectStore, s3: S3Client, bucket: str
) -> None:
    key = Keyring.new_data_key()
    pieces = [os.urandom(1000), os.urandom(70_000), os.urandom(5000)]
    write(store, "b/lie.ogg.cgr", key, pieces)  # chunks of 1000, 70000, 5000 and 0 (final)
    assert store.seal("b/lie.ogg.cgr")
    name = PREFIX + "b/lie.ogg.cgr"
    honest = s3.get_object(Bucket=bucket, Key=name)["Body"].read()
    footer = honest[-32:]
    count = int.from_bytes(footer[16:24], "big")
    assert count == 4
    index = honest[-32 - 4 * count : -32]
    body = honest[: -32 - 4 * count]
    sizes = [int.from_bytes(index[i : i + 4], "big") for i in range(0, len(index), 4)]
    assert sizes == [1000, 70_000, 5000, 0]
    # The first two sizes swapped (same total): chunk 1 is looked for where it is not.
    lying = body + index[4:8] + index[0:4] + index[8:] + footer
    s3.put_object(Bucket=bucket, Key=name, Body=lying)
    with pytest.raises(IntegrityError):
        b"".join(store.read("b/lie.ogg.cgr", key, 2000, 2100))
    # An index without the final chunk does not account for the whole object.
    dropped = body + index[:-4] + footer[:16] + (count - 1).to_bytes(8, "big") + footer[24:]
    s3.put_object(Bucket=bucket, Key=name, Body=dropped)
    with pytest.raises(IntegrityError):
        b"".join(store.read("b/lie.ogg.cgr", key))
    s3.put_object(Bucket=bucket, Key=name, Body=honest)
    assert b"".join(store.read("b/lie.ogg.cgr", key, 2000, 2100)) == b"".join(pieces)[2000:2100]


def test_objects_without_an_index_and_indexes_beyond_the_tail_read_back(
    store: ObjectStore, s3: S3Client, bucket: str, tmp_path: Path
) -> None:
    key = Keyring.new_data_key()
    # A file copied into the bucket as a local store wrote it (no index): streamed whole.
    local = LocalStore(tmp_path / "local")
    copied = local.open_writer("b/copied.ogg.cgr", key)
    for piece in PIECES[:4]:
        copied.write(piece)
        copied.flush()
    copied.close()
    s3.upload_file(str(copied.path), bucket, PREFIX + "b/copied.ogg.cgr")
    plain = b"".join(PIECES[:4])
    assert b"".join(store.read("b/copied.ogg.cgr", key)) == plain
    assert b"".join(store.read("b/copied.ogg.cgr", key, 1_500_000, 1_500_003)) == (
        plain[1_500_000:1_500_003]
    )
    # 20,000 one-byte chunks: an index of 80,000 bytes, fetched on its own.
    tiny = [bytes([i % 256]) for i in range(20_000)]
    write(store, "b/tiny.ogg.cgr", key, tiny)
    assert store.seal("b/tiny.ogg.cgr")
    joined = b"".join(tiny)
    assert b"".join(store.read("b/tiny.ogg.cgr", key)) == joined
    assert b"".join(store.read("b/tiny.ogg.cgr", key, 12_345, 12_400)) == joined[12_345:12_400]


def test_a_failed_upload_keeps_the_file_readable_until_it_is_published(
    store: ObjectStore, s3: S3Client, bucket: str, tmp_path: Path
) -> None:
    key = Keyring.new_data_key()
    offline = ObjectStore(store.spool, s3, f"{bucket}-missing", PREFIX)
    spool = write(offline, "b/late.ogg.cgr", key, PIECES[:2])
    assert not offline.seal("b/late.ogg.cgr")  # no such bucket: the upload fails
    assert spool.exists()
    assert b"".join(offline.read("b/late.ogg.cgr", key)) == b"".join(PIECES[:2])
    assert store.unpublished() == ["b/late.ogg.cgr"]
    assert store.seal("b/late.ogg.cgr")  # the retry (as the recorder does on its next start)
    assert store.unpublished() == []
    assert b"".join(store.read("b/late.ogg.cgr", key)) == b"".join(PIECES[:2])


def test_a_crashed_file_is_salvaged_then_published(store: ObjectStore, s3: S3Client,
                                                   bucket: str) -> None:
    key = Keyring.new_data_key()
    writer = store.open_writer("b/crashed.ogg.cgr", key)
    for piece in PIECES[:3]:
        writer.write(piece)
        writer.flush()
    writer.write(b"never flushed")
    writer.abandon()  # as kill -9 leaves it: no final chunk
    with pytest.raises(IntegrityError):
        b"".join(decrypt(writer.path, key))
    size, _ = store.recover("b/crashed.ogg.cgr", key)
    assert size == len(b"".join(PIECES[:3]))
    assert not writer.path.exists()
    assert PREFIX + "b/crashed.ogg.cgr" in objects(s3, bucket)
    assert b"".join(store.read("b/crashed.ogg.cgr", key)) == b"".join(PIECES[:3])


def test_orphan_objects_are_swept_and_named_ones_kept(store: ObjectStore, s3: S3Client,
                                                      bucket: str) -> None:
    key = Keyring.new_data_key()
    for name in ("b/kept.ogg.cgr", "b/orphan.ogg.cgr"):
        write(store, name, key, PIECES[:1])
        assert store.seal(name)
    later = time.time() + 3600
    assert store.sweep({"b/kept.ogg.cgr"}, later, dry_run=True) == 1
    assert len(objects(s3, bucket)) == 2
    assert store.sweep({"b/kept.ogg.cgr"}, later, dry_run=False) == 1
    assert list(objects(s3, bucket)) == [PREFIX + "b/kept.ogg.cgr"]
    assert store.sweep(set(), time.time() - 3600, dry_run=False) == 0  # too young to sweep
    with pytest.raises(ValueError, match="escapes"):
        store.key("../outside.cgr")
