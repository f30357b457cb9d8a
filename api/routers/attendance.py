"""Attendance of a booking for its scheduler: who came, when, for how long, no-shows."""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import Annotated

from fastapi import APIRouter, Depends
from pydantic import BaseModel, Field

from api import problems
from api.deps import RuntimeDep, require
from api.routers.bookings import BookingId, no_store
from core.accounts import Caller, Scope
from core.bookings import BookingStatus, Role
from signaling import bookings as service
from signaling.attendance import LeaveHow, get_attendance

router = APIRouter(
    prefix="/v1/bookings", tags=["bookings (scheduler)"], dependencies=[Depends(no_store)]
)


class StayOut(BaseModel):
    joined_at: datetime
    left_at: datetime | None
    how: LeaveHow | None = Field(description="How the stay ended (null: still present).")


class PersonAttendanceOut(BaseModel):
    participant_id: uuid.UUID
    external_id: str
    role: Role
    present: bool
    seconds_present: float = Field(description="Total time present so far (s).")
    no_show: bool | None = Field(
        description="Never came in; decided when the window closes (null until then)."
    )
    stays: list[StayOut]


class AttendanceOut(BaseModel):
    booking_id: uuid.UUID
    status: BookingStatus
    people: list[PersonAttendanceOut]


@router.get(
    "/{booking_id}/attendance",
    summary="Who attended",
    description="Per participant (pseudonymous id and your external id, never a name): each "
    "join and leave with its time, the total time present, and `no_show` once the join "
    "window closed. Scheduler and admin keys.",
    responses=problems.responses(401, 403, 404, 422),
)
async def attendance(
    runtime: RuntimeDep,
    caller: Annotated[Caller, Depends(require(Scope.SCHEDULER, Scope.ADMIN))],
    booking_id: BookingId,
) -> AttendanceOut:
    async with runtime.db.session() as session:
        booking = await service.access_org_booking(session, caller.org_id, booking_id)
        people = await get_attendance(session, booking, runtime.clock.now())
    return AttendanceOut(
        booking_id=booking.id, status=booking.status,
        people=[
            PersonAttendanceOut(
                participant_id=p.participant.id, external_id=p.participant.external_id,
                role=p.participant.role, present=p.present, seconds_present=p.seconds,
                no_show=p.no_show,
                stays=[StayOut(joined_at=s.joined_at, left_at=s.left_at, how=s.left_how)
                       for s in p.stays],
            )
            for p in people
        ],
    )
