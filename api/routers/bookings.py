"""The scheduler API: bookings, their participants' links, invites and tokens."""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import Annotated

from fastapi import APIRouter, Body, Depends, Header, Path, Query, Response
from pydantic import BaseModel, Field

from api import problems
from api.deps import RoomsDep, RuntimeDep, SchedulerCaller, require
from core.accounts import Caller, Scope
from core.bookings import AgeBand, Booking, BookingStatus, Participant, Role, RoomState
from core.errors import Gone
from core.inputs import Instant, Line
from core.purposes import RecordingAccess, RecordingPolicy
from core.runtime import Runtime
from signaling import bookinglist, participants
from signaling import bookings as service
from signaling.ics import invite
from signaling.join import JoinGrant, do_participant_token


async def no_store(response: Response) -> None:
    """Answers here carry join links and tokens: no cache may keep them."""
    response.headers["Cache-Control"] = "no-store"


router = APIRouter(
    prefix="/v1/bookings", tags=["bookings (scheduler)"], dependencies=[Depends(no_store)]
)
CorrectorCaller = Annotated[Caller, Depends(require(Scope.SCHEDULER, Scope.ADMIN))]

EXAMPLE = {
    "title": "Mentoring session",
    "stated_purpose": "Review of the quarterly plan",
    "language": "en",
    "starts_at": "2030-05-04T09:00:00+02:00",
    "ends_at": "2030-05-04T10:00:00+02:00",
    "host": {"external_id": "mentor-17", "display_name": "Ada Lovelace", "age_band": "adult"},
    "clients": [
        {"external_id": "user-4711", "display_name": "Charles Babbage", "age_band": "adult"}
    ],
    "requested_purposes": ["recording.audio", "transcription", "ai.summary"],
    "recording_policy": "per_participant",
    "record_automatically": False,
}


class RoomOut(BaseModel):
    name: str
    state: RoomState
    attempts: int
    error: str | None


class ParticipantOut(BaseModel):
    id: uuid.UUID
    external_id: str
    display_name: str
    role: Role
    age_band: AgeBand
    age: int | None
    adult: bool = Field(description="Deprecated: `age_band` is `adult`.")
    erased: bool = Field(
        description="The person was erased: the name and id are a tombstone, and there is no "
        "link, invite or token for them any more (the URLs are null)."
    )
    join_url: str | None
    invite_url: str | None
    token_url: str | None


class BookingOut(BaseModel):
    id: uuid.UUID
    title: str
    stated_purpose: str | None
    stated_by: str | None = Field(
        description="`external_id` of the client who stated the purpose (null without one)."
    )
    language: str
    starts_at: datetime
    ends_at: datetime
    status: BookingStatus = Field(
        description="Lifecycle: `scheduled` -> `open` (join window open) -> `live` (first "
        "person in) -> `ended` (window closed, or everyone left after the end) -> `closed` "
        "(after-session jobs done or none asked for); `cancelled` before `ended`."
    )
    requested_purposes: list[str]
    recording_policy: RecordingPolicy
    recording_access: RecordingAccess
    record_automatically: bool
    sequence: int
    created_at: datetime
    updated_at: datetime
    cancelled_at: datetime | None
    opened_at: datetime | None = Field(description="When the booking became `open`.")
    live_at: datetime | None = Field(description="When the first person came in (`live`).")
    ended_at: datetime | None = Field(description="When the session `ended`.")
    closed_at: datetime | None = Field(description="When the booking was `closed`.")
    room: RoomOut
    participants: list[ParticipantOut]


class BookingPage(BaseModel):
    items: list[BookingOut]
    next_cursor: str | None


def participant_out(runtime: Runtime, booking: Booking, person: Participant) -> ParticipantOut:
    base = f"{runtime.settings.base_url()}/v1/bookings/{booking.id}/participants/{person.id}"
    erased = person.erased
    return ParticipantOut(
        id=person.id,
        external_id=person.external_id,
        display_name=person.display_name,
        role=person.role,
        age_band=person.age_band,
        age=person.age,
        adult=person.adult,
        erased=erased,
        join_url=None if erased else service.join_link(runtime, person),
        invite_url=None if erased else f"{base}/invite.ics",
        token_url=None if erased else f"{base}/token",
    )


