"""One organization's bookings, a page at a time (ordered by start, with an opaque cursor)."""

from __future__ import annotations

import re
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from sqlalchemy import and_, exists, or_, select
from sqlalchemy.ext.asyncio import AsyncSession

from core.bookings import Booking, BookingStatus, Participant
from core.errors import InvalidInput


@dataclass(frozen=True)
class BookingFilter:
    starts_before: datetime | None = None  # `to`: bookings starting before this
    ends_after: datetime | None = None  # `from`: bookings ending after this
    status: BookingStatus | None = None
    participant: str | None = None  # a participant's external id


# `<start in microseconds since 1970>.<booking id>`: every string of this shape is a cursor
# (the OpenAPI document states the pattern, and nothing matching it is refused).
CURSOR_PATTERN = r"^[0-9]{1,17}\.[0-9a-f]{32}$"
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


def encode_cursor(booking: Booking) -> str:
    micros = (booking.starts_at - _EPOCH) // timedelta(microseconds=1)
    return f"{micros}.{booking.id.hex}"


def decode_cursor(cursor: str) -> tuple[datetime, uuid.UUID]:
    if not re.match(CURSOR_PATTERN, cursor):
        raise InvalidInput.field(("query", "cursor"), "not a cursor from this API")
    micros, ident = cursor.split(".")
    return _EPOCH + timedelta(microseconds=int(micros)), uuid.UUID(hex=ident)


async def list_bookings(
    session: AsyncSession, org_id: str, filters: BookingFilter, cursor: str | None, limit: int
) -> tuple[list[Booking], str | None]:
    """One page of the organization's bookings ordered by start, and the cursor of the next
    page (or None)."""
    query = select(Booking).order_by(Booking.starts_at, Booking.id)
    conditions: list[Any] = [Booking.org_id == org_id]
    if filters.ends_after is not None:
        conditions.append(Booking.ends_at > filters.ends_after)
    if filters.starts_before is not None:
        conditions.append(Booking.starts_at < filters.starts_before)
    if filters.status is not None:
        conditions.append(Booking.status == filters.status)
    if filters.participant is not None:
        conditions.append(
            exists().where(
                Participant.booking_id == Booking.id,
                Participant.external_id == filters.participant,
            )
        )
    if cursor is not None:
        after_start, after_id = decode_cursor(cursor)
        conditions.append(
            or_(
                Booking.starts_at > after_start,
                and_(Booking.starts_at == after_start, Booking.id > after_id),
            )
        )
    rows = list((await session.scalars(query.where(*conditions).limit(limit + 1))).all())
    more = len(rows) > limit
    page = rows[:limit]
    return page, (encode_cursor(page[-1]) if more and page else None)
