"""Job rows: durable state of every AI job (status, attempts, progress, error, result).

A job is created once per dedupe key (kind, booking, generation), so asking twice gives the
same job; asking after it was skipped or failed, or a re-run after a withdrawal, makes a new
generation. Rows outlive crashes: a job found
`queued` or `running` at start-up is handed to the queue again (`get_unfinished`).
"""

from __future__ import annotations

import enum
import uuid
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import JSON, ForeignKey, Integer, String, Text, Uuid, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncSession
from sqlalchemy.orm import Mapped, mapped_column

from core.database import Base, UTCDateTime, enum_column
from core.errors import NotFound
from core.events import JobProgress
from core.purposes import Purpose


class JobKind(enum.StrEnum):
    AGENDA = "ai.agenda"
    TRANSCRIPTION = "transcription"
    SUMMARY = "ai.summary"

    @property
    def purpose(self) -> Purpose:
        """The one purpose a job of this kind may process data for."""
        return Purpose(self.value)


class JobStatus(enum.StrEnum):
    QUEUED = "queued"
    RUNNING = "running"
    SUCCEEDED = "succeeded"
    SKIPPED = "skipped"  # consent did not allow it; `error` says why
    FAILED = "failed"

    @property
    def finished(self) -> bool:
        return self in (JobStatus.SUCCEEDED, JobStatus.SKIPPED, JobStatus.FAILED)


class Job(Base):
    __tablename__ = "jobs"

    id: Mapped[uuid.UUID] = mapped_column(Uuid, primary_key=True, default=uuid.uuid4)
    booking_id: Mapped[uuid.UUID] = mapped_column(
        ForeignKey("bookings.id", ondelete="CASCADE"), index=True
    )
    kind: Mapped[JobKind] = mapped_column(enum_column(JobKind))
    status: Mapped[JobStatus] = mapped_column(enum_column(JobStatus), index=True)
    generation: Mapped[int] = mapped_column(Integer, default=0)
    dedupe_key: Mapped[str] = mapped_column(String(200), unique=True)
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    provider_attempts: Mapped[int] = mapped_column(Integer, default=0)
    progress: Mapped[int] = mapped_column(Integer, default=0)
    error_code: Mapped[str | None] = mapped_column(String(64), nullable=True)
    error: Mapped[str | None] = mapped_column(Text, nullable=True)
    result_id: Mapped[uuid.UUID | None] = mapped_column(Uuid, nullable=True)
    excluded_subjects: Mapped[list[str]] = mapped_column(JSON, default=list)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime())
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime())
    started_at: Mapped[datetime | None] = mapped_column(UTCDateTime(), nullable=True)
    finished_at: Mapped[datetime | None] = mapped_column(UTCDateTime(), nullable=True)

    @property
    def excluded(self) -> frozenset[uuid.UUID]:
        return frozenset(uuid.UUID(s) for s in self.excluded_subjects)

    def view(self) -> dict[str, Any]:
        return {
            "id": str(self.id),
            "booking_id": str(self.booking_id),
            "kind": self.kind.value,
            "status": self.status.value,
            "attempts": self.attempts,
            "provider_attempts": self.provider_attempts,
            "progress": self.progress,
            "error_code": self.error_code,
            "error": self.error,
            "result_id": str(self.result_id) if self.result_id else None,
            "created_at": self.created_at.isoformat(),
            "started_at": self.started_at.isoformat() if self.started_at else None,
            "finished_at": self.finished_at.isoformat() if self.finished_at else None,
        }

    def event(self) -> JobProgress:
        return JobProgress(booking_id=self.booking_id, status=self.status.value, job=self.view())


@dataclass(frozen=True)
class Created:
    job: Job
    new: bool


def dedupe_key(kind: JobKind, booking_id: uuid.UUID, generation: int) -> str:
    return f"{kind.value}:{booking_id}:{generation}"


async def latest_job(session: AsyncSession, booking_id: uuid.UUID, kind: JobKind) -> Job | None:
    query = (
        select(Job)
        .where(Job.booking_id == booking_id, Job.kind == kind)
        .order_by(Job.generation.desc())
        .limit(1)
    )
    return (await session.execute(query)).scalar_one_or_none()


async def do_create_job(
    session: AsyncSession,
    booking_id: uuid.UUID,
    kind: JobKind,
    now: datetime,
    *,
    rerun: bool = False,
    excluded: frozenset[uuid.UUID] = frozenset(),
) -> Created:
    """The job of this kind for the booking: the existing one while it is queued, running or
    succeeded; else (none yet, skipped, failed, or a re-run) a new generation. Concurrent
    creators meet on the unique dedupe key."""
    latest = await latest_job(session, booking_id, kind)
    retryable = latest is not None and latest.status in (JobStatus.SKIPPED, JobStatus.FAILED)
    if latest is not None and not rerun and not retryable:
        return Created(latest, False)
    generation = latest.generation + 1 if latest is not None else 0
    job = Job(
        id=uuid.uuid4(),
        booking_id=booking_id,
        kind=kind,
        status=JobStatus.QUEUED,
        generation=generation,
        dedupe_key=dedupe_key(kind, booking_id, generation),
        attempts=0,
        provider_attempts=0,
        progress=0,
        excluded_subjects=sorted(str(s) for s in excluded),
        created_at=now,
        updated_at=now,
    )
    try:
        async with session.begin_nested():
            session.add(job)
            await session.flush()
    except IntegrityError:
        existing = await latest_job(session, booking_id, kind)
        if existing is None:
            raise
        return Created(existing, False)
    return Created(job, True)


async def access_job(session: AsyncSession, job_id: uuid.UUID, *, lock: bool = False) -> Job:
    """The job row; with `lock`, held until the transaction ends (SELECT ... FOR UPDATE on
    PostgreSQL; SQLite writers are serialized anyway), so two runners cannot both finish it."""
    job = await session.get(Job, job_id, with_for_update=lock, populate_existing=lock)
    if job is None:
        raise NotFound(f"no job {job_id}")
    return job


async def get_jobs(session: AsyncSession, booking_id: uuid.UUID) -> list[Job]:
    query = select(Job).where(Job.booking_id == booking_id).order_by(Job.created_at, Job.id)
    return list((await session.execute(query)).scalars())


async def get_unfinished(session: AsyncSession) -> list[Job]:
    """Jobs a crash or restart left behind: to be handed to the queue again."""
    query = select(Job).where(Job.status.in_([JobStatus.QUEUED, JobStatus.RUNNING]))
    return list((await session.execute(query.order_by(Job.created_at))).scalars())


def mark_started(job: Job, now: datetime) -> None:
    job.status = JobStatus.RUNNING
    job.attempts += 1
    job.started_at = now
    job.updated_at = now
    job.error = None
    job.error_code = None


def mark_progress(job: Job, progress: int, now: datetime) -> None:
    job.progress = max(job.progress, min(progress, 99))
    job.updated_at = now


def mark_finished(
    job: Job,
    status: JobStatus,
    now: datetime,
    *,
    result_id: uuid.UUID | None = None,
    error_code: str | None = None,
    error: str | None = None,
) -> None:
    job.status = status
    job.progress = 100
    job.result_id = result_id
    job.error_code = error_code
    job.error = error
    job.finished_at = now
    job.updated_at = now