def booking_out(runtime: Runtime, booking: Booking) -> BookingOut:
    return BookingOut(
        id=booking.id,
        title=booking.title,
        stated_purpose=booking.stated_purpose,
        stated_by=booking.purpose_author.external_id if booking.purpose_author else None,
        language=booking.language,
        starts_at=booking.starts_at,
        ends_at=booking.ends_at,
        status=booking.status,
        requested_purposes=list(booking.requested_purposes),
        recording_policy=booking.recording_policy,
        recording_access=booking.recording_access,
        record_automatically=booking.record_automatically,
        sequence=booking.sequence,
        created_at=booking.created_at,
        updated_at=booking.updated_at,
        cancelled_at=booking.cancelled_at,
        opened_at=booking.opened_at,
        live_at=booking.live_at,
        ended_at=booking.ended_at,
        closed_at=booking.closed_at,
        room=RoomOut(
            name=booking.room_name,
            state=booking.room_state,
            attempts=booking.room_attempts,
            error=booking.room_error,
        ),
        participants=[participant_out(runtime, booking, p) for p in booking.participants],
    )


BookingId = Annotated[uuid.UUID, Path(description="The booking's id.")]
ParticipantId = Annotated[uuid.UUID, Path(description="The participant's pseudonymous id.")]


@router.post(
    "",
    status_code=201,
    summary="Book a session",
    description="Stores the booking with one host and its clients and provisions the room "
    "(LiveKit mode: `CreateRoom`; if LiveKit is unreachable the room stays `pending` and is "
    "retried). Returns each participant's personal join link. With an `Idempotency-Key`, "
    "repeating the same request returns the same booking (200); the same key with another "
    "body is a 409.",
    response_description="The new booking (201), or the one this Idempotency-Key made (200).",
    responses={200: {"model": BookingOut, "description": "Replayed"}, **problems.responses(
        401, 403, 409, 422
    )},
)
async def create_booking(
    runtime: RuntimeDep,
    rooms: RoomsDep,
    caller: SchedulerCaller,
    response: Response,
    request: Annotated[service.BookingRequest, Body(examples=[EXAMPLE])],
    idempotency_key: Annotated[
        str | None,
        Header(description="Makes retries safe: same key + same body = same booking."),
    ] = None,
) -> BookingOut:
    booking, created = await service.do_create_booking(
        runtime, caller, request, idempotency_key, rooms=rooms
    )
    response.status_code = 201 if created else 200
    return booking_out(runtime, booking)


@router.get(
    "",
    summary="List bookings",
    description="Bookings ordered by start time, filtered by time range (`from`: ending after, "
    "`to`: starting before), status and a participant's external id. Pass `next_cursor` as "
    "`cursor` for the next page.",
    responses=problems.responses(401, 403, 422),
)
async def list_bookings(
    runtime: RuntimeDep,
    caller: SchedulerCaller,
    from_: Annotated[Instant | None, Query(alias="from")] = None,
    to: Instant | None = None,
    status: BookingStatus | None = None,
    participant: Annotated[
        Line | None, Query(max_length=200, description="A participant's external id.")
    ] = None,
    cursor: Annotated[str | None, Query(pattern=bookinglist.CURSOR_PATTERN)] = None,
    limit: Annotated[int, Query(ge=1, le=200)] = 50,
) -> BookingPage:
    filters = bookinglist.BookingFilter(
        starts_before=to, ends_after=from_, status=status, participant=participant
    )
    async with runtime.db.session() as session:
        page, next_cursor = await bookinglist.list_bookings(
            session, caller.org_id, filters, cursor, limit
        )
    return BookingPage(items=[booking_out(runtime, b) for b in page], next_cursor=next_cursor)


@router.get(
    "/{booking_id}",
    summary="Get a booking",
    description="The booking with its room state and each participant's links.",
    responses=problems.responses(401, 403, 404, 422),
)
async def get_booking(
    runtime: RuntimeDep, caller: SchedulerCaller, booking_id: BookingId
) -> BookingOut:
    return booking_out(
        runtime, await service.access_booking_by_id(runtime, caller.org_id, booking_id)
    )


@router.patch(
    "/{booking_id}",
    summary="Reschedule a booking",
    description="Moves the booking to a new window; the invites' SEQUENCE grows. Tokens "
    "issued from now on expire no later than the new window's end. A session that already "
    "ended cannot move (409).",
    responses=problems.responses(401, 403, 404, 409, 410, 422),
)
async def reschedule_booking(
    runtime: RuntimeDep,
    rooms: RoomsDep,
    caller: SchedulerCaller,
    booking_id: BookingId,
    request: Annotated[
        service.RescheduleRequest,
        Body(examples=[{"starts_at": "2030-05-05T09:00:00Z", "ends_at": "2030-05-05T10:00:00Z"}]),
    ],
) -> BookingOut:
    booking = await service.do_reschedule_booking(
        runtime, caller.org_id, booking_id, request, rooms=rooms
    )
    return booking_out(runtime, booking)


