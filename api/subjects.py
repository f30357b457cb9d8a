"""Composition of data-subject rights: each domain's `SubjectData`, in erasure order.

Only `api/` (and the CLI, a composition root too) knows every domain; privacy/ sees them
through the `core.subjects.SubjectData` protocol. Order matters for retention: media
unlinks a booking's files before signaling deletes the booking (which cascades to its rows).
"""

from __future__ import annotations

from typing import Any

from arq.cron import CronJob, cron

from consent.subjects import ConsentSubjects
from core.runtime import Runtime
from core.settings import Settings
from core.subjects import SubjectData
from media.subjects import MediaSubjects
from privacy.records import Trigger
from privacy.service import Privacy
from signaling.subjects import SignalingSubjects
from summaries.subjects import SummariesSubjects


def subject_data(runtime: Runtime) -> list[SubjectData]:
    return [
        SummariesSubjects(runtime),
        MediaSubjects(runtime),
        ConsentSubjects(runtime),
        SignalingSubjects(runtime),
    ]


def privacy_service(runtime: Runtime, *, periodic: bool = True) -> Privacy:
    return Privacy(runtime, subject_data(runtime), periodic=periodic)


async def purge_from_worker(ctx: dict[str, Any]) -> None:
    """The arq cron job: the retention purge on a worker (its Runtime is `ctx["runtime"]`)."""
    privacy = privacy_service(ctx["runtime"], periodic=False)
    if await privacy.claim_run():
        await privacy.run_retention(trigger=Trigger.SCHEDULE)


def retention_cron(settings: Settings) -> list[CronJob]:
    """The purge on the worker's schedule, every `retention_interval_s` rounded to minutes
    (hours past one hour); none when the interval is 0."""
    minutes = settings.retention_interval_s // 60
    if settings.retention_interval_s <= 0:
        return []
    if minutes < 60:
        every = set(range(0, 60, max(1, minutes)))
        return [cron(purge_from_worker, name="retention", minute=every)]
    hours = set(range(0, 24, max(1, min(24, minutes // 60))))
    return [cron(purge_from_worker, name="retention", minute={0}, hour=hours)]
