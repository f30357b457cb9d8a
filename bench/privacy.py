"""Data-subject rights and retention on PostgreSQL: erasure, export, purge.

Everything runs in a throwaway database and folder created and removed here. Baselines, same
run, on identical data:
- erasure of a person with 100 sessions (a recording each, their transcript segments): the
  bare minimum a non-shredding delete does, i.e. one DELETE of their recording rows, one
  UPDATE of their participant rows and unlinking their files;
- export throughput: decrypting the same recording files to nowhere (no ZIP, no database);
- purge of 100,000 expired join-log rows: one plain `DELETE ... WHERE expires_at < now`.
"""

from __future__ import annotations

import asyncio
import os
import secrets
import shutil
import tempfile
import time
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path

import asyncpg
from sqlalchemy import delete, text, update

from api.subjects import privacy_service
from core.bookings import Booking, BookingStatus, Participant, Role, RoomState
from core.datakeys import access_data_key
from core.migrate import upgrade
from core.organizations import DEFAULT_ORG, OrgSettings, do_create_org
from core.purposes import Purpose, RecordingPolicy
from core.runtime import Runtime
from core.settings import Settings
from media.recordings import Recording, RecordingState, TrackKind
from media.storage import RecordingStore, decrypt
from privacy.records import Trigger
from summaries.outputs import Segment, Transcript

DSN = os.environ.get("CALLGATE_TEST_PG_DSN", "postgresql://postgres@127.0.0.1:54329/postgres")
SESSIONS = 100
RECORDING_BYTES = 256 * 1024  # ~5 s of 400 kbit/s video per session
EXPIRED_ROWS = 100_000


def sqlalchemy_url(name: str) -> str:
    base = DSN.rsplit("/", 1)[0].replace("postgresql://", "postgresql+asyncpg://", 1)
    return f"{base}/{name}"


async def admin(sql: str) -> None:
    conn = await asyncpg.connect(DSN)
    try:
        await conn.execute(sql)
    finally:
        await conn.close()


async def person_with_sessions(runtime: Runtime, external_id: str) -> list[Recording]:
    """`SESSIONS` bookings with the person and someone else, a recording of each of them per
    booking and a transcript with both their words."""
    store = RecordingStore(runtime.settings.data_dir / "recordings")
    now = runtime.clock.now()
    rows: list[Recording] = []
    async with runtime.db.session() as session:
        mine = await access_data_key(session, runtime.keys, external_id, now)
        other_key = await access_data_key(session, runtime.keys, f"other-{external_id}", now)
    payload = os.urandom(RECORDING_BYTES)
    for n in range(SESSIONS):
        booking = Booking(
            id=uuid.uuid4(), title="Bench session", language="en", starts_at=now,
            ends_at=now + timedelta(hours=1), status=BookingStatus.SCHEDULED,
            recording_policy=RecordingPolicy.PER_PARTICIPANT,
            requested_purposes=[Purpose.RECORDING_AUDIO.value], record_automatically=False,
            room_name=secrets.token_hex(16), room_state=RoomState.NOT_NEEDED, room_attempts=0,
            sequence=0, created_by="bench", created_at=now, updated_at=now,
        )
        people = [
            Participant(id=uuid.uuid4(), booking_id=booking.id, position=i, external_id=ext,
                        display_name=name, role=role, adult=True,
                        credential_hash=secrets.token_hex(32), credential_generation=0,
                        created_at=now)
            for i, (ext, name, role) in enumerate([
                (external_id, "Bench Person", Role.HOST),
                (f"other-{external_id}", "Other Person", Role.CLIENT),
            ])
        ]
        transcript = Transcript(id=uuid.uuid4(), booking_id=booking.id, job_id=uuid.uuid4(),
                                purpose=Purpose.TRANSCRIPTION, language="en", created_at=now,
                                retain_until=now + timedelta(days=90))
        segments = [
            Segment(id=uuid.uuid4(), transcript_id=transcript.id, position=i, subject_id=p.id,
                    label=f"Speaker {i}", start_ms=0, end_ms=1000, text=f"words {n} {i}",
                    entry_ids=[])
            for i, p in enumerate(people)
        ]
        recordings = []
        for participant, key in zip(people, (mine, other_key), strict=True):
            relative = f"{booking.id}/{uuid.uuid4()}.webm.cgr"
            writer = store.open_writer(relative, key)
            for at in range(0, RECORDING_BYTES, 64 * 1024):
                writer.write(payload[at : at + 64 * 1024])
                writer.flush()
            writer.close()
            recordings.append(Recording(
                id=uuid.uuid4(), booking_id=booking.id, participant_id=participant.id,
                kind=TrackKind.VIDEO, state=RecordingState.COMPLETE, media_type="video/webm",
                started_at=now, ended_at=now, consent_entry_ids=[], frames=1,
                size=RECORDING_BYTES, sha256="0" * 64, retain_until=now + timedelta(days=30),
                path=relative,
            ))
        async with runtime.db.session() as session:
            session.add(booking)
            await session.flush()
            session.add_all(people)
            session.add(transcript)
            await session.flush()
            session.add_all([*segments, *recordings])
        rows.append(recordings[0])
    return rows


