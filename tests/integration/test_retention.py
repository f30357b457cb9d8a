"""Retention with a controllable clock: each category goes when its period ends (recordings
30 days, transcripts and summaries 90, join logs 90, bookings 5 years); the consent ledger is
kept and reported; a dry run changes nothing; every run's counts are logged; and
`callgate retention run --dry-run` shows what would go."""

from __future__ import annotations

import asyncio
import json
import os
import sys
from datetime import timedelta
from typing import Any

import httpx
from sqlalchemy import func, select

from api.subjects import privacy_service, retention_cron
from consent.ledger import Entry
from core.accounts import Scope
from core.bookings import Booking, Participant
from core.clock import ManualClock
from core.datakeys import DataKey
from core.runtime import Runtime
from core.settings import Settings
from media.recordings import Recording
from privacy.records import RetentionRun, Trigger
from signaling.tickets import UsedTicket
from summaries.outputs import Summary, Transcript
from tests.support import REDIS_URL
from tests.support.bookings import bearer
from tests.support.consent import decide
from tests.support.privacy import (
    add_outputs,
    add_recording,
    audio,
    book,
    person,
)

MODELS: dict[str, Any] = {
    "recordings": Recording, "transcripts": Transcript, "summaries": Summary,
    "used_tickets": UsedTicket, "bookings": Booking, "participants": Participant,
    "data_keys": DataKey, "ledger": Entry, "runs": RetentionRun,
}


async def rows(runtime: Runtime) -> dict[str, int]:
    out = {}
    async with runtime.db.session() as session:
        for name, model in MODELS.items():
            out[name] = int(await session.scalar(select(func.count()).select_from(model)) or 0)
    return out


async def seed(
    client: httpx.AsyncClient, api_keys: dict[Scope, str], runtime: Runtime
) -> Recording:
    booked = await book(
        client, api_keys, runtime.clock.now() + timedelta(minutes=5),
        person("keeper-1", "Rita Retained"), [person("keeper-2", "Carl Client")],
        ["recording.audio", "transcription", "ai.summary"],
    )
    host, guest = booked.people
    await decide(client, host, "recording.audio")
    row = await add_recording(runtime, booked.booking_id, host, audio(440))
    await add_outputs(runtime, booked.booking_id, [(host, "Hello."), (guest, "Hi.")])
    async with runtime.db.session() as session:
        session.add(UsedTicket(nonce="t" * 32, participant_id=host.id,
                               expires_at=runtime.clock.now()))
    return row


async def test_each_category_goes_when_its_period_ends(
    client: httpx.AsyncClient, api_keys: dict[Scope, str], runtime: Runtime, clock: ManualClock
) -> None:
    admin = bearer(api_keys[Scope.ADMIN])
    recording = await seed(client, api_keys, runtime)
    file = runtime.settings.data_dir / "recordings" / recording.path
    before = await rows(runtime)

    async def run(dry_run: bool) -> dict[str, int]:
        response = await client.post("/v1/admin/retention/run", headers=admin,
                                     params={"dry_run": str(dry_run).lower()})
        assert response.status_code == 200
        counts: dict[str, int] = response.json()["counts"]
        return counts

    assert set((await run(False)).values()) == {0}
    clock.advance(timedelta(days=31))
    preview = await run(True)
    # The booking's sent events are the webhook log's (its purge: test_webhooks); how many
    # the sender has marked sent by now is its own affair.
    preview.pop("webhook_log")
    assert preview == {"recordings": 1, "transcripts": 0, "summaries": 0, "join_logs": 0,
                       "attendance": 0,
                       "bookings": 0, "consent_ledger": 0}
    assert await rows(runtime) == {**before, "runs": 1}  # the dry run changed nothing
    assert file.exists()

    assert (await run(False))["recordings"] == 1
    assert not file.exists()
    assert await rows(runtime) == {**before, "recordings": 0, "runs": 2}

    clock.advance(timedelta(days=60))  # day 91
    purged = await run(False)
    assert (purged["transcripts"], purged["summaries"], purged["join_logs"]) == (1, 1, 1)
    assert await rows(runtime) == {**before, "recordings": 0, "transcripts": 0, "summaries": 0,
                                   "used_tickets": 0, "runs": 3}
    status = (await client.get("/v1/admin/retention", headers=admin)).json()
    by_category = {c["category"]: c for c in status["categories"]}
    assert by_category["recordings"]["retention_days"] == 30
    assert by_category["bookings"]["retention_days"] == 5 * 365 + 1
    assert by_category["summaries"]["last_purged"] == 1
    assert status["last_run"]["counts"]["transcripts"] == 1

    clock.advance(timedelta(days=5 * 365 - 88))  # the booking ended over 1826 days ago
    assert (await run(True))["bookings"] >= 1
    assert (await run(False))["bookings"] >= 1
    left = await rows(runtime)
    assert (left["bookings"], left["participants"], left["data_keys"]) == (0, 0, 0)
    assert left["ledger"] == before["ledger"] == 1  # the proof of consent stays

    status = (await client.get("/v1/admin/retention", headers=admin)).json()
    ledger = next(c for c in status["categories"] if c["category"] == "consent_ledger")
    assert ledger["expired"] == 0
    clock.advance(timedelta(days=366))
    status = (await client.get("/v1/admin/retention", headers=admin)).json()
    ledger = next(c for c in status["categories"] if c["category"] == "consent_ledger")
    assert (ledger["expired"], ledger["action"]) == (1, "kept (append-only ledger)")
    assert (await run(False))["consent_ledger"] == 0
    assert (await rows(runtime))["ledger"] == 1
    verify = await client.get("/v1/admin/consent-log/verify", headers=admin)
    assert verify.json()["ok"] is True


