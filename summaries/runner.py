"""Runs one AI job: build its purpose-bound payload, call the provider, store, register.

The order makes effects at-most-once: an output is looked up by job id before any provider
call and stored in the same transaction that finishes the job (and the output table's unique
job id refuses a second one), so a retried or resumed job never stores two results. Every
outcome (sent, failed, skipped by consent) leaves a processing-register row.
"""

from __future__ import annotations

import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any, cast

import structlog
from sqlalchemy.ext.asyncio import AsyncSession

from core.audio import AudioSource
from core.bookings import Booking
from core.bus import publish_all
from core.events import JobProgress
from core.organizations import org_settings
from core.outbox import AgendaReady, SummaryReady, TranscriptReady, do_write
from core.purposes import Purpose, RecordingPolicy
from core.runtime import Runtime
from core.subjects import Category, retention_days
from summaries import outputs
from summaries.jobs import (
    Job,
    JobKind,
    JobStatus,
    access_job,
    do_create_job,
    mark_finished,
    mark_progress,
    mark_started,
)
from summaries.payloads import (
    ConsentView,
    NotPermitted,
    P,
    PayloadGate,
    PurposeBoundPayload,
    Utterance,
)
from summaries.provider import OpenAIProvider, ProviderError
from summaries.register import Outcome, do_register
from summaries.sealing import Sealer

log = structlog.get_logger(__name__)


@dataclass(frozen=True)
class _Stored:
    result_id: uuid.UUID
    follow_up: JobKind | None = None


