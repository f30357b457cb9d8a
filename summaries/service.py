"""The AI jobs service on the app lifespan: creates jobs, queues them, reacts to the bus.

- `request(booking, kind)` creates (or returns) the job and queues it; without a configured
  provider it raises `ai_unavailable` (503): the features are reported, never faked.
- `booking.ended` starts transcription for bookings that request it (a summary follows it);
  the agenda is drafted as soon as the host and the stating client have granted `ai.agenda`.
- `consent.changed` withdrawing `ai.summary` deletes every summary made from that person's
  words and, when others' words remain, queues a new summary without them; withdrawing
  `transcription` also deletes their transcript segments. Each deletion is a register row.
- Jobs left `queued`/`running` by a crash are queued again at start-up.
"""

from __future__ import annotations

import asyncio
import contextlib
import uuid
from collections.abc import Sequence
from types import TracebackType

import structlog
from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession

from core.audio import AudioSource, AudioSpan
from core.bookings import Booking
from core.bus import BusEvent, Topic, publish_all
from core.errors import InvalidInput, NotFound
from core.events import BookingEnded, ConsentChanged, JobProgress
from core.purposes import Decision, Purpose
from core.runtime import Runtime
from core.tasks import stop_tasks
from summaries import outputs
from summaries.consents import LedgerConsent
from summaries.jobs import (
    Job,
    JobKind,
    JobStatus,
    do_create_job,
    get_jobs,
    get_unfinished,
    latest_job,
)
from summaries.payloads import ConsentView
from summaries.provider import AiUnavailable, OpenAIProvider
from summaries.queue import ArqQueue, InProcessQueue, JobQueue
from summaries.register import Outcome, do_register
from summaries.runner import JobRunner

log = structlog.get_logger(__name__)

WITHDRAWING = (Decision.WITHDRAWN, Decision.DENIED)


