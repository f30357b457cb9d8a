"""The processing register (GDPR art. 30): one row per AI processing step, never updated.

Who (pseudonymous subject ids), what (data categories), why (purpose), under which consent
(ledger entry ids), where (provider, model, endpoint host), when, how much (input bytes) and
with what outcome. Deletions of outputs after a withdrawal are rows too.
"""

from __future__ import annotations

import enum
import uuid
from collections.abc import Sequence
from datetime import datetime
from typing import Any

from sqlalchemy import JSON, Integer, String, Text, Uuid, select
from sqlalchemy.ext.asyncio import AsyncSession
from sqlalchemy.orm import Mapped, mapped_column

from core.bookings import Booking
from core.database import Base, UTCDateTime, enum_column
from core.purposes import Purpose


class Outcome(enum.StrEnum):
    SENT = "sent"  # the provider processed it; an output was stored
    FAILED = "failed"  # sent, but the provider failed for good
    SKIPPED = "skipped"  # nothing sent: consent did not allow it
    DELETED = "deleted"  # an output was deleted (withdrawal)


class RegisterEntry(Base):
    __tablename__ = "processing_register"

    id: Mapped[uuid.UUID] = mapped_column(Uuid, primary_key=True, default=uuid.uuid4)
    at: Mapped[datetime] = mapped_column(UTCDateTime(), index=True)
    booking_id: Mapped[uuid.UUID] = mapped_column(Uuid, index=True)
    job_id: Mapped[uuid.UUID | None] = mapped_column(Uuid, nullable=True, index=True)
    purpose: Mapped[Purpose] = mapped_column(enum_column(Purpose, 32))
    subjects: Mapped[list[str]] = mapped_column(JSON)
    data_categories: Mapped[list[str]] = mapped_column(JSON)
    entry_ids: Mapped[list[str]] = mapped_column(JSON)
    provider: Mapped[str] = mapped_column(String(40))
    model: Mapped[str] = mapped_column(String(100))
    endpoint: Mapped[str] = mapped_column(String(200))
    input_bytes: Mapped[int] = mapped_column(Integer)
    outcome: Mapped[Outcome] = mapped_column(enum_column(Outcome, 16))
    detail: Mapped[str] = mapped_column(Text, default="")

    def view(self) -> dict[str, Any]:
        return {
            "id": str(self.id),
            "at": self.at.isoformat(),
            "booking_id": str(self.booking_id),
            "job_id": str(self.job_id) if self.job_id else None,
            "purpose": self.purpose.value,
            "subjects": list(self.subjects),
            "data_categories": list(self.data_categories),
            "consent_entries": list(self.entry_ids),
            "provider": self.provider,
            "model": self.model,
            "endpoint": self.endpoint,
            "input_bytes": self.input_bytes,
            "outcome": self.outcome.value,
            "detail": self.detail,
        }


def do_register(
    session: AsyncSession,
    *,
    at: datetime,
    booking_id: uuid.UUID,
    job_id: uuid.UUID | None,
    purpose: Purpose,
    subjects: Sequence[uuid.UUID],
    categories: Sequence[str],
    entry_ids: Sequence[uuid.UUID],
    provider: str,
    model: str,
    endpoint: str,
    input_bytes: int,
    outcome: Outcome,
    detail: str = "",
) -> RegisterEntry:
    row = RegisterEntry(
        id=uuid.uuid4(),
        at=at,
        booking_id=booking_id,
        job_id=job_id,
        purpose=purpose,
        subjects=[str(s) for s in subjects],
        data_categories=[str(c) for c in categories],
        entry_ids=[str(e) for e in entry_ids],
        provider=provider,
        model=model,
        endpoint=endpoint,
        input_bytes=input_bytes,
        outcome=outcome,
        detail=detail,
    )
    session.add(row)
    return row


async def get_register(
    session: AsyncSession,
    org_id: str,
    *,
    booking_id: uuid.UUID | None = None,
    limit: int = 100,
    before: datetime | None = None,
) -> list[RegisterEntry]:
    """The organization's register rows (of its bookings), newest first."""
    ours = select(Booking.id).where(Booking.org_id == org_id)
    query = select(RegisterEntry).where(RegisterEntry.booking_id.in_(ours))
    if booking_id is not None:
        query = query.where(RegisterEntry.booking_id == booking_id)
    if before is not None:
        query = query.where(RegisterEntry.at < before)
    query = query.order_by(RegisterEntry.at.desc(), RegisterEntry.id).limit(limit)
    return list((await session.execute(query)).scalars())
