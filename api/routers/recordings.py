"""Recordings: the page's recording connection, the host's start/stop, list and download."""

from __future__ import annotations

import re
import uuid
from collections.abc import Iterator
from datetime import datetime
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Header
from fastapi.responses import Response, StreamingResponse
from pydantic import BaseModel, Field
from sqlalchemy.ext.asyncio import AsyncSession

from api.deps import ParticipantDep, RecorderDep, RuntimeDep, ViewerDep
from api.problems import problem, responses
from api.schemas import RecordingSwitch
from consent.access import DataKind, Readable, access_session_data, do_log_read
from core.accounts import Viewer
from core.bookings import BookingStatus, Participant
from core.datakeys import access_data_key
from core.errors import Conflict, Gone, InvalidInput, OutsideJoinWindow
from core.runtime import Runtime
from media.recordings import (
    Recording,
    RecordingState,
    access_recording,
    access_recording_control,
    do_log_download,
    list_recordings,
)

router = APIRouter(tags=["recordings"])
_RANGE = re.compile(r"^bytes=(\d*)-(\d*)$")




class SessionDescription(BaseModel):
    sdp: str = Field(max_length=100_000, description="The SDP (RFC 8866) of the description.")
    type: Literal["offer", "answer"]


class RecordingView(BaseModel):
    id: uuid.UUID
    participant_id: uuid.UUID
    kind: str
    state: str
    media_type: str
    started_at: datetime
    ended_at: datetime | None
    consent_entry_ids: list[str]
    frames: int
    size: int
    sha256: str | None
    retain_until: datetime

    @classmethod
    def of(cls, row: Recording) -> RecordingView:
        return cls(
            id=row.id,
            participant_id=row.participant_id,
            kind=row.kind.value,
            state=row.state.value,
            media_type=row.media_type,
            started_at=row.started_at,
            ended_at=row.ended_at,
            consent_entry_ids=list(row.consent_entry_ids),
            frames=row.frames,
            size=row.size,
            sha256=row.sha256,
            retain_until=row.retain_until,
        )


class RecordingList(BaseModel):
    booking_id: uuid.UUID
    recording: bool = Field(
        description="Whether recording is switched on for the booking: the host's (or an "
        "admin's) last start or stop, else the booking's `record_automatically`. Each person is "
        "still recorded only for what they granted."
    )
    recordings: list[RecordingView]


@router.post(
    "/v1/recording/offer",
    summary="Connect my page to the recording peer (SDP offer in, answer out)",
    description="The page offers the tracks its person consented to; the server writes each "
    "frame only while the consent gate allows that person and purpose, whatever the page "
    "sends. Recording state changes are published as `recording.changed`.",
    responses=responses(403, 404, 410, 422),
)
async def post_offer(
    runtime: RuntimeDep,
    recorder: RecorderDep,
    participant: ParticipantDep,
    body: SessionDescription,
) -> SessionDescription:
    if body.type != "offer":
        raise InvalidInput.field(("body", "type"), "must be 'offer'")
    booking = participant.booking
    if booking.status is BookingStatus.CANCELLED:
        raise Gone("the booking is cancelled")
    settings = runtime.settings
    opens_at, closes_at = booking.join_window(settings.join_lead, settings.join_grace)
    now = runtime.clock.now()
    if not opens_at <= now < closes_at:
        raise OutsideJoinWindow(
            "the recording connection opens with the join window",
            extra={
                "opens_at": opens_at.isoformat(),
                "closes_at": closes_at.isoformat(),
                "starts_at": booking.starts_at.isoformat(),
            },
        )
    answer = await recorder.answer(participant, body.sdp, body.type)
    return SessionDescription(sdp=answer.sdp, type="answer")


@router.post(
    "/v1/bookings/{booking_id}/recording/{action}",
    response_model=RecordingSwitch,
    response_model_exclude_unset=True,
    summary="Start or stop recording a booking (its host, or an admin)",
    description="Starting does not record anyone by itself: each person is recorded only for "
    "the purposes they granted, frame by frame.",
    responses=responses(401, 403, 404, 410, 422),
)
async def post_control(
    booking_id: uuid.UUID,
    action: Literal["start", "stop"],
    runtime: RuntimeDep,
    recorder: RecorderDep,
    viewer: ViewerDep,
) -> dict[str, Any]:
    async with runtime.db.session() as session:
        await access_recording_control(
            session, viewer, booking_id, runtime.settings.join_grace, runtime.clock.now()
        )
    if viewer.participant is not None:
        by = f"participant:{viewer.participant.id}"
    else:
        by = f"api_key:{viewer.caller.key_id}" if viewer.caller is not None else "system"
    if action == "start":
        await recorder.start(booking_id, by)
    else:
        await recorder.stop(booking_id, by)
    return {"booking_id": str(booking_id), "recording": recorder.is_active(booking_id)}


