"""Admin review of consent: the log, a booking's timeline, integrity proof, exports, notices.

Scope `admin` or read-only `auditor`; only `admin` creates checkpoints or publishes notices.
"""

from __future__ import annotations

import csv
import io
import json
import uuid
from collections.abc import AsyncIterator
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Depends, Query
from fastapi.responses import JSONResponse, StreamingResponse
from pydantic import AwareDatetime, BaseModel, Field
from sqlalchemy import select

from api.deps import AdminCaller, GateDep, ReviewerCaller, RuntimeDep
from api.problems import responses
from api.schemas import (
    ChainReport,
    CheckpointExport,
    CheckpointList,
    CheckpointView,
    ConsentTimeline,
    LogPage,
    NoticeList,
    NoticeView,
)
from consent.checkpoints import Signer, checkpoint_view, do_checkpoint, list_checkpoints, verify
from consent.ledger import LogFilter, LogRow, booking_entries, entry_view, log_page, stream_log
from consent.notices import NoticeText, do_publish_notice, list_notices, notice_view
from consent.purposes import Decision, Purpose
from core.bookings import Booking
from core.errors import InvalidInput, NotFound
from media.recordings import Recording

router = APIRouter(prefix="/v1/admin", tags=["admin: consent"])

EXPORT_COLUMNS = (
    "seq", "id", "at", "booking_id", "subject_id", "subject_external_id", "purpose", "decision",
    "notice_id", "notice_sha256", "method", "actor", "prev_hash", "entry_hash",
)


def log_filter(
    booking_id: Annotated[uuid.UUID | None, Query(description="Only this booking.")] = None,
    subject: Annotated[
        str | None, Query(max_length=200, description="The subject's external (platform) id.")
    ] = None,
    purpose: Annotated[Purpose | None, Query()] = None,
    decision: Annotated[Decision | None, Query()] = None,
    from_: Annotated[
        AwareDatetime | None, Query(alias="from", description="Decided at or after (UTC).")
    ] = None,
    to: Annotated[AwareDatetime | None, Query(description="Decided before (UTC).")] = None,
) -> LogFilter:
    return LogFilter(
        booking_id=booking_id,
        subject_external_id=subject,
        purpose=purpose,
        decision=decision,
        since=from_,
        until=to,
    )


def _cursor(raw: str | None) -> int | None:
    if raw is None:
        return None
    if not raw.isdigit() or int(raw) < 1:
        raise InvalidInput.field(("query", "cursor"), "not a cursor from a previous page")
    return int(raw)


@router.get(
    "/consent-log",
    response_model=LogPage,
    response_model_exclude_unset=True,
    summary="The consent log, newest first, filtered, one page at a time",
    description="Pass `next_cursor` of a page as `cursor` to get the next (older) page.",
    responses=responses(401, 403, 422),
)
async def get_log(
    runtime: RuntimeDep,
    _caller: ReviewerCaller,
    filters: Annotated[LogFilter, Depends(log_filter)],
    cursor: Annotated[str | None, Query(max_length=20)] = None,
    limit: Annotated[int, Query(ge=1, le=500)] = 50,
) -> dict[str, Any]:
    async with runtime.db.session() as session:
        page, next_seq = await log_page(session, filters, before_seq=_cursor(cursor), limit=limit)
    return {
        "items": [row.view() for row in page],
        "next_cursor": str(next_seq) if next_seq is not None else None,
    }


@router.get(
    "/consent-log/export",
    summary="Export the filtered log as CSV or JSON Lines (streamed)",
    response_class=StreamingResponse,
    responses={
        200: {"content": {"text/csv": {}, "application/x-ndjson": {}}},
        **responses(401, 403, 422),
    },
)
async def export_log(
    runtime: RuntimeDep,
    _caller: ReviewerCaller,
    filters: Annotated[LogFilter, Depends(log_filter)],
    format: Annotated[Literal["csv", "jsonl"], Query()] = "jsonl",
) -> StreamingResponse:
    rows = stream_log(runtime.db, filters)
    if format == "csv":
        body, media = _csv(rows), "text/csv; charset=utf-8"
    else:
        body, media = _jsonl(rows), "application/x-ndjson"
    name = f"consent-log.{format}"
    return StreamingResponse(
        body, media_type=media, headers={"Content-Disposition": f'attachment; filename="{name}"'}
    )


def _flat(row: LogRow) -> dict[str, Any]:
    return {key: row.view().get(key) for key in EXPORT_COLUMNS}


async def _csv(rows: AsyncIterator[LogRow]) -> AsyncIterator[str]:
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=EXPORT_COLUMNS, lineterminator="\n")
    writer.writeheader()
    async for row in rows:
        writer.writerow(_flat(row))
        if buffer.tell() > 64_000:
            yield buffer.getvalue()
            buffer.seek(0)
            buffer.truncate()
    yield buffer.getvalue()


async def _jsonl(rows: AsyncIterator[LogRow]) -> AsyncIterator[str]:
    chunk: list[str] = []
    async for row in rows:
        chunk.append(json.dumps(_flat(row), separators=(",", ":")) + "\n")
        if len(chunk) >= 500:
            yield "".join(chunk)
            chunk = []
    yield "".join(chunk)


@router.get(
    "/consent-log/verify",
    response_model=ChainReport,
    response_model_exclude_unset=True,
    summary="Walk the whole chain; report the first bad entry and the last checkpoint",
    responses=responses(401, 403),
)
async def verify_log(runtime: RuntimeDep, _caller: ReviewerCaller) -> dict[str, Any]:
    report = await verify(runtime.db, Signer.from_keyring(runtime.keys))
    return report.view()


