"""Who may read what a session produced, after it: recordings, transcript lines, summaries.

`access_session_data` is the only door (media and summaries both ask it): an admin key reads
everything; a participant, through their join link, reads what the booking's
`recording_access` gives them, until `participant_access_days` after the session's end, and
nothing while their processing is restricted (an erased person's link no longer works at all).
Every read is logged (`DataRead`: who, what, when, how many bytes, whose data), for admins
(`GET /v1/admin/reads`) and in the export of the reader and of the people read about.
"""

from __future__ import annotations

import enum
import uuid
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import JSON, BigInteger, ForeignKey, Integer, String, Uuid, select
from sqlalchemy.ext.asyncio import AsyncSession
from sqlalchemy.orm import Mapped, mapped_column

from consent.restrictions import get_restriction
from core.accounts import Viewer, access_booking_data
from core.bookings import Booking, Role
from core.database import Base, UTCDateTime, enum_column
from core.errors import PermissionDenied
from core.organizations import org_settings
from core.purposes import RecordingAccess
from core.settings import Settings


@dataclass(frozen=True)
class Readable:
    """What one reader may see of one booking's recordings, transcript and summaries."""

    booking_id: uuid.UUID
    everyone: bool  # every person's data of the booking
    reader: uuid.UUID | None  # the reading participant (None: an admin key)

    def covers(self, subject_id: uuid.UUID) -> bool:
        """A recording or transcript line of this person."""
        return self.everyone or subject_id == self.reader

    def covers_any(self, subjects: Iterable[str]) -> bool:
        """A summary made from these people's words: readable by those it is made from."""
        return self.everyone or str(self.reader) in set(subjects)


def participant_access_ends(booking: Booking, settings: Settings) -> datetime:
    return booking.ends_at + timedelta(days=settings.participant_access_days)


async def access_session_data(
    session: AsyncSession, settings: Settings, now: datetime, booking_id: uuid.UUID,
    viewer: Viewer,
) -> Readable:
    """What the viewer may read of the booking's session data, or why they may read nothing
    (`access_booking_data` first: another booking's participant gets NotFound, so they
    cannot learn it exists; a key of another scope PermissionDenied)."""
    await access_booking_data(session, viewer, booking_id)
    participant = viewer.participant
    if participant is None:  # an admin key of the booking's organization
        return Readable(booking_id, everyone=True, reader=None)
    booking = participant.booking
    settings = await org_settings(session, settings, booking.org_id)
    access = booking.recording_access
    if access is RecordingAccess.ADMINS:
        raise PermissionDenied("this booking's recordings, transcript and summary are for admins")
    ends = participant_access_ends(booking, settings)
    if now >= ends:
        raise PermissionDenied(
            "access through the join link ended", extra={"access_ended_at": ends.isoformat()}
        )
    if await get_restriction(session, booking.org_id, participant.external_id) is not None:
        raise PermissionDenied("processing of your data is restricted; ask the operator")
    everyone = access is RecordingAccess.PARTICIPANTS or (
        access is RecordingAccess.HOST and participant.role is Role.HOST
    )
    return Readable(booking_id, everyone=everyone, reader=participant.id)


class DataKind(enum.StrEnum):
    RECORDING = "recording"
    TRANSCRIPT = "transcript"
    SUMMARY = "summary"


class DataRead(Base):
    """One read of a recording, transcript or summary; never updated."""

    __tablename__ = "data_reads"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    at: Mapped[datetime] = mapped_column(UTCDateTime(), index=True)
    booking_id: Mapped[uuid.UUID] = mapped_column(
        ForeignKey("bookings.id", ondelete="CASCADE"), index=True
    )
    kind: Mapped[DataKind] = mapped_column(enum_column(DataKind))
    item_id: Mapped[uuid.UUID] = mapped_column(Uuid)
    reader_participant_id: Mapped[uuid.UUID | None] = mapped_column(
        Uuid, nullable=True, index=True
    )
    reader_api_key_id: Mapped[str | None] = mapped_column(String(24), nullable=True)
    subjects: Mapped[list[str]] = mapped_column(JSON)  # whose data was in what was read
    bytes: Mapped[int] = mapped_column(BigInteger)

    def view(self) -> dict[str, Any]:
        return {
            "at": self.at.isoformat(),
            "booking_id": str(self.booking_id),
            "kind": self.kind.value,
            "item_id": str(self.item_id),
            "reader": (
                {"participant_id": str(self.reader_participant_id)}
                if self.reader_participant_id is not None
                else {"api_key_id": self.reader_api_key_id}
            ),
            "subjects": list(self.subjects),
            "bytes": self.bytes,
        }


def do_log_read(
    session: AsyncSession, readable: Readable, kind: DataKind, item_id: uuid.UUID,
    subjects: Iterable[uuid.UUID | str], size: int, now: datetime, *, api_key_id: str | None,
) -> None:
    """Log a read in the reader's transaction (before the first byte is sent)."""
    session.add(
        DataRead(
            at=now, booking_id=readable.booking_id, kind=kind, item_id=item_id,
            reader_participant_id=readable.reader,
            reader_api_key_id=None if readable.reader is not None else api_key_id,
            subjects=sorted({str(s) for s in subjects}), bytes=size,
        )
    )


async def get_reads(
    session: AsyncSession, org_id: str, *, booking_id: uuid.UUID | None = None,
    before: datetime | None = None, limit: int = 100,
) -> list[DataRead]:
    """The organization's read log (reads of its bookings' data), newest first."""
    ours = select(Booking.id).where(Booking.org_id == org_id)
    query = (
        select(DataRead).where(DataRead.booking_id.in_(ours))
        .order_by(DataRead.at.desc(), DataRead.id.desc()).limit(limit)
    )
    if booking_id is not None:
        query = query.where(DataRead.booking_id == booking_id)
    if before is not None:
        query = query.where(DataRead.at < before)
    return list((await session.execute(query)).scalars())


async def get_reads_about(
    session: AsyncSession, participant_ids: Iterable[uuid.UUID], booking_ids: Iterable[uuid.UUID]
) -> list[DataRead]:
    """Reads by these participants, and reads of their data (for their export)."""
    mine = {str(p) for p in participant_ids}
    query = (
        select(DataRead).where(DataRead.booking_id.in_(list(booking_ids)))
        .order_by(DataRead.at, DataRead.id)
    )
    return [
        row for row in (await session.execute(query)).scalars()
        if str(row.reader_participant_id) in mine or mine.intersection(row.subjects)
    ]
