"""AI jobs: transcript-to-request pipeline throughput, and the job queue's overhead per job.

1. Pipeline: a transcript of SEGMENTS segments (4 speakers, contact data in every third one)
   through the summary job's payload gate (ledger read + consent check via `consent.gate.may`,
   name/contact redaction, sealing) -> segments/s. Baselines in the same run: the same
   segments through redaction alone, and a plain `json.dumps` of them.
2. Queue: JOBS agenda jobs asked for through the API, each answered by the local OpenAI
   stand-in; overhead = asked (POST) -> the job's `running` event on the bus, p50/p99, for the
   in-process queue and for arq over Redis with a worker. Baseline in the same run: the job's
   own provider round trip (running -> succeeded) with the same stand-in.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import statistics
import tempfile
import time
import uuid
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx

from api.app import create_app
from core.accounts import Scope, do_create_key
from core.bookings import Booking
from core.bus import Topic
from core.events import JobProgress
from core.migrate import upgrade
from core.purposes import Purpose
from core.runtime import Runtime
from core.settings import Settings
from media.audio import RecordedAudio
from summaries.consents import LedgerConsent
from summaries.payloads import PayloadGate, Utterance
from summaries.redaction import Redactor
from summaries.worker import build_worker
from tests import support
from tests.standins.openai import OpenAIStandIn
from tests.support.bookings import bearer, booking_body, credential_of

SEGMENTS = 10_000
JOBS = 80
LINES = [
    "We agreed to move the launch to May and {name} takes the budget.",
    "Send it to {mail} or call +41 44 668 18 00 after five.",
    "The draft is at https://docs.example.com/d/8f7e6a?usp=sharing, please comment.",
    "I think the second option is cheaper, but the first is faster to build.",
]
PURPOSES = ["recording.audio", "transcription", "ai.summary", "ai.agenda"]


def pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


@contextlib.asynccontextmanager
async def app_client(settings: Settings) -> AsyncIterator[tuple[httpx.AsyncClient, Runtime]]:
    app = create_app(settings)
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://bench") as client:
            yield client, app.state.runtime


async def keys(runtime: Runtime) -> dict[Scope, str]:
    out = {}
    async with runtime.db.session() as session:
        for scope in Scope:
            _, out[scope] = await do_create_key(session, scope, "bench", runtime.clock.now())
    return out


async def booking(
    client: httpx.AsyncClient, key: str, names: list[str], starts_in_h: int = 2
) -> tuple[uuid.UUID, list[dict[str, str]]]:
    body = booking_body(
        datetime.now(UTC) + timedelta(hours=starts_in_h), clients=len(names) - 1,
        purposes=PURPOSES,
    )
    body["host"]["display_name"] = names[0]
    for spec, name in zip(body["clients"], names[1:], strict=True):
        spec["display_name"] = name
    created = (await client.post("/v1/bookings", json=body, headers=bearer(key))).json()
    people = [{"id": p["id"], "credential": credential_of(p)} for p in created["participants"]]
    for person in people:
        headers = {"X-Join-Credential": person["credential"]}
        overview = (await client.get("/v1/consent", headers=headers)).json()
        for item in overview["purposes"]:
            decision = {"purpose": item["purpose"], "decision": "granted",
                        "notice_sha256": item["notice"]["sha256"]}
            response = await client.post("/v1/consent", json=decision, headers=headers)
            assert response.status_code == 201, response.text
    return uuid.UUID(created["id"]), people


async def pipeline(client: httpx.AsyncClient, runtime: Runtime, key: str) -> dict[str, float]:
    names = ["Ada Lovelace", "Grace Hopper", "Linus Torvalds", "Erin Example"]
    booking_id, people = await booking(client, key, names)
    labels = ["Host", "Client 1", "Client 2", "Client 3"]
    utterances = [
        Utterance(
            uuid.UUID(people[i % 4]["id"]), labels[i % 4], i * 1000, i * 1000 + 900,
            LINES[i % 4].format(name=names[(i + 1) % 4], mail=f"user{i}@example.org"),
        )
        for i in range(SEGMENTS)
    ]
    async with runtime.db.session() as session:
        row = await session.get(Booking, booking_id)
        assert row is not None
    gate = PayloadGate(LedgerConsent(runtime.db, runtime.clock, runtime.keys), Purpose.AI_SUMMARY)
    started = time.perf_counter()
    payload = await gate.summary(row, utterances, consenting_only=False)
    gated = time.perf_counter() - started
    assert len(payload.pieces) == SEGMENTS
    assert "@" not in "".join(p.text for p in payload.pieces)
    scrub = Redactor({n: labels[i] for i, n in enumerate(names)})
    started = time.perf_counter()
    for u in utterances:
        scrub(u.text)
    redaction = time.perf_counter() - started
    started = time.perf_counter()
    json.dumps([{"speaker": u.label, "text": u.text} for u in utterances])
    dumps = time.perf_counter() - started
    return {"gate": SEGMENTS / gated, "redact": SEGMENTS / redaction, "dumps": SEGMENTS / dumps}


async def setup(settings: Settings) -> list[tuple[uuid.UUID, list[dict[str, str]]]]:
    """JOBS bookings with every grant, made through an app without an AI provider, so no job
    starts by itself before the measured POSTs."""
    plain = settings.model_copy(update={"openai_base_url": None, "openai_api_key": None})
    async with app_client(plain) as (client, runtime):
        key = (await keys(runtime))[Scope.SCHEDULER]
        return [await booking(client, key, ["Ada Host", "Cleo Client"]) for _ in range(JOBS)]


async def queue_overhead(
    client: httpx.AsyncClient, runtime: Runtime,
    sessions: list[tuple[uuid.UUID, list[dict[str, str]]]],
) -> tuple[list[float], list[float]]:
    asked: dict[str, float] = {}
    started: dict[str, float] = {}
    done: dict[str, float] = {}
    async with runtime.bus.subscribe(Topic.JOB_PROGRESS.value) as events:

        async def watch() -> None:
            async for event in events:
                now = time.perf_counter()
                if not isinstance(event, JobProgress):
                    continue
                booking_id = str(event.booking_id)
                if event.status == "running":
                    started.setdefault(booking_id, now)
                elif event.status == "succeeded":
                    done.setdefault(booking_id, now)

        watcher = asyncio.create_task(watch())
        for booking_id, people in sessions:
            headers = {"X-Join-Credential": people[0]["credential"]}
            asked[str(booking_id)] = time.perf_counter()
            response = await client.post(
                f"/v1/bookings/{booking_id}/jobs", json={"kind": "ai.agenda"}, headers=headers
            )
            assert response.status_code == 202, response.text
            await asyncio.sleep(0.02)  # one job at a time in flight: overhead, not backlog
        for _ in range(3000):
            if len(done) >= JOBS:
                break
            await asyncio.sleep(0.01)
        watcher.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await watcher
    assert len(done) == JOBS, f"only {len(done)} of {JOBS} jobs finished"
    overhead = [(started[b] - asked[b]) * 1000 for b in asked]
    provider = [(done[b] - started[b]) * 1000 for b in asked]
    return overhead, provider


async def run() -> str:
    with tempfile.TemporaryDirectory() as folder:
        async with OpenAIStandIn() as standin:
            rows = []
            base: dict[str, Any] = {
                "data_dir": Path(folder) / "data", "secret_key": support.SECRET,
                "master_key": support.MASTER, "public_base_url": "http://bench",
                "log_level": "ERROR", "openai_base_url": standin.base_url,
                "openai_api_key": "sk-bench",
            }
            url = f"sqlite+aiosqlite:///{folder}/in-process.db"
            await upgrade(url)
            # One data folder per database: the ledger's witness of its head lives there, and a
            # witness of another database's chain is (rightly) a tampering alarm.
            settings = Settings(
                database_url=url, **{**base, "data_dir": Path(folder) / "in-process"}
            )
            sessions = await setup(settings)
            async with app_client(settings) as (client, runtime):
                key = (await keys(runtime))[Scope.SCHEDULER]
                rates = await pipeline(client, runtime, key)
                rows.append(("in-process", *await queue_overhead(client, runtime, sessions)))
            prefix = f"cgbench:{uuid.uuid4().hex[:8]}"
            url = f"sqlite+aiosqlite:///{folder}/arq.db"
            await upgrade(url)
            settings = Settings(
                database_url=url, redis_url=support.REDIS_URL, redis_prefix=prefix,
                **{**base, "data_dir": Path(folder) / "arq"},
            )
            sessions = await setup(settings)
            worker = build_worker(settings, audio=RecordedAudio)
            worker_task = asyncio.create_task(worker.main())
            try:
                async with app_client(settings) as (client, runtime):
                    measured = await queue_overhead(client, runtime, sessions)
                    rows.append(("arq + Redis, 1 worker", *measured))
            finally:
                worker_task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await worker_task
                await worker.close()
    lines = [
        "## AI jobs (summaries)",
        "",
        f"**Transcript-to-request pipeline**, {SEGMENTS:,} segments of 4 speakers (contact data "
        "in half of them), one summary payload:",
        "",
        "| path | segments/s | vs. gate |",
        "|---|---:|---:|",
        f"| gate: ledger read + consent check + redaction + seal | {rates['gate']:,.0f} | 1.00 |",
        f"| baseline: redaction alone | {rates['redact']:,.0f} | "
        f"{rates['redact'] / rates['gate']:.2f} |",
        f"| baseline: plain `json.dumps` | {rates['dumps']:,.0f} | "
        f"{rates['dumps'] / rates['gate']:.2f} |",
        "",
        f"**Job queue overhead**, {JOBS} `ai.agenda` jobs one after another, each answered by "
        "the local OpenAI stand-in; overhead = POST asking for the job -> its `running` event; "
        "baseline = the job's own provider round trip (`running` -> `succeeded`):",
        "",
        "| queue | overhead p50 | overhead p99 | provider round trip p50 | overhead / round trip |",
        "|---|---:|---:|---:|---:|",
    ]
    for name, overhead, provider in rows:
        p50 = statistics.median(overhead)
        base_p50 = statistics.median(provider)
        lines.append(
            f"| {name} | {p50:.1f} ms | {pct(overhead, 0.99):.1f} ms | {base_p50:.1f} ms | "
            f"{p50 / base_p50:.2f} |"
        )
    load = os.getloadavg()[0]
    lines += [
        "",
        f"Load average at the end of the run: {load:.1f} on {os.cpu_count()} cores (the machine "
        "is shared with other processes; figures on an idle machine are lower).",
    ]
    return "\n".join(lines)
