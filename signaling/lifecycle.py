"""The booking lifecycle sweep: `scheduled -> open -> live -> ended -> closed`.

`open` when the join window opens, `live` at the first join (signaling/attendance.py),
`ended` when the window closes or, after the booked end, when no one is left, `closed` once
the after-session jobs finished or none were asked for; `cancelled` (signaling/bookings.py)
from any state before `ended`. Each transition stores its time, writes its outbox event in the
same transaction and, after the commit, publishes the same event on the bus (`booking.ended`
starts the after-session jobs).

The sweep is state in the database, nothing in memory: a restarted node picks up where any
node left off. Several nodes sweep the same database safely: each takes the due bookings with
`SELECT ... FOR UPDATE SKIP LOCKED` (PostgreSQL), so a booking is advanced by exactly one node
at a time and another node skips it instead of waiting; a node that dies mid-sweep loses its
connection, PostgreSQL rolls its transaction back and releases the rows, and the next sweep of
any node takes them. SQLite (one machine) serializes writers anyway.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Sequence
from datetime import datetime
from types import TracebackType
from typing import Protocol

import structlog
from sqlalchemy import and_, or_, select
from sqlalchemy.ext.asyncio import AsyncSession

from core import events
from core.bookings import Booking, BookingStatus
from core.bus import BusEvent, publish_all
from core.outbox import (
    BookingClosed,
    BookingEnded,
    BookingOpened,
    ParticipantNoShow,
    do_write,
)
from core.runtime import Runtime
from core.tasks import stop_tasks
from signaling.attendance import LeaveHow, attended, end_all_stays, open_stays

log = structlog.get_logger(__name__)

BATCH = 100
BUS: dict[type, type[events.BookingChanged]] = {
    BookingOpened: events.BookingOpened,
    BookingEnded: events.BookingEnded,
    BookingClosed: events.BookingClosed,
}


class AfterSession(Protocol):
    """The after-session work (summaries/ implements it; the app wires it in)."""

    async def settle(self, booking_id: uuid.UUID) -> bool:
        """Start what is due for this ended booking (idempotent); True while work remains."""
        ...


class Lifecycle:
    """Enter on the lifespan; sweeps every `lifecycle_sweep_interval_s` (0: never by itself)."""

    def __init__(self, runtime: Runtime, after_session: AfterSession | None = None) -> None:
        self._rt = runtime
        self._after = after_session
        self._task: asyncio.Task[None] | None = None

    async def __aenter__(self) -> Lifecycle:
        if self._rt.settings.lifecycle_sweep_interval_s > 0:
            self._task = asyncio.create_task(self._forever(), name="lifecycle-sweep")
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        task, self._task = self._task, None
        await stop_tasks([task])

    async def _forever(self) -> None:
        while True:
            try:
                await self.sweep_once()
            except asyncio.CancelledError:
                raise
            except Exception:  # a database outage must not end the sweep
                log.exception("lifecycle.sweep_failed")
            await asyncio.sleep(self._rt.settings.lifecycle_sweep_interval_s)

    async def sweep_once(self) -> int:
        """Advance every due booking once; the number of transitions made."""
        moved = await self._advance_due(self._rt.clock.now())
        for booking_id in await self._ended():
            if self._after is None or not await self._after.settle(booking_id):
                moved += await self._close(booking_id)
        return moved

    async def _advance_due(self, now: datetime) -> int:
        settings = self._rt.settings
        due = or_(
            and_(
                Booking.status == BookingStatus.SCHEDULED,
                Booking.starts_at <= now + settings.join_lead,
            ),
            and_(
                Booking.status.in_([BookingStatus.OPEN, BookingStatus.LIVE]),
                Booking.ends_at <= now,
            ),
        )
        told: list[BusEvent] = []
        async with self._rt.db.session() as session:
            query = (
                select(Booking).where(due).order_by(Booking.starts_at).limit(BATCH)
                .with_for_update(skip_locked=True)
                .execution_options(populate_existing=True)
            )
            for booking in (await session.scalars(query)).all():
                told += await self.advance(session, booking, now)
        await publish_all(self._rt.bus, told)
        return len(told)

    async def advance(
        self, session: AsyncSession, booking: Booking, now: datetime
    ) -> list[BusEvent]:
        """Move one locked booking as far as `now` allows; the bus events to publish."""
        settings = self._rt.settings
        opens, closes = booking.join_window(settings.join_lead, settings.join_grace)
        told: list[BusEvent] = []
        if booking.status is BookingStatus.SCHEDULED and now >= opens:
            booking.status = BookingStatus.OPEN
            booking.opened_at = now
            told.append(self._write(session, BookingOpened, booking, now))
        if booking.status in (BookingStatus.OPEN, BookingStatus.LIVE) and (
            now >= closes or (now >= booking.ends_at and not await open_stays(session, booking.id))
        ):
            await self._end(session, booking, now)
            told.append(self._write(session, BookingEnded, booking, now))
        return told

    def _write(
        self, session: AsyncSession, cls: type[BookingOpened | BookingEnded | BookingClosed],
        booking: Booking, now: datetime,
    ) -> BusEvent:
        """The transition's outbox event (in this transaction) and its bus event (for after)."""
        booking.updated_at = now
        terms = (
            booking.id, booking.status.value, booking.starts_at, booking.ends_at, booking.sequence
        )
        do_write(session, cls(*terms), now)
        return BUS[cls](
            booking_id=terms[0], status=terms[1], starts_at=terms[2], ends_at=terms[3],
            sequence=terms[4],
        )

    async def _end(self, session: AsyncSession, booking: Booking, now: datetime) -> None:
        """The window closed: everyone still in leaves, whoever never came did not show."""
        await end_all_stays(session, booking, now, LeaveHow.WINDOW_CLOSED)
        came = await attended(session, booking.id)
        for person in booking.participants:
            if person.id not in came:
                do_write(session, ParticipantNoShow(
                    booking.id, person.id, person.external_id, person.role.value, now
                ), now)
        booking.status = BookingStatus.ENDED
        booking.ended_at = now

    async def _ended(self) -> Sequence[uuid.UUID]:
        async with self._rt.db.session() as session:
            query = select(Booking.id).where(Booking.status == BookingStatus.ENDED).limit(BATCH)
            return (await session.scalars(query)).all()

    async def _close(self, booking_id: uuid.UUID) -> int:
        now = self._rt.clock.now()
        async with self._rt.db.session() as session:
            query = (
                select(Booking)
                .where(Booking.id == booking_id, Booking.status == BookingStatus.ENDED)
                .with_for_update(skip_locked=True)
                .execution_options(populate_existing=True)
            )
            booking = await session.scalar(query)
            if booking is None:
                return 0  # another node closed it, or is closing it now
            booking.status = BookingStatus.CLOSED
            booking.closed_at = now
            event = self._write(session, BookingClosed, booking, now)
        await publish_all(self._rt.bus, [event])
        return 1