async def plain_erase(runtime: Runtime, external_id: str, rows: list[Recording]) -> float:
    """The baseline: delete the person's recording rows and files, blank their rows."""
    store = RecordingStore(runtime.settings.data_dir / "recordings")
    started = time.perf_counter()
    async with runtime.db.session() as session:
        await session.execute(delete(Recording).where(Recording.id.in_([r.id for r in rows])))
        await session.execute(
            update(Participant).where(Participant.external_id == external_id)
            .values(external_id="gone-" + external_id[-8:], display_name="gone")
        )
    for row in rows:
        store.path(row.path).unlink()
    return time.perf_counter() - started


async def bench_subjects(runtime: Runtime) -> dict[str, float]:
    privacy = privacy_service(runtime, periodic=False)
    ours = await person_with_sessions(runtime, "bench-erased")
    theirs = await person_with_sessions(runtime, "bench-baseline")
    store = RecordingStore(runtime.settings.data_dir / "recordings")

    started = time.perf_counter()
    _, stream = await privacy.do_export("bench-erased", DEFAULT_ORG, None)
    exported = 0
    async for piece in stream:
        exported += len(piece)
    export_s = time.perf_counter() - started

    async with runtime.db.session() as session:
        key = await access_data_key(session, runtime.keys, "bench-erased", runtime.clock.now())
    started = time.perf_counter()
    decrypted = 0
    for row in ours:
        for piece in decrypt(store.path(row.path), key):
            decrypted += len(piece)
    decrypt_s = time.perf_counter() - started

    started = time.perf_counter()
    result = await privacy.do_erase("bench-erased", DEFAULT_ORG, None)
    erase_s = time.perf_counter() - started
    if result["counts"]["media"]["recordings_deleted"] != SESSIONS:
        raise RuntimeError(f"erasure missed recordings: {result['counts']}")
    baseline_s = await plain_erase(runtime, "bench-baseline", theirs)
    return {
        "export_s": export_s, "exported": exported, "decrypt_s": decrypt_s,
        "decrypted": decrypted, "erase_s": erase_s, "plain_erase_s": baseline_s,
    }


async def fill_tickets(name: str, expires_at: datetime) -> None:
    conn = await asyncpg.connect(DSN.rsplit("/", 1)[0] + f"/{name}")
    try:
        await conn.copy_records_to_table(
            "used_tickets", columns=["nonce", "participant_id", "expires_at"],
            records=[(secrets.token_hex(16), uuid.uuid4(), expires_at)
                     for _ in range(EXPIRED_ROWS)],
        )
    finally:
        await conn.close()


async def bench_purge(runtime: Runtime, name: str) -> tuple[float, float, int]:
    privacy = privacy_service(runtime, periodic=False)
    old = runtime.clock.now() - timedelta(days=runtime.settings.join_log_retention_days + 1)
    await fill_tickets(name, old)
    started = time.perf_counter()
    result = await privacy.run_retention(trigger=Trigger.CLI)
    purge_s = time.perf_counter() - started
    await fill_tickets(name, old)
    started = time.perf_counter()
    async with runtime.db.session() as session:
        await session.execute(text("DELETE FROM used_tickets WHERE expires_at < :cut"),
                              {"cut": runtime.clock.now() - timedelta(days=90)})
    plain_s = time.perf_counter() - started
    return purge_s, plain_s, int(result["counts"]["join_logs"])


