"""Jobs as durable rows: provider failures end in a recorded state, retries and crashes never
store two outputs, and with Redis configured `callgate worker` processes run the jobs."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from sqlalchemy import func, select

from api.services import Services
from core.accounts import Scope
from core.clock import ManualClock
from core.runtime import Runtime
from core.settings import Settings
from summaries import outputs
from summaries.jobs import JobKind, JobStatus, do_create_job, mark_started
from summaries.queue import ArqQueue
from summaries.service import AiJobs
from tests.standins.openai import Fault, FaultKind, OpenAIStandIn
from tests.support import REDIS_URL
from tests.support.ai import (
    Session,
    book_session,
    grant,
    jobs_of,
    settle,
    soon,
    until_jobs,
)
from tests.support.bookings import bearer

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture
async def standin() -> AsyncIterator[OpenAIStandIn]:
    async with OpenAIStandIn() as server:
        yield server


@pytest.fixture
def settings_overrides(standin: OpenAIStandIn) -> dict[str, Any]:
    return {
        "openai_base_url": standin.base_url,
        "openai_api_key": "sk-test",
        "openai_timeout_s": 1.0,
        "openai_max_attempts": 3,
    }


async def agenda_session(
    client: httpx.AsyncClient, keys: dict[Scope, str], clock: ManualClock
) -> Session:
    session = await book_session(client, keys, soon(clock.now()), purposes=("ai.agenda",))
    for person in session.people:
        await grant(client, person, "ai.agenda")
    return session


async def started(client: httpx.AsyncClient, session: Session) -> dict[str, Any]:
    """The agenda job, which starts by itself once both people granted ai.agenda."""
    await until_jobs(client, session, 1)
    (job,) = await jobs_of(client, session)
    return job


async def agendas(runtime: Runtime) -> int:
    async with runtime.db.session() as db:
        return int(await db.scalar(select(func.count()).select_from(outputs.Agenda)) or 0)


async def register_outcomes(client: httpx.AsyncClient, keys: dict[Scope, str]) -> list[str]:
    rows = (await client.get("/v1/admin/processing", headers=bearer(keys[Scope.ADMIN]))).json()
    return sorted(r["outcome"] for r in rows["entries"])


async def test_429_with_retry_after_then_success(
    client: httpx.AsyncClient, api_keys: dict[Scope, str], clock: ManualClock,
    standin: OpenAIStandIn,
) -> None:
    session = await agenda_session(client, api_keys, clock)
    standin.fail(Fault(FaultKind.RATE_LIMITED, 1))
    await started(client, session)
    (job,) = await settle(client, session)
    assert (job["status"], job["provider_attempts"]) == ("succeeded", 2)
    first, second = standin.requests
    assert first.answered == 429
    assert second.at - first.at >= 1.0  # Retry-After: 1 was honoured
    assert await register_outcomes(client, api_keys) == ["sent"]


@pytest.mark.parametrize(
    ("faults", "code"),
    [
        ([Fault(FaultKind.MALFORMED)] * 3, "malformed_output"),
        ([Fault(FaultKind.SERVER_ERROR)] * 3, "provider_error"),
        ([Fault(FaultKind.DELAY, 3.0)] * 3, "provider_timeout"),
        ([Fault(FaultKind.BAD_REQUEST)], "provider_rejected"),
    ],
)
async def test_provider_failures_fail_the_job_with_a_code_and_store_nothing(
    client: httpx.AsyncClient, api_keys: dict[Scope, str], clock: ManualClock,
    standin: OpenAIStandIn, runtime: Runtime, faults: list[Fault], code: str,
) -> None:
    session = await agenda_session(client, api_keys, clock)
    standin.fail(*faults)
    await started(client, session)
    (job,) = await settle(client, session)
    assert (job["status"], job["error_code"]) == ("failed", code)
    assert job["provider_attempts"] == len(faults)
    assert len(standin.requests) == len(faults)
    assert await agendas(runtime) == 0
    assert await register_outcomes(client, api_keys) == ["failed"]
    missing = await client.get(f"/v1/bookings/{session.booking_id}/agenda",
                               headers=session.host.headers)
    assert missing.status_code == 404


async def test_running_a_job_again_stores_one_output(
    client: httpx.AsyncClient, api_keys: dict[Scope, str], clock: ManualClock,
    standin: OpenAIStandIn, runtime: Runtime, services: Services,
) -> None:
    session = await agenda_session(client, api_keys, clock)
    job = await started(client, session)
    await settle(client, session)
    service = services.ai_jobs
    assert isinstance(service, AiJobs)
    assert service.runner is not None
    again = await asyncio.gather(*(service.runner.run(uuid.UUID(job["id"])) for _ in range(3)))
    assert set(again) == {JobStatus.SUCCEEDED}
    assert await agendas(runtime) == 1
    assert len(standin.requests) == 1


async def test_a_job_left_running_by_a_crash_is_resumed_once(
    client: httpx.AsyncClient, api_keys: dict[Scope, str], clock: ManualClock,
    standin: OpenAIStandIn, runtime: Runtime, services: Services,
) -> None:
    session = await book_session(client, api_keys, soon(clock.now()), purposes=("ai.agenda",))
    await grant(client, session.host, "ai.agenda")
    async with runtime.db.session() as db:  # what a process killed mid-job leaves behind
        created = await do_create_job(db, session.booking_id, JobKind.AGENDA, clock.now())
        mark_started(created.job, clock.now())
    await grant(client, session.people[1], "ai.agenda")
    service = services.ai_jobs
    assert isinstance(service, AiJobs)
    assert await service.resume() == 1
    (job,) = await settle(client, session)
    assert (job["status"], job["attempts"]) == ("succeeded", 2)
    assert await agendas(runtime) == 1


@pytest.fixture
def redis_overrides(
    standin: OpenAIStandIn, redis_prefix: str
) -> dict[str, Any]:
    return {
        "openai_base_url": standin.base_url,
        "openai_api_key": "sk-test",
        "redis_url": REDIS_URL,
        "redis_prefix": redis_prefix,
    }


class TestWorkerProcess:
    @pytest.fixture
    def settings_overrides(self, redis_overrides: dict[str, Any]) -> dict[str, Any]:
        return redis_overrides

    @pytest.fixture
    def worker(self, settings: Settings) -> Any:
        env = dict(os.environ)
        names = ("database_url", "data_dir", "redis_url", "redis_prefix", "openai_base_url",
                 "secret_key", "master_key", "openai_api_key")
        for name in names:
            value = getattr(settings, name)
            raw = value.get_secret_value() if hasattr(value, "get_secret_value") else value
            env[f"CALLGATE_{name.upper()}"] = str(raw)
        proc = subprocess.Popen(
            [sys.executable, "-c", "from api.cli import main; main()", "worker"],
            cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
        )
        yield proc
        proc.send_signal(signal.SIGINT)
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        if proc.stderr is not None:
            proc.stderr.close()

    async def test_callgate_worker_runs_queued_jobs(
        self, client: httpx.AsyncClient, api_keys: dict[Scope, str], clock: ManualClock,
        standin: OpenAIStandIn, runtime: Runtime, services: Services,
        worker: subprocess.Popen[bytes],
    ) -> None:
        service = services.ai_jobs
        assert isinstance(service, AiJobs)
        assert isinstance(service.queue, ArqQueue)
        session = await agenda_session(client, api_keys, clock)
        await started(client, session)
        (job,) = await settle(client, session)
        assert job["status"] == "succeeded"
        assert worker.poll() is None  # ran on the worker process, which is still up
        assert len(standin.requests) == 1
        agenda = await client.get(f"/v1/bookings/{session.booking_id}/agenda",
                                  headers=session.host.headers)
        assert agenda.status_code == 200
