"""AI jobs and their outputs: agenda, transcript and summary of a booking; the register.

Outputs and jobs are readable by the booking's own participants (X-Join-Credential) and by
admins (API key), nobody else (docs/privacy.md). The processing register is for admins and
auditors. Job progress is pushed as server-sent events.

Size (just over 400 lines): every route of the AI outputs shares one reader check
(participant or admin) and one read log; kept together so no route can skip either.
"""

from __future__ import annotations

import asyncio
import json
import uuid
from collections.abc import AsyncIterator, Iterable
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Query
from fastapi.responses import FileResponse, HTMLResponse, Response, StreamingResponse
from pydantic import BaseModel
from sqlalchemy.ext.asyncio import AsyncSession

from api.deps import AdminCaller, AiJobsDep, ReviewerCaller, RuntimeDep, ViewerDep
from api.problems import responses
from api.schemas import (
    AgendaView,
    JobList,
    JobView,
    ReadLog,
    RegisterPage,
    SummaryView,
    TranscriptView,
)
from consent.access import DataKind, Readable, access_session_data, do_log_read, get_reads
from core.accounts import Viewer, access_booking_data
from core.bus import BusEvent, Topic
from core.errors import NotFound
from core.events import (
    BookingCancelled,
    JobProgress,
    LinkRevoked,
    SubjectErased,
    SubjectRestricted,
)
from core.inputs import Instant
from core.runtime import Runtime
from core.tasks import stop_tasks
from summaries import outputs
from summaries.jobs import JobKind, get_jobs
from summaries.provider import AiUnavailable
from summaries.register import get_register
from summaries.sealing import Sealer
from summaries.service import AiJobs

router = APIRouter(tags=["ai"])
pages = APIRouter(include_in_schema=False)

STATIC = Path(__file__).resolve().parent.parent / "static"
PAGE_HEADERS = {
    "Content-Security-Policy": "default-src 'self'; script-src 'self'; connect-src 'self'; "
    "style-src 'self'; img-src 'self'; frame-ancestors 'none'; base-uri 'none'",
    "Referrer-Policy": "no-referrer",
    "Cache-Control": "no-store",
    "X-Content-Type-Options": "nosniff",
}

KEEPALIVE_S = 15.0


@dataclass(frozen=True)
class Reader:
    """Who reads a booking's AI data: one of its participants, or an admin."""

    booking_id: uuid.UUID
    viewer: Viewer

    @property
    def participant_id(self) -> uuid.UUID | None:
        participant = self.viewer.participant
        return participant.id if participant is not None else None


async def booking_reader(
    booking_id: uuid.UUID, runtime: RuntimeDep, viewer: ViewerDep
) -> Reader:
    """The booking's participants and its organization's admins get in; anyone else sees
    404 (or 401/403)."""
    async with runtime.db.session() as session:
        await access_booking_data(session, viewer, booking_id)
    return Reader(booking_id, viewer)


ReaderDep = Annotated[Reader, Depends(booking_reader)]


def available_ai_jobs(service: AiJobsDep) -> AiJobs:
    """The AI jobs service, if a provider is configured (else 503 `ai_unavailable`)."""
    if not service.available:
        raise AiUnavailable("no AI provider is configured (CALLGATE_OPENAI_BASE_URL)")
    return service


class JobRequest(BaseModel):
    kind: JobKind


@router.post(
    "/v1/bookings/{booking_id}/jobs",
    response_model=JobView,
    response_model_exclude_unset=True,
    status_code=202,
    summary="Ask for an AI job (ai.agenda, transcription, ai.summary) on this booking",
    description="Creates the job once (asking again returns the same job) and queues it. It "
    "runs only with the consent its purpose needs; otherwise it ends `skipped` with the "
    "reason. 503 `ai_unavailable` when no provider is configured.",
    responses=responses(401, 403, 404, 422, 503),
)
async def post_job(
    reader: ReaderDep, service: Annotated[AiJobs, Depends(available_ai_jobs)], body: JobRequest
) -> dict[str, Any]:
    job = await service.request(reader.booking_id, body.kind)
    return job.view()