async def test_cli_dry_run_shows_what_would_go_and_changes_nothing(
    client: httpx.AsyncClient, api_keys: dict[Scope, str], runtime: Runtime, clock: ManualClock,
    settings: Settings,
) -> None:
    now = clock.now()
    clock.set(now - timedelta(days=40))  # recorded 40 days ago: expired by the real clock
    recording = await seed(client, api_keys, runtime)
    clock.set(now)
    before = await rows(runtime)
    env = {
        **os.environ,
        "CALLGATE_DATABASE_URL": settings.database_url,
        "CALLGATE_DATA_DIR": str(settings.data_dir),
        "CALLGATE_SECRET_KEY": settings.secret_key.get_secret_value() if settings.secret_key
        else "",
        "CALLGATE_MASTER_KEY": settings.master_key.get_secret_value() if settings.master_key
        else "",
        "CALLGATE_LOG_LEVEL": "WARNING",
    }

    async def cli(*args: str) -> dict[str, Any]:
        process = await asyncio.create_subprocess_exec(
            sys.executable, "-c", "from api.cli import main; main()", "retention", "run", *args,
            env=env, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
        )
        out, err = await process.communicate()
        assert process.returncode == 0, err.decode()
        shown: dict[str, Any] = json.loads(out)
        return shown

    shown = await cli("--dry-run")
    assert shown["dry_run"] is True
    assert shown["counts"]["recordings"] == 1
    assert await rows(runtime) == before
    assert (runtime.settings.data_dir / "recordings" / recording.path).exists()

    done = await cli()
    assert done["counts"]["recordings"] == 1
    assert done["trigger"] == "cli"
    assert await rows(runtime) == {**before, "recordings": 0, "runs": 1}
    assert not (runtime.settings.data_dir / "recordings" / recording.path).exists()


async def test_the_worker_runs_the_purge_once_per_interval(
    client: httpx.AsyncClient, api_keys: dict[Scope, str], runtime: Runtime, clock: ManualClock,
    settings: Settings, redis_prefix: str,
) -> None:
    recording = await seed(client, api_keys, runtime)
    clock.advance(timedelta(days=31))
    (job,) = retention_cron(settings)
    assert job.name == "retention"
    await job.coroutine({"runtime": runtime})
    assert not (runtime.settings.data_dir / "recordings" / recording.path).exists()
    async with runtime.db.session() as session:
        (run,) = (await session.execute(select(RetentionRun))).scalars()
    assert (run.trigger, run.counts["recordings"]) == (Trigger.SCHEDULE, 1)

    # With Redis, every node and worker may try; one of them runs per interval.
    shared = settings.model_copy(update={"redis_url": REDIS_URL, "redis_prefix": redis_prefix})
    nodes = [Runtime.open(shared), Runtime.open(shared)]
    try:
        claims = [await privacy_service(node, periodic=False).claim_run() for node in nodes]
        assert claims == [True, False]
    finally:
        for node in nodes:
            await node.close()


async def test_orphaned_recording_files_go_after_a_day(
    client: httpx.AsyncClient, api_keys: dict[Scope, str], runtime: Runtime, clock: ManualClock
) -> None:
    """A file no row names (its person was erased mid-span, or a crash came between the file
    and its row) is removed once it has been left alone for a day; a fresh one is not."""
    recording = await seed(client, api_keys, runtime)
    folder = runtime.settings.data_dir / "recordings"
    old = folder / "lost" / "old.ogg.cgr"
    fresh = folder / "lost" / "fresh.ogg.cgr"
    old.parent.mkdir(parents=True)
    for path in (old, fresh):
        path.write_bytes(b"CGREC noise")
    day_ago = (clock.now() - timedelta(days=2)).timestamp()
    os.utime(old, (day_ago, day_ago))
    admin = bearer(api_keys[Scope.ADMIN])
    preview = await client.post("/v1/admin/retention/run", headers=admin,
                                params={"dry_run": "true"})
    assert preview.json()["counts"]["recordings"] == 1
    assert old.exists()
    done = await client.post("/v1/admin/retention/run", headers=admin)
    assert done.json()["counts"]["recordings"] == 1
    assert not old.exists()
    assert fresh.exists()
    assert (folder / recording.path).exists()  # named by its row, kept until it expires