class JobRunner:
    def __init__(
        self,
        runtime: Runtime,
        provider: OpenAIProvider,
        consent: ConsentView,
        audio: AudioSource | None = None,
    ) -> None:
        self._rt = runtime
        self._provider = provider
        self._consent = consent
        self._audio = audio
        # Queues a follow-up job (a summary after a transcript); set by whoever owns the queue.
        self.follow_up: Callable[[uuid.UUID], Awaitable[None]] | None = None

    async def run(self, job_id: uuid.UUID) -> JobStatus:
        """Run the job once; returns its final status. A finished job is left alone."""
        started = await self._start(job_id)
        if started is None:
            async with self._rt.db.session() as session:
                return (await access_job(session, job_id)).status
        job, booking = started
        try:
            return await self._dispatch(job, booking)
        except NotPermitted as exc:
            await self._skip(job, booking, exc)
            return JobStatus.SKIPPED
        except ProviderError as exc:
            await self._fail(job, exc.code, exc.detail, attempts=exc.attempts)
            return JobStatus.FAILED
        except Exception as exc:  # the job boundary: record, never crash the worker
            log.exception("ai.job_crashed", job_id=str(job.id))
            await self._fail(job, "internal", type(exc).__name__, attempts=0)
            return JobStatus.FAILED

    async def _start(self, job_id: uuid.UUID) -> tuple[Job, Booking] | None:
        now = self._rt.clock.now()
        async with self._rt.db.session() as session:
            job = await access_job(session, job_id, lock=True)
            if job.status.finished:
                return None
            mark_started(job, now)
            booking = await session.get(Booking, job.booking_id)
            if booking is None:
                mark_finished(job, JobStatus.FAILED, now, error_code="gone", error="no booking")
            event = job.event()
        await publish_all(self._rt.bus, [event])
        return (job, booking) if booking is not None else None

    async def _dispatch(self, job: Job, booking: Booking) -> JobStatus:
        gate = PayloadGate(self._consent, job.kind.purpose)
        if job.kind is JobKind.AGENDA:
            payload_a = await gate.agenda(booking)
            await self._progress(job, 30)
            minutes = max(5, int((booking.ends_at - booking.starts_at).total_seconds() // 60))
            agenda = await self._provider.agenda(payload_a, minutes=minutes)
            items = [i.model_dump() for i in agenda.value.items]
            await self._store(job, booking, payload_a, agenda.attempts, agenda.sent_bytes, items)
        elif job.kind is JobKind.TRANSCRIPTION:
            spans = await self._audio.spans(booking.id) if self._audio is not None else ()
            payload_t = await gate.transcription(booking, spans)
            await self._progress(job, 20)
            heard = await self._provider.transcribe(payload_t)
            texts = [h.text for h in heard.value]
            await self._store(job, booking, payload_t, heard.attempts, heard.sent_bytes, texts)
        else:
            utterances = await self._utterances(booking, job)
            consenting_only = booking.recording_policy is RecordingPolicy.PER_PARTICIPANT
            payload_s = await gate.summary(booking, utterances, consenting_only=consenting_only)
            await self._progress(job, 30)
            summary = await self._provider.summarize(payload_s)
            body = summary.value.model_dump()
            await self._store(job, booking, payload_s, summary.attempts, summary.sent_bytes, body)
        return JobStatus.SUCCEEDED

    async def _utterances(self, booking: Booking, job: Job) -> list[Utterance]:
        async with self._rt.db.session() as session:
            transcript = await outputs.get_latest(
                session, outputs.Transcript, booking.id, self._rt.clock.now()
            )
            if transcript is None:
                raise NotPermitted("there is no transcript to summarize")
            sealer = Sealer(session, self._rt.keys, self._rt.clock.now())
            utterances = []
            for s in transcript.segments:
                if s.subject_id in job.excluded:
                    continue
                text = await sealer.open_line(transcript.id, s.subject_id, s.text)
                if text is not None:  # (None: the speaker was erased meanwhile)
                    utterances.append(Utterance(s.subject_id, s.label, s.start_ms, s.end_ms, text))
            return utterances

    async def _progress(self, job: Job, progress: int) -> None:
        async with self._rt.db.session() as session:
            row = await access_job(session, job.id)
            mark_progress(row, progress, self._rt.clock.now())
            event = row.event()
        await publish_all(self._rt.bus, [event])

    def _register(
        self,
        session: AsyncSession,
        job: Job,
        payload: PurposeBoundPayload[P],
        outcome: Outcome,
        *,
        sent_bytes: int,
        detail: str = "",
    ) -> None:
        do_register(
            session,
            at=self._rt.clock.now(),
            booking_id=job.booking_id,
            job_id=job.id,
            purpose=payload.purpose,
            subjects=payload.subjects,
            categories=payload.categories,
            entry_ids=payload.entry_ids,
            provider=self._provider.name,
            model=self._model(job.kind),
            endpoint=self._provider.host,
            input_bytes=sent_bytes,
            outcome=outcome,
            detail=detail,
        )

    def _model(self, kind: JobKind) -> str:
        if kind is JobKind.TRANSCRIPTION:
            return self._provider.transcription_model
        return self._provider.model

    async def _store(
        self,
        job: Job,
        booking: Booking,
        payload: PurposeBoundPayload[P],
        attempts: int,
        sent_bytes: int,
        result: object,
    ) -> None:
        lost = await self._lost(payload)
        if lost:
            await self._discard(job, booking, payload, sent_bytes, attempts, lost)
            return
        now = self._rt.clock.now()
        events: list[JobProgress] = []
        follow: Job | None = None
        async with self._rt.db.session() as session:
            row = await access_job(session, job.id, lock=True)
            if row.status.finished:  # another runner finished it meanwhile
                return
            stored = await self._save(session, row, booking, payload, result)
            row.provider_attempts += attempts
            detail = f"{len(payload.excluded)} person(s) left out" if payload.excluded else ""
            self._register(session, row, payload, Outcome.SENT, sent_bytes=sent_bytes,
                           detail=detail)
            mark_finished(row, JobStatus.SUCCEEDED, now, result_id=stored.result_id)
            events.append(row.event())
            if stored.follow_up is not None:
                created = await do_create_job(session, booking.id, stored.follow_up, now)
                if created.new:
                    follow = created.job
                    events.append(follow.event())
        await publish_all(self._rt.bus, events)
        if follow is not None and self.follow_up is not None:
            await self.follow_up(follow.id)

    async def _lost(self, payload: PurposeBoundPayload[P]) -> set[uuid.UUID]:
        """Persons whose grant behind the payload was withdrawn while the provider worked."""
        in_force = set((await self._consent.grants(payload.booking_id)).values())
        return {
            piece.subject_id
            for piece in payload.pieces
            if piece.subject_id is not None and not set(piece.entry_ids) <= in_force
        }

    async def _discard(
        self,
        job: Job,
        booking: Booking,
        payload: PurposeBoundPayload[P],
        sent_bytes: int,
        attempts: int,
        lost: set[uuid.UUID],
    ) -> None:
        """The provider answered after someone withdrew: keep nothing, log it, and (for a
        summary) queue a new one without them."""
        now = self._rt.clock.now()
        reason = "consent was withdrawn while the job ran; its output was discarded"
        rerun: Job | None = None
        events: list[JobProgress] = []
        async with self._rt.db.session() as session:
            row = await access_job(session, job.id, lock=True)
            if row.status.finished:
                return
            row.provider_attempts += attempts
            self._register(session, row, payload, Outcome.SENT, sent_bytes=sent_bytes,
                           detail=f"output discarded: {len(lost)} person(s) withdrew")
            mark_finished(row, JobStatus.SKIPPED, now, error_code="consent", error=reason)
            events.append(row.event())
            if job.kind is JobKind.SUMMARY:
                created = await do_create_job(
                    session, booking.id, JobKind.SUMMARY, now, rerun=True,
                    excluded=row.excluded | frozenset(lost),
                )
                rerun = created.job
                events.append(rerun.event())
        log.info("ai.output_discarded", job_id=str(job.id), withdrew=len(lost))
        await publish_all(self._rt.bus, events)
        if rerun is not None and self.follow_up is not None:
            await self.follow_up(rerun.id)

    async def _save(
        self,
        session: AsyncSession,
        job: Job,
        booking: Booking,
        payload: PurposeBoundPayload[P],
        result: object,
    ) -> _Stored:
        """Store the output unless this job already stored one (at-most-once)."""
        models: dict[JobKind, type[outputs.Agenda | outputs.Transcript | outputs.Summary]] = {
            JobKind.AGENDA: outputs.Agenda,
            JobKind.TRANSCRIPTION: outputs.Transcript,
            JobKind.SUMMARY: outputs.Summary,
        }
        existing = await outputs.get_for_job(session, models[job.kind], job.id)
        if existing is not None:
            return _Stored(existing)
        now = self._rt.clock.now()
        # the deadlines the booking's organization's notices stated
        settings = await org_settings(session, self._rt.settings, booking.org_id)
        days = settings.summary_retention_days
        entry_ids = [str(e) for e in payload.entry_ids]
        subjects = [str(s) for s in payload.subjects]
        output_id = uuid.uuid4()
        common = {
            "id": output_id, "booking_id": booking.id, "job_id": job.id,
            "purpose": payload.purpose, "language": booking.language, "created_at": now,
        }
        if job.kind is JobKind.AGENDA:
            days = settings.agenda_retention_days
            row: outputs.Agenda | outputs.Transcript | outputs.Summary = outputs.Agenda(
                **common, items=result, subjects=subjects, entry_ids=entry_ids,
                retain_until=now + timedelta(days=days),
            )
            session.add(row)
            return _ready(session, job, booking, row.id, now)
        sealer = Sealer(session, self._rt.keys, now)
        if job.kind is JobKind.SUMMARY:
            body = cast("dict[str, Any]", result)
            row = outputs.Summary(
                **common, body=await sealer.seal_summary(output_id, subjects, body),
                subjects=subjects, entry_ids=entry_ids, retain_until=now + timedelta(days=days),
            )
            session.add(row)
            return _ready(session, job, booking, row.id, now)
        texts = list(result) if isinstance(result, list) else []
        days = retention_days(settings)[Category.TRANSCRIPTS]
        transcript = outputs.Transcript(**common, retain_until=now + timedelta(days=days))
        session.add(transcript)
        for position, (piece, text) in enumerate(zip(payload.pieces, texts, strict=True)):
            assert piece.subject_id is not None  # noqa: S101 (audio pieces always have one)
            sealed = await sealer.seal_line(transcript.id, piece.subject_id, text)
            session.add(
                outputs.Segment(
                    id=uuid.uuid4(), transcript_id=transcript.id, position=position,
                    subject_id=piece.subject_id, label=piece.label, start_ms=piece.start_ms,
                    end_ms=piece.end_ms, text=sealed,
                    entry_ids=[str(e) for e in piece.entry_ids],
                )
            )
        follow = JobKind.SUMMARY if Purpose.AI_SUMMARY in booking.purposes else None
        return _ready(session, job, booking, transcript.id, now, follow)

    async def _skip(self, job: Job, booking: Booking, exc: NotPermitted) -> None:
        now = self._rt.clock.now()
        async with self._rt.db.session() as session:
            row = await access_job(session, job.id, lock=True)
            if row.status.finished:
                return
            do_register(
                session, at=now, booking_id=booking.id, job_id=job.id, purpose=job.kind.purpose,
                subjects=[e.subject_id for e in exc.excluded], categories=[], entry_ids=[],
                provider=self._provider.name, model=self._model(job.kind),
                endpoint=self._provider.host, input_bytes=0, outcome=Outcome.SKIPPED,
                detail=exc.reason,
            )
            mark_finished(row, JobStatus.SKIPPED, now, error_code="consent", error=exc.reason)
            event = row.event()
        log.info("ai.job_skipped", job_id=str(job.id), reason=exc.reason)
        await publish_all(self._rt.bus, [event])

    async def _fail(self, job: Job, code: str, detail: str, *, attempts: int) -> None:
        now = self._rt.clock.now()
        async with self._rt.db.session() as session:
            row = await access_job(session, job.id, lock=True)
            if row.status.finished:  # a concurrent runner already finished it
                return
            row.provider_attempts += attempts
            do_register(
                session, at=now, booking_id=row.booking_id, job_id=row.id,
                purpose=row.kind.purpose, subjects=[], categories=[], entry_ids=[],
                provider=self._provider.name, model=self._model(row.kind),
                endpoint=self._provider.host, input_bytes=0, outcome=Outcome.FAILED,
                detail=f"{code}: {detail}",
            )
            mark_finished(row, JobStatus.FAILED, now, error_code=code, error=detail)
            event = row.event()
        await publish_all(self._rt.bus, [event])


READY = {
    JobKind.AGENDA: AgendaReady, JobKind.TRANSCRIPTION: TranscriptReady,
    JobKind.SUMMARY: SummaryReady,
}


def _ready(
    session: AsyncSession, job: Job, booking: Booking, output_id: uuid.UUID, now: datetime,
    follow: JobKind | None = None,
) -> _Stored:
    """The output is stored: its `*.ready` event goes to the outbox in the same transaction."""
    do_write(session, READY[job.kind](booking.id, job.id, output_id), now)
    return _Stored(output_id, follow)
