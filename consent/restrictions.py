"""Restriction of processing (GDPR art. 18): a person an admin froze is never captured or
processed, whatever they consented to, until the restriction is lifted.

Keyed by the platform's external id (a person across all their bookings). The gate reads it
like a decision: `BookingConsent.restricted` holds the booking's restricted participants.
"""

from __future__ import annotations

import uuid
from datetime import datetime

from sqlalchemy import String, select
from sqlalchemy.ext.asyncio import AsyncSession
from sqlalchemy.orm import Mapped, mapped_column

from core.bookings import Participant
from core.database import Base, UTCDateTime


class Restriction(Base):
    __tablename__ = "subject_restrictions"

    external_id: Mapped[str] = mapped_column(String(200), primary_key=True)
    restricted_at: Mapped[datetime] = mapped_column(UTCDateTime())
    api_key_id: Mapped[str | None] = mapped_column(String(24), nullable=True)


async def restricted_in_booking(
    session: AsyncSession, booking_id: uuid.UUID
) -> frozenset[uuid.UUID]:
    """The booking's participants whose processing is restricted."""
    query = (
        select(Participant.id)
        .join(Restriction, Restriction.external_id == Participant.external_id)
        .where(Participant.booking_id == booking_id)
    )
    return frozenset((await session.execute(query)).scalars())


async def get_restriction(session: AsyncSession, external_id: str) -> Restriction | None:
    return await session.get(Restriction, external_id)