@router.delete(
    "/{booking_id}",
    summary="Cancel a booking",
    description="Join links answer 410 from now on; in LiveKit mode the room is deleted. "
    "Cancelling a cancelled booking changes nothing; a session that already ended cannot be "
    "cancelled (409).",
    responses=problems.responses(401, 403, 404, 409, 422),
)
async def cancel_booking(
    runtime: RuntimeDep, rooms: RoomsDep, caller: SchedulerCaller, booking_id: BookingId
) -> BookingOut:
    booking = await service.do_cancel_booking(runtime, caller.org_id, booking_id, rooms=rooms)
    return booking_out(runtime, booking)


@router.get(
    "/{booking_id}/participants/{participant_id}/invite.ics",
    summary="Calendar invite",
    description="An RFC 5545 event with the participant's join link; SEQUENCE grows on each "
    "reschedule and a cancelled booking gives `METHOD:CANCEL`.",
    response_class=Response,
    responses={
        200: {"content": {"text/calendar": {}}, "description": "The invite"},
        **problems.responses(401, 403, 404, 410, 422),
    },
)
async def invite_ics(
    runtime: RuntimeDep,
    caller: SchedulerCaller,
    booking_id: BookingId,
    participant_id: ParticipantId,
) -> Response:
    async with runtime.db.session() as session:
        person = await service.access_booking_participant(
            session, caller.org_id, booking_id, participant_id
        )
        booking = person.booking
    if person.erased:
        raise Gone("this person was erased")
    organizer = f"mailto:no-reply@{runtime.settings.public_base_url.host}"
    body = invite(
        booking, person, service.join_link(runtime, person), organizer, runtime.clock.now()
    )
    return Response(
        body,
        media_type="text/calendar; charset=utf-8",
        headers={
            "Content-Disposition": f'attachment; filename="{booking.id}.ics"',
            "Cache-Control": "no-store",
        },
    )


@router.post(
    "/{booking_id}/participants/{participant_id}/token",
    summary="Media access for a participant",
    description="For platforms with their own client apps: the same payload `POST /v1/join` "
    "gives this participant, under the same window and cancellation rules.",
    responses=problems.responses(401, 403, 404, 410, 422),
)
async def participant_token(
    runtime: RuntimeDep,
    caller: SchedulerCaller,
    booking_id: BookingId,
    participant_id: ParticipantId,
) -> JoinGrant:
    return await do_participant_token(runtime, caller.org_id, booking_id, participant_id)


@router.patch(
    "/{booking_id}/participants/{participant_id}",
    summary="Correct a participant's display name or age (rectification)",
    description="Schedulers and admins. `display_name`, `age_band` and/or `age`; the "
    "correction is logged (which fields, when, by which key), shown at once on the open call "
    "pages (`peer-updated`) and in every invite and join from now on; the join link, role and "
    "consent stay as they are. An age band change re-applies the guardian rule; the host "
    "stays an adult, and nobody goes under the minimum age (422). An erased person: 410.",
    responses=problems.responses(401, 403, 404, 410, 422),
)
async def correct_participant(
    runtime: RuntimeDep,
    caller: CorrectorCaller,
    booking_id: BookingId,
    participant_id: ParticipantId,
    body: participants.ParticipantCorrection,
) -> ParticipantOut:
    await participants.do_correct_participant(runtime, caller, booking_id, participant_id, body)
    async with runtime.db.session() as session:
        person = await service.access_booking_participant(
            session, caller.org_id, booking_id, participant_id
        )
    return participant_out(runtime, person.booking, person)


@router.post(
    "/{booking_id}/participants/{participant_id}/revoke",
    summary="Replace a join link",
    description="Issues the participant a new join link; the old one answers 404 at once, "
    "exactly like a link that never existed, and everything it handed out ends at once on "
    "every node: unused signaling tickets (4401), the open call socket (`bye` `revoked`, "
    "4401), the recording connection and job-progress streams. In livekit mode the person is "
    "also removed from the room, and a join with a token of the old link is undone at once.",
    responses=problems.responses(401, 403, 404, 422),
)
async def revoke_link(
    runtime: RuntimeDep,
    rooms: RoomsDep,
    caller: SchedulerCaller,
    booking_id: BookingId,
    participant_id: ParticipantId,
) -> ParticipantOut:
    person = await participants.do_revoke_participant(
        runtime, caller.org_id, booking_id, participant_id, rooms=rooms
    )
    return participant_out(runtime, person.booking, person)