@router.get(
    "/v1/bookings/{booking_id}/recordings",
    summary="A booking's recordings (its participants, as `recording_access` allows; admins)",
    description="A participant sees, through their join link, what the booking's "
    "`recording_access` gives them (`own`: their own files), until `participant_access_days` "
    "after the session, and nothing while their processing is restricted (403).",
    responses=responses(401, 403, 404),
)
async def get_recordings(
    booking_id: uuid.UUID, runtime: RuntimeDep, recorder: RecorderDep, viewer: ViewerDep
) -> RecordingList:
    async with runtime.db.session() as session:
        readable = await _readable(session, runtime, viewer, booking_id)
        rows = await list_recordings(session, readable)
    return RecordingList(
        booking_id=booking_id,
        recording=await recorder.recording_on(booking_id),
        recordings=[RecordingView.of(row) for row in rows],
    )


async def _readable(
    session: AsyncSession, runtime: Runtime, viewer: Viewer, booking_id: uuid.UUID
) -> Readable:
    return await access_session_data(
        session, runtime.settings, runtime.clock.now(), booking_id, viewer
    )


def _byte_range(header: str | None, size: int) -> tuple[int, int] | None:
    """[start, end) of a single `Range: bytes=` request (RFC 9110 §14.1.2), None = whole."""
    if header is None:
        return None
    match = _RANGE.match(header.strip())
    if match is None:
        return None  # not a range we serve: answer with the whole file (RFC 9110 §14.2)
    first, last = match.groups()
    if not first and not last:
        return None
    if not first:
        start, end = max(0, size - int(last)), size
    else:
        start = int(first)
        end = min(size, int(last) + 1) if last else size
    if start >= size or start >= end:
        raise ValueError(f"the recording has {size} bytes")
    return start, end


@router.get(
    "/v1/bookings/{booking_id}/recordings/{recording_id}",
    summary="Download one recording, decrypted on the fly (HTTP Range supported)",
    description="Every download is logged with who fetched it, which range and how many "
    "bytes (`GET /v1/admin/reads`). Who may download: as for the list.",
    response_class=StreamingResponse,
    responses={
        200: {"content": {"audio/ogg": {}, "video/webm": {}}},
        206: {"description": "Partial content"},
        **responses(401, 403, 404, 409, 410, 416),
    },
)
async def download(
    booking_id: uuid.UUID,
    recording_id: uuid.UUID,
    runtime: RuntimeDep,
    recorder: RecorderDep,
    viewer: ViewerDep,
    range_header: Annotated[str | None, Header(alias="Range")] = None,
) -> Response:
    now = runtime.clock.now()
    async with runtime.db.session() as session:
        readable = await _readable(session, runtime, viewer, booking_id)
        row = await access_recording(session, readable, recording_id)
        if row.state is RecordingState.RECORDING:
            raise Conflict("this recording is still being written")
        owner = await session.get(Participant, row.participant_id)
        if owner is None:
            raise Gone("the person this recording belongs to was removed")
        key = await access_data_key(session, runtime.keys, owner.external_id, now)
        try:
            byte_range = _byte_range(range_header, row.size)
        except ValueError as exc:
            return problem(
                416, "Range not satisfiable", str(exc), code="range_not_satisfiable",
                instance=f"/v1/bookings/{booking_id}/recordings/{recording_id}",
                headers={"Content-Range": f"bytes */{row.size}"},
            )
        logged = f"bytes={byte_range[0]}-{byte_range[1] - 1}" if byte_range else None
        await do_log_download(session, viewer, row, logged, now)
        start, end = byte_range or (0, row.size)
        key_id = viewer.caller.key_id if viewer.caller is not None else None
        do_log_read(session, readable, DataKind.RECORDING, row.id, [row.participant_id],
                    end - start, now, api_key_id=key_id)
    headers = {"Accept-Ranges": "bytes", "Content-Length": str(end - start)}
    if byte_range:
        headers["Content-Range"] = f"bytes {start}-{end - 1}/{row.size}"
    filename = f"{row.kind.value}-{row.participant_id}-{row.id}.{row.kind.extension}"
    headers["Content-Disposition"] = f'attachment; filename="{filename}"'
    body: Iterator[bytes] = recorder.store.read(row.path, key, start, end)
    return StreamingResponse(
        body, status_code=206 if byte_range else 200, media_type=row.media_type, headers=headers
    )

