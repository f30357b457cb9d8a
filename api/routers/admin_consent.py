"""Admin review of consent: the log, a booking's timeline, integrity proof, exports
(notices: api/routers/admin_notices.py).

Scope `admin` or read-only `auditor`; only `admin` creates checkpoints or publishes notices.
"""

from __future__ import annotations

import csv
import io
import json
import uuid
from collections.abc import AsyncIterator
from dataclasses import replace
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Depends, Query
from fastapi.responses import JSONResponse, StreamingResponse
from sqlalchemy import select

from api.deps import AdminCaller, GateDep, ReviewerCaller, RuntimeDep
from api.problems import responses
from api.schemas import (
    Acknowledged,
    ChainReport,
    CheckpointExport,
    CheckpointList,
    CheckpointView,
    ConsentTimeline,
    IntegrityStatus,
    LogPage,
)
from consent.checkpoints import Signer, checkpoint_view, list_checkpoints, verify
from consent.integrity import IntegrityWatch, active_alarm, alarm_view, alarms, do_acknowledge
from consent.ledger import LogFilter, LogRow, booking_entries, entry_view, log_page, stream_log
from consent.live import LiveGate
from consent.notices import (
    Supersession,
    supersessions,
    versions_of,
)
from consent.purposes import Decision, Purpose
from core.bookings import Booking
from core.errors import InvalidInput, NotFound, Unavailable
from core.inputs import Instant, Line
from media.recordings import Recording
from signaling.attendance import booking_stays

router = APIRouter(prefix="/v1/admin", tags=["admin: consent"])

EXPORT_COLUMNS = (
    "seq", "id", "at", "booking_id", "subject_id", "subject_external_id", "purpose", "decision",
    "notice_id", "notice_sha256", "method", "actor", "prev_hash", "entry_hash",
)


def log_filter(
    booking_id: Annotated[uuid.UUID | None, Query(description="Only this booking.")] = None,
    subject: Annotated[
        Line | None, Query(max_length=200, description="The subject's external (platform) id.")
    ] = None,
    purpose: Annotated[Purpose | None, Query()] = None,
    decision: Annotated[Decision | None, Query()] = None,
    from_: Annotated[
        Instant | None, Query(alias="from", description="Decided at or after (UTC).")
    ] = None,
    to: Annotated[Instant | None, Query(description="Decided before (UTC).")] = None,
) -> LogFilter:
    return LogFilter(
        booking_id=booking_id,
        subject_external_id=subject,
        purpose=purpose,
        decision=decision,
        since=from_,
        until=to,
    )


def integrity_of(gate: LiveGate | None) -> IntegrityWatch:
    """This node's integrity watch (it lives in the live gate)."""
    if gate is None:
        raise Unavailable("the consent gate is not running on this node")
    return gate.integrity


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
    description="Pass `next_cursor` of a page as `cursor` to get the next (older) page. "
    "`notice_version` is the version of the notice the person was shown; `outdated_by` is set "
    "on a grant under a notice that a material change replaced (`version`, `effective_at`, "
    "`change_note`): such grants stop counting from `effective_at`.",
    responses=responses(401, 403, 422),
)
async def get_log(
    runtime: RuntimeDep,
    caller: ReviewerCaller,
    filters: Annotated[LogFilter, Depends(log_filter)],
    cursor: Annotated[str | None, Query(pattern=r"^[1-9][0-9]{0,17}$")] = None,
    limit: Annotated[int, Query(ge=1, le=500)] = 50,
) -> dict[str, Any]:
    async with runtime.db.session() as session:
        page, next_seq = await log_page(
            session, replace(filters, org_id=caller.org_id), before_seq=_cursor(cursor),
            limit=limit,
        )
        shown = {row.entry.notice_id for row in page}
        versions = await versions_of(session, shown)
        replaced = await supersessions(session, shown)
    return {
        "items": [_annotated(row, versions, replaced) for row in page],
        "next_cursor": str(next_seq) if next_seq is not None else None,
    }


def _annotated(
    row: LogRow, versions: dict[uuid.UUID, int], replaced: dict[uuid.UUID, Supersession]
) -> dict[str, Any]:
    change = replaced.get(row.entry.notice_id) if row.entry.decision is Decision.GRANTED else None
    return {
        **row.view(),
        "notice_version": versions.get(row.entry.notice_id),
        "outdated_by": {
            "version": change.version,
            "effective_at": change.effective_at.isoformat(),
            "change_note": change.change_note,
        } if change is not None else None,
    }


