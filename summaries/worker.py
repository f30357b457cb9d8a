"""`callgate worker`: runs AI jobs from the Redis (arq) queue on a separate process.

The worker builds its own Runtime from the same settings, so it reads the same database and
ledger, publishes progress on the same Redis bus, and queues follow-up jobs (a summary after
a transcript) back onto the queue.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable, Sequence
from typing import Any

import structlog
from arq.connections import RedisSettings
from arq.cron import CronJob
from arq.worker import Worker, func

from core.audio import AudioSource
from core.runtime import Runtime
from core.settings import Settings
from summaries.consents import LedgerConsent
from summaries.provider import OpenAIProvider
from summaries.queue import RUN_FUNCTION, ArqQueue, dumps, loads, queue_name
from summaries.runner import JobRunner

log = structlog.get_logger(__name__)


async def run_ai_job(ctx: dict[str, Any], job_id: str) -> str:
    runner: JobRunner = ctx["runner"]
    status = await runner.run(uuid.UUID(job_id))
    return status.value


AudioFactory = Callable[[Runtime], AudioSource]


def build_worker(
    settings: Settings,
    *,
    audio: AudioFactory,
    burst: bool = False,
    cron_jobs: Sequence[CronJob] = (),
) -> Worker:
    """An arq worker for the AI job queue (`handle_signals` off: the caller owns the loop).
    `audio` builds the recordings' audio source on the worker's runtime (media/, from api/)."""
    if not settings.redis_url:
        raise SystemExit("callgate worker needs CALLGATE_REDIS_URL (embedded mode runs jobs "
                         "inside the server)")
    provider = OpenAIProvider.from_settings(settings)
    if provider is None:
        raise SystemExit("callgate worker needs CALLGATE_OPENAI_BASE_URL or an API key")

    async def startup(ctx: dict[str, Any]) -> None:
        runtime = Runtime.open(settings)
        queue = await ArqQueue.open(settings)
        consent = LedgerConsent(runtime.db, runtime.clock, runtime.keys)
        runner = JobRunner(runtime, provider, consent, audio(runtime))
        runner.follow_up = queue.enqueue
        ctx.update(runtime=runtime, queue=queue, runner=runner)
        log.info("ai.worker_started", queue=queue_name(settings))

    async def shutdown(ctx: dict[str, Any]) -> None:
        if "queue" in ctx:
            await ctx["queue"].close()
        if "runtime" in ctx:
            await ctx["runtime"].close()
        await provider.close()

    return Worker(
        functions=[func(run_ai_job, name=RUN_FUNCTION)],
        cron_jobs=list(cron_jobs) or None,  # e.g. the retention purge (api/subjects.py)
        queue_name=queue_name(settings),
        redis_settings=RedisSettings.from_dsn(settings.redis_url),
        on_startup=startup,
        on_shutdown=shutdown,
        handle_signals=False,
        burst=burst,
        keep_result=0,
        max_tries=3,
        job_timeout=max(60, int(settings.openai_timeout_s * settings.openai_max_attempts * 4)),
        job_serializer=dumps,
        job_deserializer=loads,
        poll_delay=0.2,
    )


async def run_worker(
    settings: Settings, *, audio: AudioFactory, cron_jobs: Sequence[CronJob] = ()
) -> None:
    worker = build_worker(settings, audio=audio, cron_jobs=cron_jobs)
    try:
        await worker.main()
    finally:
        await worker.close()