@router.post(
    "/consent-log/checkpoints",
    response_model=CheckpointView,
    response_model_exclude_unset=True,
    status_code=201,
    summary="Sign the chain's current head now",
    responses=responses(401, 403),
)
async def create_checkpoint(runtime: RuntimeDep, _caller: AdminCaller) -> dict[str, Any]:
    checkpoint = await do_checkpoint(
        runtime.db, Signer.from_keyring(runtime.keys), runtime.clock.now()
    )
    return checkpoint_view(checkpoint)


@router.get(
    "/consent-log/checkpoints",
    response_model=CheckpointList,
    response_model_exclude_unset=True,
    summary="Signed checkpoints, newest first",
    responses=responses(401, 403),
)
async def get_checkpoints(runtime: RuntimeDep, _caller: ReviewerCaller) -> dict[str, Any]:
    async with runtime.db.session() as session:
        items = await list_checkpoints(session)
    return {"items": [checkpoint_view(c) for c in items]}


@router.get(
    "/consent-log/checkpoints/export",
    response_model=CheckpointExport,
    response_model_exclude_unset=True,
    summary="Download every checkpoint with the public key that verifies them",
    responses=responses(401, 403),
)
async def export_checkpoints(runtime: RuntimeDep, _caller: ReviewerCaller) -> JSONResponse:
    signer = Signer.from_keyring(runtime.keys)
    async with runtime.db.session() as session:
        items = await list_checkpoints(session, limit=1_000_000)
    body = {
        "algorithm": "Ed25519",
        "public_key": signer.public_b64,
        "key_id": signer.key_id,
        "exported_at": runtime.clock.now().isoformat(),
        "checkpoints": [checkpoint_view(c) for c in items],
    }
    return JSONResponse(
        body, headers={"Content-Disposition": 'attachment; filename="consent-checkpoints.json"'}
    )


@router.get(
    "/bookings/{booking_id}/consent-timeline",
    response_model=ConsentTimeline,
    response_model_exclude_unset=True,
    summary="Who decided what when in one booking, beside who was present and what was "
    "recorded",
    responses=responses(401, 403, 404),
)
async def consent_timeline(
    runtime: RuntimeDep, gate: GateDep, _caller: ReviewerCaller, booking_id: uuid.UUID
) -> dict[str, Any]:
    async with runtime.db.session() as session:
        booking = await session.get(Booking, booking_id)
        if booking is None:
            raise NotFound(f"no booking {booking_id}")
        entries = await booking_entries(session, booking_id)
        query = (
            select(Recording).where(Recording.booking_id == booking_id)
            .order_by(Recording.started_at)
        )
        recordings = list((await session.execute(query)).scalars())
    stays = gate.presence(booking_id) if gate is not None else []
    return {
        "booking": {
            "id": str(booking.id),
            "title": booking.title,
            "starts_at": booking.starts_at.isoformat(),
            "ends_at": booking.ends_at.isoformat(),
            "status": booking.status.value,
            "recording_policy": booking.recording_policy.value,
            "requested_purposes": list(booking.requested_purposes),
        },
        "participants": [
            {
                "id": str(p.id),
                "external_id": p.external_id,
                "display_name": p.display_name,
                "role": p.role.value,
            }
            for p in booking.participants
        ],
        "entries": [entry_view(e) for e in entries],
        "presence": [
            {
                "subject_id": str(s.subject_id),
                "joined_at": s.joined_at.isoformat(),
                "left_at": s.left_at.isoformat() if s.left_at else None,
            }
            for s in stays
        ],
        "recordings": [
            {
                "subject_id": str(r.participant_id),
                "kind": r.kind.value,
                "state": r.state.value,
                "started_at": r.started_at.isoformat(),
                "ended_at": r.ended_at.isoformat() if r.ended_at else None,
            }
            for r in recordings
        ],
    }


class NoticeBody(BaseModel):
    purpose: Purpose
    language: str = Field(
        min_length=2, max_length=35, pattern=r"^[A-Za-z]{2,8}(-[A-Za-z0-9]{1,8})*$"
    )
    text: str = Field(min_length=1, max_length=20_000)


@router.get(
    "/consent-notices",
    response_model=NoticeList,
    response_model_exclude_unset=True,
    summary="The current notice of every purpose and language",
    responses=responses(401, 403),
)
async def get_notices(runtime: RuntimeDep, _caller: ReviewerCaller) -> dict[str, Any]:
    async with runtime.db.session() as session:
        items = await list_notices(session)
    return {"items": [notice_view(n) for n in items]}


@router.post(
    "/consent-notices",
    response_model=NoticeView,
    response_model_exclude_unset=True,
    status_code=201,
    summary="Publish a new notice version (old versions are never changed)",
    description="Returns 200 with the existing version when the text equals the current one.",
    responses=responses(401, 403, 422),
)
async def publish_notice(
    runtime: RuntimeDep, caller: AdminCaller, body: NoticeBody
) -> JSONResponse:
    text = NoticeText(body.purpose, body.language, body.text, f"api:{caller.key_id}")
    async with runtime.db.session() as session:
        notice, created = await do_publish_notice(session, text, runtime.clock.now())
    return JSONResponse(notice_view(notice), status_code=201 if created else 200)