@router.get(
    "/v1/bookings/{booking_id}/jobs",
    response_model=JobList,
    response_model_exclude_unset=True,
    summary="This booking's AI jobs: status, attempts, progress, error",
    responses=responses(401, 403, 404),
)
async def list_jobs(
    runtime: RuntimeDep, service: AiJobsDep, reader: ReaderDep
) -> dict[str, Any]:
    async with runtime.db.session() as session:
        jobs = await get_jobs(session, reader.booking_id)
    return {"available": service.available, "jobs": [job.view() for job in jobs]}


def _sse(event: str, data: dict[str, Any]) -> str:
    return f"event: {event}\ndata: {json.dumps(data, separators=(',', ':'))}\n\n"


# What ends a participant's stream at once: their access through the link ended.
_ENDS = {
    Topic.LINK_REVOKED.value: "revoked",
    Topic.SUBJECT_ERASED.value: "erased",
    Topic.SUBJECT_RESTRICTED.value: "restricted",
    Topic.BOOKING_CANCELLED.value: "booking_cancelled",
}


def _ends_access(event: BusEvent, reader: Reader) -> str | None:
    """The reason this event ends the reader's stream, if it does (admins read on)."""
    if reader.participant_id is None:
        return None
    if isinstance(event, SubjectRestricted) and not event.restricted:
        return None
    if isinstance(event, LinkRevoked):
        who = event.participant_id
    elif isinstance(event, SubjectErased | SubjectRestricted):
        who = event.subject_id
    elif isinstance(event, BookingCancelled):
        who = reader.participant_id
    else:
        return None
    if who != reader.participant_id:
        return None
    return _ENDS[event.topic]


async def _job_stream(runtime: Runtime, reader: Reader) -> AsyncIterator[str]:
    """Current jobs, then each change, until none is queued or running (the page reconnects
    for later ones), or until the reader's access ends (`event: ended` with the reason; a
    reconnect is then refused). The database is re-read on every quiet interval, since bus
    delivery is at-most-once."""
    booking_id = reader.booking_id
    seen: dict[str, dict[str, Any]] = {}

    async def snapshot() -> list[dict[str, Any]]:
        async with runtime.db.session() as session:
            return [job.view() for job in await get_jobs(session, booking_id)]

    def fresh(views: list[dict[str, Any]]) -> list[str]:
        out = []
        for view in views:
            if seen.get(view["id"]) != view:
                seen[view["id"]] = view
                out.append(_sse("job", view))
        return out

    def pending() -> bool:
        return any(v["status"] in ("queued", "running") for v in seen.values())

    queue: asyncio.Queue[BusEvent] = asyncio.Queue()
    async with runtime.bus.subscribe(Topic.JOB_PROGRESS.value, *_ENDS) as subscription:

        async def pump() -> None:
            async for event in subscription:
                if getattr(event, "booking_id", None) == booking_id:
                    queue.put_nowait(event)

        task = asyncio.create_task(pump())
        try:
            yield "retry: 5000\n\n"
            for chunk in fresh(await snapshot()):
                yield chunk
            while True:
                if not pending():  # a follow-up job may have been created meanwhile
                    for chunk in fresh(await snapshot()):
                        yield chunk
                    if not pending():
                        break
                try:
                    event = await asyncio.wait_for(queue.get(), KEEPALIVE_S)
                except TimeoutError:
                    chunks = [": keepalive\n\n", *fresh(await snapshot())]
                else:
                    if not isinstance(event, JobProgress):
                        reason = _ends_access(event, reader)
                        if reason is not None:
                            yield _sse("ended", {"reason": reason})
                            return
                        continue
                    chunks = fresh([event.job])
                for chunk in chunks:
                    yield chunk
            yield _sse("idle", {"booking_id": str(booking_id)})
        finally:
            await stop_tasks([task])