async def bench_scoped_purge(runtime: Runtime, name: str) -> float:
    """The same purge once an organization keeps join logs for its own period: each category
    it sets is cut twice (its bookings, then everyone else's with `NOT IN` over them)."""
    now = runtime.clock.now()
    async with runtime.db.session() as session:
        own = OrgSettings.model_validate({"retention_days": {"join_logs": 30, "recordings": 7}})
        await do_create_org(session, "bench-own", "Own periods", own, now)
    privacy = privacy_service(runtime, periodic=False)
    await fill_tickets(name, now - timedelta(days=runtime.settings.join_log_retention_days + 1))
    started = time.perf_counter()
    result = await privacy.run_retention(trigger=Trigger.CLI)
    scoped_s = time.perf_counter() - started
    assert result["counts"]["join_logs"] == EXPIRED_ROWS
    return scoped_s


async def run() -> str:
    name = f"cg_bench_{secrets.token_hex(4)}"
    folder = Path(tempfile.mkdtemp(prefix="cg-bench-privacy-"))
    await admin(f'CREATE DATABASE "{name}"')
    runtime: Runtime | None = None
    try:
        await upgrade(sqlalchemy_url(name))
        settings = Settings(
            database_url=sqlalchemy_url(name), data_dir=folder, secret_key="s" * 40,
            master_key="a2V5a2V5a2V5a2V5a2V5a2V5a2V5a2V5a2V5a2V5a2U=", log_level="WARNING",
        )
        runtime = Runtime.open(settings)
        subjects = await bench_subjects(runtime)
        purge_s, plain_s, purged = await bench_purge(runtime, name)
        scoped_s = await bench_scoped_purge(runtime, name)
    finally:
        if runtime is not None:
            await runtime.close()
        await admin(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        await asyncio.to_thread(shutil.rmtree, folder, True)
    mb = 1024 * 1024
    export_rate = subjects["exported"] / mb / subjects["export_s"]
    decrypt_rate = subjects["decrypted"] / mb / subjects["decrypt_s"]
    stamp = datetime.now(UTC).strftime("%H:%M")
    return "\n".join([
        "## Data-subject rights and retention (PostgreSQL)",
        "",
        "| measure | callgate | baseline (same run) | ratio |",
        "|---|---|---|---|",
        f"| erase a person with {SESSIONS} sessions ({SESSIONS} recordings of "
        f"{RECORDING_BYTES // 1024} KiB, transcript segments) "
        f"| {subjects['erase_s'] * 1000:,.0f} ms (every domain, one transaction, key "
        f"destroyed, files unlinked) "
        f"| {subjects['plain_erase_s'] * 1000:,.0f} ms (DELETE rows + UPDATE names + unlink) "
        f"| {subjects['erase_s'] / subjects['plain_erase_s']:.1f}x |",
        f"| export throughput ({subjects['exported'] / mb:.1f} MiB ZIP: JSON Lines + "
        f"{SESSIONS} decrypted recordings) | {export_rate:,.1f} MiB/s "
        f"| {decrypt_rate:,.1f} MiB/s (decrypt the same files, no ZIP, no database) "
        f"| {export_rate / decrypt_rate:.2f}x |",
        f"| purge {purged:,} expired join-log rows (whole retention run, every category, "
        f"batches of 5,000) | {purge_s:.2f} s | {plain_s:.2f} s (one plain DELETE) "
        f"| {purge_s / plain_s:.1f}x |",
        f"| the same purge with one organization on its own join-log and recording periods "
        f"(two cuts of those categories: its bookings, and `NOT IN` them for the rest) "
        f"| {scoped_s:.2f} s | {purge_s:.2f} s (the purge above, no organization's own "
        f"periods) | {scoped_s / purge_s:.1f}x |",
        "",
        "The erasure also scrubs the person's name from the other speaker's segments and "
        "re-keys the destroyed data key under the tombstone; the baseline does neither. The "
        "purge deletes in batches of 5,000 rows, each its own short transaction, so it never "
        "holds a long lock; a single DELETE is the floor it is measured against. "
        f"Reproduce: `.venv/bin/python -m bench privacy` (run at {stamp} UTC).",
    ])
