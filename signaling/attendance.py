"""Attendance: who was in the session, from when to when, and who never came.

One row per stay (a join and its leave) per pseudonymous participant id. `do_mark_joined`
and `do_mark_left` are the one door for "participant joined/left at T", called by the built-in
signaling hub and by LiveKit webhooks alike; both are idempotent (a second join while present,
or a leave while absent, changes nothing), so several nodes may report the same change. The
first join of a session moves the booking to `live`. `no_show` is decided when the window
closes (signaling/lifecycle.py): a participant with no stay by then did not show.
"""

from __future__ import annotations

import enum
import uuid
from dataclasses import dataclass
from datetime import datetime, timedelta

from sqlalchemy import ForeignKey, Uuid, select
from sqlalchemy.ext.asyncio import AsyncSession
from sqlalchemy.orm import Mapped, mapped_column

from core import events as bus_events
from core.bookings import Booking, BookingStatus, Participant
from core.bus import BusEvent, publish_all
from core.database import Base, UTCDateTime, enum_column
from core.outbox import BookingStarted, ParticipantJoined, ParticipantLeft, do_write
from core.runtime import Runtime


class LeaveHow(enum.StrEnum):
    LEFT = "left"  # a deliberate Leave (the page's button, the socket's `bye`)
    DROPPED = "dropped"  # the connection dropped and did not come back within the grace
    REMOVED = "removed"  # put out (erasure, revocation)
    WINDOW_CLOSED = "window_closed"  # still there when the join window closed
    CANCELLED = "cancelled"  # still there when the booking was cancelled


class Stay(Base):
    __tablename__ = "attendance"

    id: Mapped[uuid.UUID] = mapped_column(Uuid, primary_key=True, default=uuid.uuid4)
    booking_id: Mapped[uuid.UUID] = mapped_column(
        ForeignKey("bookings.id", ondelete="CASCADE"), index=True
    )
    participant_id: Mapped[uuid.UUID] = mapped_column(
        ForeignKey("participants.id", ondelete="CASCADE"), index=True
    )
    joined_at: Mapped[datetime] = mapped_column(UTCDateTime())
    left_at: Mapped[datetime | None] = mapped_column(UTCDateTime(), nullable=True)
    left_how: Mapped[LeaveHow | None] = mapped_column(enum_column(LeaveHow), nullable=True)


def started_event(booking: Booking) -> BookingStarted:
    return BookingStarted(
        booking.id, booking.status.value, booking.starts_at, booking.ends_at, booking.sequence
    )


async def lock_booking(session: AsyncSession, booking_id: uuid.UUID) -> Booking | None:
    """The booking, its row locked until the transaction ends (serializes with the sweep)."""
    query = select(Booking).where(Booking.id == booking_id).with_for_update()
    return await session.scalar(query.execution_options(populate_existing=True))


async def open_stays(session: AsyncSession, booking_id: uuid.UUID) -> list[Stay]:
    query = select(Stay).where(Stay.booking_id == booking_id, Stay.left_at.is_(None))
    return list((await session.scalars(query)).all())


def _participant(booking: Booking, participant_id: uuid.UUID) -> Participant | None:
    return next((p for p in booking.participants if p.id == participant_id), None)


async def do_mark_joined(
    runtime: Runtime, booking_id: uuid.UUID, participant_id: uuid.UUID, at: datetime
) -> bool:
    """Record that the person came in at `at`; True when this was news."""
    told: list[BusEvent] = []
    async with runtime.db.session() as session:
        booking = await lock_booking(session, booking_id)
        person = _participant(booking, participant_id) if booking else None
        if booking is None or person is None:
            return False
        if any(s.participant_id == participant_id for s in await open_stays(session, booking_id)):
            return False
        if booking.status in (BookingStatus.SCHEDULED, BookingStatus.OPEN):
            booking.opened_at = booking.opened_at or at
            booking.status = BookingStatus.LIVE
            booking.live_at = at
            booking.updated_at = at
            do_write(session, started_event(booking), at)
            told.append(bus_events.BookingStarted(
                booking_id=booking.id, status=booking.status.value,
                starts_at=booking.starts_at, ends_at=booking.ends_at, sequence=booking.sequence,
            ))
        session.add(Stay(booking_id=booking_id, participant_id=participant_id, joined_at=at))
        do_write(session, ParticipantJoined(
            booking_id, participant_id, person.external_id, person.role.value, at
        ), at)
    await publish_all(runtime.bus, told)
    return True