@router.get(
    "/consent-log/export",
    summary="Export the filtered log as CSV or JSON Lines (streamed)",
    response_class=StreamingResponse,
    responses={
        200: {
            "description": "The log, one row or JSON object per line",
            "content": {
                "text/csv": {"schema": {"type": "string"}},
                "application/x-ndjson": {"schema": {"type": "string"}},
            },
        },
        **responses(401, 403, 422),
    },
)
async def export_log(
    runtime: RuntimeDep,
    caller: ReviewerCaller,
    filters: Annotated[LogFilter, Depends(log_filter)],
    format: Annotated[Literal["csv", "jsonl"], Query()] = "jsonl",
) -> StreamingResponse:
    rows = stream_log(runtime.db, replace(filters, org_id=caller.org_id))
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
async def verify_log(
    runtime: RuntimeDep, gate: GateDep, _caller: ReviewerCaller
) -> dict[str, Any]:
    witness = gate.integrity.witness.marks() if gate is not None else {}
    report = await verify(runtime.db, Signer.from_keyring(runtime.keys), witness)
    return report.view()


@router.post(
    "/consent-log/checkpoints",
    response_model=CheckpointView,
    response_model_exclude_unset=True,
    status_code=201,
    summary="Sign the chain's current head now",
    description="Refused with 409 `ledger_tampered` while an integrity alarm stands or when "
    "the chain since the last checkpoint fails verification.",
    responses=responses(401, 403, 409),
)
async def create_checkpoint(
    runtime: RuntimeDep, gate: GateDep, _caller: AdminCaller
) -> dict[str, Any]:
    checkpoint = await integrity_of(gate).do_checkpoint(runtime.clock.now())
    return checkpoint_view(checkpoint)


@router.get(
    "/consent-log/integrity",
    response_model=IntegrityStatus,
    summary="Whether the running servers found the ledger tampered with",
    description="`status` is `ok` or `tampered`; `alarm` is the standing (unacknowledged) "
    "alarm, `alarms` the recent ones. Every node re-verifies the whole chain every "
    "`CALLGATE_CONSENT_VERIFY_INTERVAL_S`.",
    responses=responses(401, 403),
)
async def get_integrity(
    runtime: RuntimeDep, gate: GateDep, _caller: ReviewerCaller
) -> dict[str, Any]:
    watch = integrity_of(gate)
    async with runtime.db.session() as session:
        standing = await active_alarm(session, watch.ack_key)
        recent = await alarms(session, 20)
    last = watch.last_report
    return {
        "status": "tampered" if standing is not None else "ok",
        "alarm": alarm_view(standing) if standing is not None else None,
        "alarms": [alarm_view(a) for a in recent],
        "last_check": last.view() if last is not None else None,
        "last_check_at": watch.checked_at.isoformat() if watch.checked_at else None,
    }


@router.post(
    "/consent-log/integrity/acknowledge",
    response_model=Acknowledged,
    summary="Acknowledge the standing integrity alarm (capture resumes)",
    description="Only an admin. Capture and AI jobs stay stopped until this is called; the "
    "same finding is not raised again, a new one is. 404 `not_found` when no alarm stands.",
    responses=responses(401, 403, 404),
)
async def acknowledge_integrity(
    runtime: RuntimeDep, gate: GateDep, caller: AdminCaller
) -> dict[str, Any]:
    watch = integrity_of(gate)
    done = await do_acknowledge(runtime.db, watch.ack_key, caller.key_id, runtime.clock.now())
    await watch.refresh()
    return {"acknowledged": [alarm_view(a) for a in done]}


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
    runtime: RuntimeDep, caller: ReviewerCaller, booking_id: uuid.UUID
) -> dict[str, Any]:
    async with runtime.db.session() as session:
        booking = await session.get(Booking, booking_id)
        if booking is None or booking.org_id != caller.org_id:
            raise NotFound(f"no booking {booking_id}")
        entries = await booking_entries(session, booking_id)
        query = (
            select(Recording).where(Recording.booking_id == booking_id)
            .order_by(Recording.started_at)
        )
        recordings = list((await session.execute(query)).scalars())
        stays = await booking_stays(session, booking_id)  # attendance, as every node stored it
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
                "subject_id": str(s.participant_id),
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