class AiJobs:
    """Enter on the lifespan (`async with`); the app's is `api.services.Services.ai_jobs`."""

    def __init__(
        self,
        runtime: Runtime,
        provider: OpenAIProvider | None,
        consent: ConsentView,
        *,
        audio: AudioSource | None = None,
        use_redis_queue: bool | None = None,
    ) -> None:
        self._rt = runtime
        self.provider = provider
        self._consent = consent
        self.audio = audio
        self._use_redis = (
            bool(runtime.settings.redis_url) if use_redis_queue is None else use_redis_queue
        )
        self.queue: JobQueue | None = None
        self.runner: JobRunner | None = None
        self._tasks: list[asyncio.Task[None]] = []

    @property
    def available(self) -> bool:
        return self.provider is not None

    async def __aenter__(self) -> AiJobs:
        if self.provider is None:
            return self
        self.runner = JobRunner(self._rt, self.provider, self._consent, self)
        self.runner.follow_up = self._enqueue
        if self._use_redis:
            self.queue = await ArqQueue.open(self._rt.settings)
        else:
            self.queue = InProcessQueue(self.runner.run)
        self._tasks.append(asyncio.create_task(self._listen(), name="ai-jobs-listen"))
        with contextlib.suppress(Exception):  # a database outage must not stop start-up
            await self.resume()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()

    async def close(self) -> None:
        tasks, self._tasks = self._tasks, []
        await stop_tasks(tasks)
        if self.queue is not None:
            await self.queue.close()
            self.queue = None
        if self.provider is not None:
            await self.provider.close()

    async def spans(self, booking_id: uuid.UUID) -> Sequence[AudioSpan]:
        """The runner's audio source: whatever `audio` is now (media/ sets it up)."""
        if self.audio is None:
            return ()
        return await self.audio.spans(booking_id)

    async def _enqueue(self, job_id: uuid.UUID) -> None:
        if self.queue is not None:
            await self.queue.enqueue(job_id)

    async def resume(self) -> int:
        """Queue again every job a crash or restart left unfinished."""
        async with self._rt.db.session() as session:
            left = [job.id for job in await get_unfinished(session)]
        for job_id in left:
            await self._enqueue(job_id)
        return len(left)

    async def request(self, booking_id: uuid.UUID, kind: JobKind) -> Job:
        """The job of `kind` for the booking, created and queued if it did not exist."""
        if self.provider is None:
            raise AiUnavailable("no AI provider is configured (CALLGATE_OPENAI_BASE_URL)")
        async with self._rt.db.session() as session:
            booking = await session.get(Booking, booking_id)
            if booking is None:
                raise NotFound(f"no booking {booking_id}")
            if kind.purpose not in booking.purposes:
                raise InvalidInput.field(
                    ("body", "kind"), f"the booking does not request {kind.purpose.value}"
                )
            created = await do_create_job(session, booking_id, kind, self._rt.clock.now())
            event = created.job.event()
        if created.new:
            await publish_all(self._rt.bus, [event])
            await self._enqueue(created.job.id)
        return created.job

    async def _listen(self) -> None:
        topics = (Topic.CONSENT_CHANGED.value, Topic.BOOKING_ENDED.value)
        while True:
            try:
                async with self._rt.bus.subscribe(*topics) as events:
                    async for event in events:
                        await self._on(event)
            except asyncio.CancelledError:
                raise
            except Exception:  # keep listening through bus outages
                log.exception("ai.listen_failed")
                await asyncio.sleep(1.0)

    async def _on(self, event: BusEvent) -> None:
        if isinstance(event, BookingEnded):
            await self._ended(event.booking_id)
        elif not isinstance(event, ConsentChanged):
            return
        elif event.decision in WITHDRAWING and event.purpose in (
            Purpose.AI_SUMMARY, Purpose.TRANSCRIPTION
        ):
            await self.withdraw(event.booking_id, event.subject_id, event.purpose)
        elif event.decision is Decision.GRANTED and event.purpose is Purpose.AI_AGENDA:
            await self._agenda_when_ready(event.booking_id)

    async def _agenda_when_ready(self, booking_id: uuid.UUID) -> None:
        """Draft the agenda once the host and the stating client have both granted it."""
        async with self._rt.db.session() as session:
            booking = await session.get(Booking, booking_id)
            if booking is None or Purpose.AI_AGENDA not in booking.purposes:
                return
            people = [p.id for p in booking.agenda_people]
            existing = await latest_job(session, booking_id, JobKind.AGENDA)
        if existing is not None and existing.status is not JobStatus.SKIPPED:
            return
        grants = await self._consent.grants(booking_id)
        if all((person, Purpose.AI_AGENDA) in grants for person in people):
            await self.request(booking_id, JobKind.AGENDA)

    async def _ended(self, booking_id: uuid.UUID) -> None:
        async with self._rt.db.session() as session:
            booking = await session.get(Booking, booking_id)
            wanted = booking is not None and Purpose.TRANSCRIPTION in booking.purposes
        if wanted:
            await self.request(booking_id, JobKind.TRANSCRIPTION)

    async def settle(self, booking_id: uuid.UUID) -> bool:
        """For the lifecycle sweep (signaling.lifecycle.AfterSession): start the after-session
        transcription if the `booking.ended` event was missed (idempotent), and say whether
        transcription or summary work remains, so the booking may become `closed`."""
        if self.provider is None:
            return False
        async with self._rt.db.session() as session:
            booking = await session.get(Booking, booking_id)
            if booking is None or Purpose.TRANSCRIPTION not in booking.purposes:
                return False
            jobs = [
                j for j in await get_jobs(session, booking_id)
                if j.kind in (JobKind.TRANSCRIPTION, JobKind.SUMMARY)
            ]
        if not any(j.kind is JobKind.TRANSCRIPTION for j in jobs):
            await self.request(booking_id, JobKind.TRANSCRIPTION)
            return True
        return any(not j.status.finished for j in jobs)

    async def withdraw(self, booking_id: uuid.UUID, subject: uuid.UUID, purpose: Purpose) -> None:
        """Delete what was made from this person's words under `purpose`; re-summarize the
        others' words if any remain. Both steps land in the register."""
        now = self._rt.clock.now()
        rerun: Job | None = None
        events: list[JobProgress] = []
        async with self._rt.db.session() as session:
            deleted = await outputs.get_summaries_with(session, booking_id, subject)
            for summary in deleted:
                self._deleted(
                    session, booking_id, subject, Purpose.AI_SUMMARY, f"summary {summary.id}"
                )
                await session.delete(summary)
            if purpose is Purpose.TRANSCRIPTION:
                await self._drop_segments(session, booking_id, subject)
            if deleted:
                latest = await latest_job(session, booking_id, JobKind.SUMMARY)
                excluded = (latest.excluded if latest else frozenset()) | {subject}
                transcript = await outputs.get_latest(session, outputs.Transcript, booking_id, now)
                others = {s.subject_id for s in (transcript.segments if transcript else [])}
                if others - excluded:
                    created = await do_create_job(
                        session, booking_id, JobKind.SUMMARY, now, rerun=True, excluded=excluded
                    )
                    rerun = created.job
                    events.append(rerun.event())
        log.info(
            "ai.withdrawal_applied", booking_id=str(booking_id), purpose=purpose.value,
            summaries_deleted=len(deleted), rerun=str(rerun.id) if rerun else None,
        )
        await publish_all(self._rt.bus, events)
        if rerun is not None:
            await self._enqueue(rerun.id)

    async def _drop_segments(
        self, session: AsyncSession, booking_id: uuid.UUID, subject: uuid.UUID
    ) -> None:
        query = (
            select(outputs.Segment)
            .join(outputs.Transcript, outputs.Segment.transcript_id == outputs.Transcript.id)
            .where(outputs.Transcript.booking_id == booking_id)
            .where(outputs.Segment.subject_id == subject)
        )
        segments = list((await session.execute(query)).scalars())
        for segment in segments:
            await session.delete(segment)
        if segments:
            self._deleted(
                session, booking_id, subject, Purpose.TRANSCRIPTION,
                f"{len(segments)} transcript segment(s)",
            )

    def _deleted(
        self, session: AsyncSession, booking_id: uuid.UUID, subject: uuid.UUID,
        purpose: Purpose, what: str,
    ) -> None:
        do_register(
            session, at=self._rt.clock.now(), booking_id=booking_id, job_id=None,
            purpose=purpose, subjects=[subject], categories=["speech_text"], entry_ids=[],
            provider="callgate", model="", endpoint="", input_bytes=0, outcome=Outcome.DELETED,
            detail=f"{purpose.value} withdrawn: {what} deleted",
        )


def ai_jobs(runtime: Runtime, audio: AudioSource | None) -> AiJobs:
    """The service as configured: the OpenAI provider from settings (or none), consent read
    from the ledger, the arq queue when Redis is configured; `audio` is media/'s recordings
    (given by the composition root, api/)."""
    provider = OpenAIProvider.from_settings(runtime.settings)
    consent = LedgerConsent(runtime.db, runtime.clock, runtime.keys)
    return AiJobs(runtime, provider, consent, audio=audio)