@router.get(
    "/v1/bookings/{booking_id}/jobs/events",
    summary="Server-sent events: job progress and results of this booking",
    description="`event: job` with the job (as in the list) at once for every job and on "
    "every change; `event: idle` and the end of the stream once no job is queued or running; "
    "`event: ended` with a `reason` (`revoked`, `erased`, `restricted`, `booking_cancelled`) "
    "and the end of the stream when a participant's access ends.",
    responses=responses(401, 403, 404),
    response_class=StreamingResponse,
)
async def job_events(runtime: RuntimeDep, reader: ReaderDep) -> StreamingResponse:
    return StreamingResponse(
        _job_stream(runtime, reader),
        media_type="text/event-stream",
        headers={"Cache-Control": "no-store", "X-Accel-Buffering": "no"},
    )


def _meta(row: outputs.Summary | outputs.Agenda | outputs.Transcript) -> dict[str, Any]:
    return {
        "id": str(row.id),
        "booking_id": str(row.booking_id),
        "job_id": str(row.job_id),
        "purpose": row.purpose.value,
        "language": row.language,
        "created_at": row.created_at.isoformat(),
        "retain_until": row.retain_until.isoformat(),
    }


@router.get(
    "/v1/bookings/{booking_id}/summary",
    response_model=SummaryView,
    response_model_exclude_unset=True,
    summary="The session's summary: summary, decisions, action items with owners",
    description="Participants read it through their join link as the booking's "
    "`recording_access` allows (`own` and `host` clients: only a summary made from their own "
    "words), until `participant_access_days` after the session and not while restricted "
    "(403). Every read is logged.",
    responses=responses(401, 403, 404),
)
async def get_summary(runtime: RuntimeDep, reader: ReaderDep) -> Response:
    now = runtime.clock.now()
    async with runtime.db.session() as session:
        readable = await _readable(session, runtime, reader)
        row = await outputs.get_latest(session, outputs.Summary, reader.booking_id, now)
        if row is None or not readable.covers_any(row.subjects):
            raise NotFound("this booking has no summary")
        body = await Sealer(session, runtime.keys, now).open_summary(row.id, row.body)
        if body is None:  # a speaker's key was destroyed (erased)
            raise NotFound("this booking has no summary")
        document = {**_meta(row), **body, "speakers": len(row.subjects)}
        return _logged(
            session, reader, readable, DataKind.SUMMARY, row.id, row.subjects, document, now
        )


@router.get(
    "/v1/bookings/{booking_id}/agenda",
    response_model=AgendaView,
    response_model_exclude_unset=True,
    summary="The draft agenda: items with time boxes",
    responses=responses(401, 403, 404),
)
async def get_agenda(runtime: RuntimeDep, reader: ReaderDep) -> dict[str, Any]:
    async with runtime.db.session() as session:
        row = await outputs.get_latest(
            session, outputs.Agenda, reader.booking_id, runtime.clock.now()
        )
    if row is None:
        raise NotFound("this booking has no agenda")
    return {**_meta(row), "items": row.items}


@router.get(
    "/v1/bookings/{booking_id}/transcript",
    response_model=TranscriptView,
    response_model_exclude_unset=True,
    summary="The transcript: consented speakers' segments with pseudonymous labels",
    description="Only the segments the reader may see under the booking's `recording_access` "
    "(`own`: their own lines); access ends as for the summary. Every read is logged.",
    responses=responses(401, 403, 404),
)
async def get_transcript(runtime: RuntimeDep, reader: ReaderDep) -> Response:
    now = runtime.clock.now()
    async with runtime.db.session() as session:
        readable = await _readable(session, runtime, reader)
        row = await outputs.get_latest(session, outputs.Transcript, reader.booking_id, now)
        if row is None:
            raise NotFound("this booking has no transcript")
        sealer = Sealer(session, runtime.keys, now)
        mine, segments = [], []
        for s in row.segments:
            if not readable.covers(s.subject_id):
                continue
            text = await sealer.open_line(row.id, s.subject_id, s.text)
            if text is None:  # the speaker's key was destroyed (erased)
                continue
            mine.append(s)
            segments.append(
                {"speaker": s.label, "start_ms": s.start_ms, "end_ms": s.end_ms, "text": text}
            )
        if not mine:
            raise NotFound("this booking has no transcript")
        document = {**_meta(row), "segments": segments}
        whose = [s.subject_id for s in mine]
        return _logged(
            session, reader, readable, DataKind.TRANSCRIPT, row.id, whose, document, now
        )


