"""Recording rows: one file per person, per track kind, per consent span; and who fetched them.

A row is written when a span opens (state `recording`), completed when it closes, and
`recovered` when a crash left it open and the next start salvaged the file. Rows name the
ledger entries that allowed the span, the plaintext's size and SHA-256, and the retention
deadline after which the purge may delete the file.
"""

from __future__ import annotations

import enum
import uuid
from datetime import datetime, timedelta

from sqlalchemy import JSON, BigInteger, Boolean, ForeignKey, Integer, String, Uuid, select
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.ext.asyncio import AsyncSession
from sqlalchemy.orm import Mapped, mapped_column

from consent.access import Readable
from core.accounts import Viewer, access_booking_data
from core.bookings import Booking, BookingStatus, Role
from core.database import Base, UTCDateTime, enum_column
from core.errors import Gone, NotFound, PermissionDenied
from core.organizations import booking_settings
from core.outbox import RecordingReady, RecordingStarted, RecordingStopped, do_write
from core.purposes import Purpose
from core.settings import Settings


class TrackKind(enum.StrEnum):
    AUDIO = "audio"
    VIDEO = "video"

    @property
    def purpose(self) -> Purpose:
        return Purpose.RECORDING_AUDIO if self is TrackKind.AUDIO else Purpose.RECORDING_VIDEO

    @property
    def media_type(self) -> str:
        return "audio/ogg" if self is TrackKind.AUDIO else "video/webm"

    @property
    def extension(self) -> str:
        return "ogg" if self is TrackKind.AUDIO else "webm"


class RecordingState(enum.StrEnum):
    RECORDING = "recording"
    COMPLETE = "complete"
    RECOVERED = "recovered"


class Recording(Base):
    __tablename__ = "recordings"

    id: Mapped[uuid.UUID] = mapped_column(Uuid, primary_key=True, default=uuid.uuid4)
    booking_id: Mapped[uuid.UUID] = mapped_column(
        ForeignKey("bookings.id", ondelete="CASCADE"), index=True
    )
    participant_id: Mapped[uuid.UUID] = mapped_column(
        ForeignKey("participants.id", ondelete="CASCADE"), index=True
    )
    kind: Mapped[TrackKind] = mapped_column(enum_column(TrackKind))
    state: Mapped[RecordingState] = mapped_column(enum_column(RecordingState), index=True)
    media_type: Mapped[str] = mapped_column(String(40))
    started_at: Mapped[datetime] = mapped_column(UTCDateTime())
    ended_at: Mapped[datetime | None] = mapped_column(UTCDateTime(), nullable=True)
    consent_entry_ids: Mapped[list[str]] = mapped_column(JSON)
    frames: Mapped[int] = mapped_column(Integer, default=0)
    size: Mapped[int] = mapped_column(BigInteger, default=0)
    sha256: Mapped[str | None] = mapped_column(String(64), nullable=True)
    retain_until: Mapped[datetime] = mapped_column(UTCDateTime(), index=True)
    path: Mapped[str] = mapped_column(String(300))


class RecordingControl(Base):
    """Whether a booking is being recorded, as its host (or an admin) last set it.

    No row means nobody has started or stopped it yet: the booking's `record_automatically`
    decides. Kept in the database so every node and every restart agrees; nodes cache it and
    hear of changes on the bus (`recording.changed`)."""

    __tablename__ = "recording_controls"

    booking_id: Mapped[uuid.UUID] = mapped_column(
        ForeignKey("bookings.id", ondelete="CASCADE"), primary_key=True
    )
    recording: Mapped[bool] = mapped_column(Boolean)
    changed_at: Mapped[datetime] = mapped_column(UTCDateTime())
    changed_by: Mapped[str] = mapped_column(String(80))


async def retention_of(
    session: AsyncSession, settings: Settings, booking_id: uuid.UUID
) -> timedelta:
    """How long a recording of the booking is kept after it ends: its organization's
    period (`retain_until` is set from it; the purge also cuts by age)."""
    return timedelta(days=(await booking_settings(session, settings, booking_id))
                     .recording_retention_days)


async def open_tracks(
    session: AsyncSession, booking_id: uuid.UUID
) -> dict[uuid.UUID, set[TrackKind]]:
    """Whose tracks have an open file in this booking right now (rows not ended yet): what is
    being recorded, as every node sees it."""
    query = select(Recording.participant_id, Recording.kind).where(
        Recording.booking_id == booking_id, Recording.ended_at.is_(None)
    )
    out: dict[uuid.UUID, set[TrackKind]] = {}
    for participant_id, kind in (await session.execute(query)).all():
        out.setdefault(participant_id, set()).add(TrackKind(kind))
    return out


