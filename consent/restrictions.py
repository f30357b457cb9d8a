"""Restriction of processing (GDPR art. 18): a person an admin froze is never captured or
processed, whatever they consented to, until the restriction is lifted.

Keyed by the organization and the platform's external id (a person across all their
bookings with that organization; another organization's platform names other people, even
with the same id). The gate reads it
like a decision: `BookingConsent.restricted` holds the booking's restricted participants.
"""

from __future__ import annotations

import uuid
from datetime import datetime

from sqlalchemy import String, select
from sqlalchemy.ext.asyncio import AsyncSession
from sqlalchemy.orm import Mapped, mapped_column

from core.bookings import Booking, Participant
from core.database import Base, UTCDateTime


class Restriction(Base):
    __tablename__ = "subject_restrictions"

    org_id: Mapped[str] = mapped_column(String(32), primary_key=True)
    external_id: Mapped[str] = mapped_column(String(200), primary_key=True)
    restricted_at: Mapped[datetime] = mapped_column(UTCDateTime())
    api_key_id: Mapped[str | None] = mapped_column(String(24), nullable=True)


async def restricted_in_booking(
    session: AsyncSession, booking_id: uuid.UUID
) -> frozenset[uuid.UUID]:
    """The booking's participants whose processing is restricted."""
    query = (
        select(Participant.id)
        .join(Booking, Booking.id == Participant.booking_id)
        .join(
            Restriction,
            (Restriction.external_id == Participant.external_id)
            & (Restriction.org_id == Booking.org_id),
        )
        .where(Participant.booking_id == booking_id)
    )
    return frozenset((await session.execute(query)).scalars())


async def get_restriction(
    session: AsyncSession, org_id: str, external_id: str
) -> Restriction | None:
    return await session.get(Restriction, (org_id, external_id))