async def _readable(session: AsyncSession, runtime: Runtime, reader: Reader) -> Readable:
    return await access_session_data(
        session, runtime.settings, runtime.clock.now(), reader.booking_id, reader.viewer
    )


def _logged(
    session: AsyncSession, reader: Reader, readable: Readable, kind: DataKind,
    item_id: uuid.UUID, subjects: Iterable[uuid.UUID | str], document: dict[str, Any],
    now: datetime,
) -> Response:
    """The answer, its read logged with the exact number of bytes sent, before it is sent."""
    body = json.dumps(document, ensure_ascii=False, separators=(",", ":")).encode()
    caller = reader.viewer.caller
    key_id = caller.key_id if caller is not None else None
    do_log_read(session, readable, kind, item_id, subjects, len(body), now, api_key_id=key_id)
    return Response(body, media_type="application/json")


@router.get(
    "/v1/admin/processing",
    response_model=RegisterPage,
    response_model_exclude_unset=True,
    summary="The processing register: every AI processing step, newest first",
    description="Who (pseudonymous subject ids), which data categories, purpose, consent "
    "ledger entries, provider, model, endpoint, when, input size and outcome.",
    responses=responses(401, 403, 422),
)
async def list_processing(
    runtime: RuntimeDep,
    caller: ReviewerCaller,
    booking_id: Annotated[uuid.UUID | None, Query(description="Only this booking.")] = None,
    before: Annotated[Instant | None, Query(description="Rows before this time.")] = None,
    limit: Annotated[int, Query(ge=1, le=500)] = 100,
) -> dict[str, Any]:
    async with runtime.db.session() as session:
        rows = await get_register(
            session, caller.org_id, booking_id=booking_id, limit=limit, before=before
        )
    return {"entries": [row.view() for row in rows]}


@router.get(
    "/v1/admin/reads",
    response_model=ReadLog,
    response_model_exclude_unset=True,
    summary="The read log: every read of a recording, transcript or summary, newest first",
    description="Who read (a participant id, or an API key id), what (kind and id), when, how "
    "many bytes were sent, and whose data it held (participant ids). Admins only.",
    responses=responses(401, 403, 422),
)
async def list_reads(
    runtime: RuntimeDep,
    caller: AdminCaller,
    booking_id: Annotated[uuid.UUID | None, Query(description="Only this booking.")] = None,
    before: Annotated[Instant | None, Query(description="Reads before this time.")] = None,
    limit: Annotated[int, Query(ge=1, le=500)] = 100,
) -> dict[str, Any]:
    async with runtime.db.session() as session:
        rows = await get_reads(
            session, caller.org_id, booking_id=booking_id, before=before, limit=limit
        )
    return {"reads": [row.view() for row in rows]}


@pages.get("/summary/{credential}", response_class=HTMLResponse)
async def summary_page(credential: str) -> HTMLResponse:
    """The agenda/summary page reachable from a join link (`/join/<c>` -> `/summary/<c>`); it
    reads everything through the API with the credential, so the page itself is static."""
    return HTMLResponse((STATIC / "summary.html").read_text(), headers=PAGE_HEADERS)


@pages.get("/summary-page/summary.js")
async def summary_script() -> FileResponse:
    return FileResponse(
        STATIC / "summary.js", media_type="text/javascript", headers={"Cache-Control": "no-cache"}
    )