async def read_recording_on(session: AsyncSession, booking_id: uuid.UUID) -> bool:
    """Is the booking being recorded: the last start/stop, else its `record_automatically`."""
    control = await session.get(RecordingControl, booking_id)
    if control is not None:
        return control.recording
    automatic = await session.scalar(
        select(Booking.record_automatically).where(Booking.id == booking_id)
    )
    return bool(automatic)


async def do_set_recording_on(
    session: AsyncSession, booking_id: uuid.UUID, on: bool, by: str, now: datetime
) -> None:
    """Record a start or stop; concurrent ones end as the last writer's (one upsert)."""
    values = {"booking_id": booking_id, "recording": on, "changed_at": now, "changed_by": by}
    changed = {"recording": on, "changed_at": now, "changed_by": by}
    keys = ["booking_id"]
    if session.get_bind().dialect.name == "postgresql":
        pg = postgresql.insert(RecordingControl).values(values)
        await session.execute(pg.on_conflict_do_update(index_elements=keys, set_=changed))
    else:
        lite = sqlite.insert(RecordingControl).values(values)
        await session.execute(lite.on_conflict_do_update(index_elements=keys, set_=changed))
    switched = RecordingStarted if on else RecordingStopped
    do_write(session, switched(booking_id, by, now), now)


def do_mark_ready(
    session: AsyncSession, booking_id: uuid.UUID, recording_id: uuid.UUID,
    participant_id: uuid.UUID, kind: str, now: datetime,
) -> None:
    """A recording is complete and stored: `recording.ready` goes out with its commit."""
    do_write(session, RecordingReady(booking_id, recording_id, participant_id, kind), now)


class RecordingDownload(Base):
    __tablename__ = "recording_downloads"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    recording_id: Mapped[uuid.UUID] = mapped_column(
        ForeignKey("recordings.id", ondelete="CASCADE"), index=True
    )
    at: Mapped[datetime] = mapped_column(UTCDateTime())
    participant_id: Mapped[uuid.UUID | None] = mapped_column(Uuid, nullable=True)
    api_key_id: Mapped[str | None] = mapped_column(String(24), nullable=True)
    byte_range: Mapped[str | None] = mapped_column(String(100), nullable=True)




async def access_recording_control(
    session: AsyncSession, viewer: Viewer, booking_id: uuid.UUID, grace: timedelta, now: datetime
) -> Booking:
    """Starting and stopping a booking's recording: its host, or an admin, while the booking
    exists (404), is not cancelled (410) and has not ended (403), as at every other
    participant endpoint."""
    await access_booking_data(session, viewer, booking_id)
    if viewer.participant is not None and viewer.participant.role is not Role.HOST:
        raise PermissionDenied("only the host starts and stops the recording")
    booking = await session.get(Booking, booking_id)
    if booking is None:
        raise NotFound("no such booking")
    if booking.status is BookingStatus.CANCELLED:
        raise Gone("the booking is cancelled")
    if now >= booking.ends_at + grace:
        raise PermissionDenied("the session has ended")
    return booking


async def list_recordings(session: AsyncSession, readable: Readable) -> list[Recording]:
    """The booking's recordings this reader may see (consent.access decides; a booking that
    does not exist is NotFound there)."""
    query = (
        select(Recording)
        .where(Recording.booking_id == readable.booking_id)
        .order_by(Recording.started_at, Recording.id)
    )
    return [row for row in (await session.execute(query)).scalars()
            if readable.covers(row.participant_id)]


async def access_recording(
    session: AsyncSession, readable: Readable, recording_id: uuid.UUID
) -> Recording:
    """One recording this reader may see; another person's they may not is not found."""
    row = await session.get(Recording, recording_id)
    if row is None or row.booking_id != readable.booking_id:
        raise NotFound("no such recording")
    if not readable.covers(row.participant_id):
        raise NotFound("no such recording")
    return row


async def do_log_download(
    session: AsyncSession, viewer: Viewer, row: Recording, byte_range: str | None, now: datetime
) -> None:
    session.add(
        RecordingDownload(
            recording_id=row.id,
            at=now,
            participant_id=viewer.participant.id if viewer.participant else None,
            api_key_id=viewer.caller.key_id if viewer.caller else None,
            byte_range=byte_range,
        )
    )
