"""What the AI jobs produce, each stored with its purpose and a retention deadline.

Transcripts (with per-speaker segments), summaries and agendas are readable by the booking's
participants and admins only (`api/routers/summaries.py`; see docs/privacy.md). Each output
names the job that made it (unique), so a retried job can never store two of them.
"""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import Any, TypeVar

from sqlalchemy import JSON, ForeignKey, Integer, String, Text, Uuid, select
from sqlalchemy.ext.asyncio import AsyncSession
from sqlalchemy.orm import Mapped, mapped_column, relationship

from core.database import Base, UTCDateTime, enum_column
from core.purposes import Purpose


class Transcript(Base):
    __tablename__ = "transcripts"

    id: Mapped[uuid.UUID] = mapped_column(Uuid, primary_key=True, default=uuid.uuid4)
    booking_id: Mapped[uuid.UUID] = mapped_column(
        ForeignKey("bookings.id", ondelete="CASCADE"), index=True
    )
    job_id: Mapped[uuid.UUID] = mapped_column(Uuid, unique=True)
    purpose: Mapped[Purpose] = mapped_column(enum_column(Purpose, 32))
    language: Mapped[str] = mapped_column(String(35))
    created_at: Mapped[datetime] = mapped_column(UTCDateTime())
    retain_until: Mapped[datetime] = mapped_column(UTCDateTime(), index=True)

    segments: Mapped[list[Segment]] = relationship(
        order_by="Segment.position", lazy="selectin", cascade="all, delete-orphan"
    )


class Segment(Base):
    __tablename__ = "transcript_segments"

    id: Mapped[uuid.UUID] = mapped_column(Uuid, primary_key=True, default=uuid.uuid4)
    transcript_id: Mapped[uuid.UUID] = mapped_column(
        ForeignKey("transcripts.id", ondelete="CASCADE"), index=True
    )
    position: Mapped[int] = mapped_column(Integer)
    subject_id: Mapped[uuid.UUID] = mapped_column(Uuid, index=True)
    label: Mapped[str] = mapped_column(String(64))
    start_ms: Mapped[int] = mapped_column(Integer)
    end_ms: Mapped[int] = mapped_column(Integer)
    text: Mapped[str] = mapped_column(Text)
    entry_ids: Mapped[list[str]] = mapped_column(JSON)


class Summary(Base):
    __tablename__ = "summaries"

    id: Mapped[uuid.UUID] = mapped_column(Uuid, primary_key=True, default=uuid.uuid4)
    booking_id: Mapped[uuid.UUID] = mapped_column(
        ForeignKey("bookings.id", ondelete="CASCADE"), index=True
    )
    job_id: Mapped[uuid.UUID] = mapped_column(Uuid, unique=True)
    purpose: Mapped[Purpose] = mapped_column(enum_column(Purpose, 32))
    language: Mapped[str] = mapped_column(String(35))
    body: Mapped[dict[str, Any]] = mapped_column(JSON)
    subjects: Mapped[list[str]] = mapped_column(JSON)  # whose words are in it
    entry_ids: Mapped[list[str]] = mapped_column(JSON)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime())
    retain_until: Mapped[datetime] = mapped_column(UTCDateTime(), index=True)


class Agenda(Base):
    __tablename__ = "agendas"

    id: Mapped[uuid.UUID] = mapped_column(Uuid, primary_key=True, default=uuid.uuid4)
    booking_id: Mapped[uuid.UUID] = mapped_column(
        ForeignKey("bookings.id", ondelete="CASCADE"), index=True
    )
    job_id: Mapped[uuid.UUID] = mapped_column(Uuid, unique=True)
    purpose: Mapped[Purpose] = mapped_column(enum_column(Purpose, 32))
    language: Mapped[str] = mapped_column(String(35))
    items: Mapped[list[dict[str, Any]]] = mapped_column(JSON)
    subjects: Mapped[list[str]] = mapped_column(JSON)
    entry_ids: Mapped[list[str]] = mapped_column(JSON)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime())
    retain_until: Mapped[datetime] = mapped_column(UTCDateTime(), index=True)


Output = TypeVar("Output", "Transcript", "Summary", "Agenda")


async def get_for_job(
    session: AsyncSession, model: type[Transcript | Summary | Agenda], job_id: uuid.UUID
) -> uuid.UUID | None:
    """The id of the output a job already stored (the at-most-once check)."""
    query = select(model.id).where(model.job_id == job_id)
    return (await session.execute(query)).scalar_one_or_none()


async def get_latest(
    session: AsyncSession, model: type[Output], booking_id: uuid.UUID, now: datetime
) -> Output | None:
    """The booking's newest output of this kind still within its retention (an expired one
    is never read or reused, even before the retention job has deleted it)."""
    query = (
        select(model)
        .where(model.booking_id == booking_id, model.retain_until > now)
        .order_by(model.created_at.desc())
        .limit(1)
    )
    return (await session.execute(query)).scalar_one_or_none()


async def get_summaries_with(
    session: AsyncSession, booking_id: uuid.UUID, subject_id: uuid.UUID
) -> list[Summary]:
    """Summaries of the booking made from this person's words."""
    query = select(Summary).where(Summary.booking_id == booking_id)
    rows = (await session.execute(query)).scalars()
    return [s for s in rows if str(subject_id) in s.subjects]