async def do_mark_left(
    runtime: Runtime, booking_id: uuid.UUID, participant_id: uuid.UUID, at: datetime,
    how: LeaveHow,
) -> bool:
    """Record that the person went away at `at`; True when this was news."""
    async with runtime.db.session() as session:
        booking = await lock_booking(session, booking_id)
        person = _participant(booking, participant_id) if booking else None
        if booking is None or person is None:
            return False
        stay = next(
            (s for s in await open_stays(session, booking_id) if s.participant_id == person.id),
            None,
        )
        if stay is None:
            return False
        end_stay(session, booking, person, stay, at, how)
    return True


def end_stay(
    session: AsyncSession, booking: Booking, person: Participant, stay: Stay, at: datetime,
    how: LeaveHow,
) -> None:
    stay.left_at = max(at, stay.joined_at)
    stay.left_how = how
    do_write(session, ParticipantLeft(
        booking.id, person.id, person.external_id, person.role.value, stay.left_at, how.value
    ), at)


async def end_all_stays(
    session: AsyncSession, booking: Booking, at: datetime, how: LeaveHow
) -> None:
    """Everyone still present leaves now (the window closed, the booking was cancelled)."""
    people = {p.id: p for p in booking.participants}
    for stay in await open_stays(session, booking.id):
        person = people.get(stay.participant_id)
        if person is not None:
            end_stay(session, booking, person, stay, at, how)


async def booking_stays(session: AsyncSession, booking_id: uuid.UUID) -> list[Stay]:
    """Every stay in the booking, in the order people came in."""
    query = select(Stay).where(Stay.booking_id == booking_id).order_by(Stay.joined_at)
    return list((await session.scalars(query)).all())


async def attended(session: AsyncSession, booking_id: uuid.UUID) -> set[uuid.UUID]:
    """Who came in at least once."""
    query = select(Stay.participant_id).where(Stay.booking_id == booking_id).distinct()
    return set((await session.scalars(query)).all())


@dataclass(frozen=True)
class PersonAttendance:
    participant: Participant
    stays: list[Stay]
    present: bool
    seconds: float
    no_show: bool | None  # None until the window closed


async def get_attendance(
    session: AsyncSession, booking: Booking, now: datetime
) -> list[PersonAttendance]:
    stays = await booking_stays(session, booking.id)
    decided = booking.status in (BookingStatus.ENDED, BookingStatus.CLOSED)
    out: list[PersonAttendance] = []
    for person in booking.participants:
        own = [s for s in stays if s.participant_id == person.id]
        total = sum(
            ((s.left_at or now) - s.joined_at for s in own), start=timedelta()
        ).total_seconds()
        out.append(PersonAttendance(
            participant=person, stays=own, present=any(s.left_at is None for s in own),
            seconds=max(total, 0.0), no_show=(not own) if decided else None,
        ))
    return out


async def do_mark_from_livekit(
    runtime: Runtime, room: str, identity: str, joined: bool, at: datetime, deliberate: bool
) -> bool:
    """LiveKit's own word (its `participant_joined` / `participant_left` webhooks) on who is in
    a LiveKit-mode room, as built-in signaling reports it: the identity is the participant id.
    `deliberate`: the person left themselves (LiveKit's CLIENT_INITIATED)."""
    try:
        participant_id = uuid.UUID(identity)
    except ValueError:
        return False
    async with runtime.db.session() as session:
        booking_id = await session.scalar(select(Booking.id).where(Booking.room_name == room))
    if booking_id is None:
        return False
    if joined:
        return await do_mark_joined(runtime, booking_id, participant_id, at)
    how = LeaveHow.LEFT if deliberate else LeaveHow.DROPPED
    return await do_mark_left(runtime, booking_id, participant_id, at, how)
