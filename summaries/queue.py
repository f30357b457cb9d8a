"""Where job ids wait to be run: in this process (embedded default) or on Redis via arq.

The job row is the truth (status, attempts, result); the queue only carries its id, so a lost
or repeated delivery is harmless: the runner leaves finished jobs alone and stores each output
at most once. With Redis, arq's `_job_id` is the job id, so enqueueing twice runs once, and
`callgate worker` processes run the jobs.
"""

from __future__ import annotations

import asyncio
import json
import uuid
from collections.abc import Awaitable, Callable
from typing import Any, Protocol

import structlog
from arq.connections import ArqRedis, RedisSettings, create_pool

from core.settings import Settings
from core.tasks import stop_tasks

log = structlog.get_logger(__name__)

RUN_FUNCTION = "run_ai_job"

RunJob = Callable[[uuid.UUID], Awaitable[object]]


class JobQueue(Protocol):
    async def enqueue(self, job_id: uuid.UUID) -> None: ...

    async def close(self) -> None: ...


def queue_name(settings: Settings) -> str:
    return f"{settings.redis_prefix}:ai-jobs"


def dumps(obj: Any) -> bytes:
    """arq's wire format: JSON, not pickle (a Redis writer must not get code execution)."""
    return json.dumps(obj, default=str).encode()


def loads(raw: bytes) -> Any:
    return json.loads(raw)


class InProcessQueue:
    """A few asyncio tasks draining a local queue; `close()` cancels them (idempotent)."""

    def __init__(self, run: RunJob, *, concurrency: int = 2) -> None:
        self._run = run
        self._queue: asyncio.Queue[uuid.UUID] = asyncio.Queue()
        self._tasks = [
            asyncio.create_task(self._drain(), name=f"ai-jobs-{n}") for n in range(concurrency)
        ]

    async def enqueue(self, job_id: uuid.UUID) -> None:
        self._queue.put_nowait(job_id)

    async def _drain(self) -> None:
        while True:
            job_id = await self._queue.get()
            try:
                await self._run(job_id)
            except Exception:  # the worker boundary: a broken job must not stop the others
                log.exception("ai.queue_run_failed", job_id=str(job_id))

    async def close(self) -> None:
        tasks, self._tasks = self._tasks, []
        await stop_tasks(tasks)


class ArqQueue:
    """Enqueues onto the arq queue that `callgate worker` processes consume."""

    def __init__(self, pool: ArqRedis, name: str) -> None:
        self._pool = pool
        self._name = name

    @classmethod
    async def open(cls, settings: Settings) -> ArqQueue:
        if not settings.redis_url:
            raise ValueError("the arq queue needs CALLGATE_REDIS_URL")
        pool = await create_pool(
            RedisSettings.from_dsn(settings.redis_url),
            job_serializer=dumps,
            job_deserializer=loads,
            default_queue_name=queue_name(settings),
        )
        return cls(pool, queue_name(settings))

    async def enqueue(self, job_id: uuid.UUID) -> None:
        await self._pool.enqueue_job(
            RUN_FUNCTION, str(job_id), _job_id=str(job_id), _queue_name=self._name
        )

    async def close(self) -> None:
        await self._pool.aclose()
