"""The outbox: events told to the outside world, written in the transaction of the change.

A domain that changes something a scheduler cares about calls `do_write(session, event, at)`
inside the same transaction; the event exists exactly when the change does (no event for a
rolled-back change, none lost to a crash after the commit). The webhook sender
(core/webhooksender.py) reads the outbox afterwards and delivers it; nothing here talks HTTP.

Each event type is a small frozen dataclass, one per type. Payloads carry ids only (booking,
participant, recording, job ids and the scheduler's own external ids): never names, notice
text, transcripts or media. The envelope follows the Standard Webhooks payload structure:
`{"type", "timestamp", "data"}`.
"""

from __future__ import annotations

import enum
import secrets
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any, ClassVar

from sqlalchemy import JSON, Boolean, Integer, String, Uuid, event, select
from sqlalchemy.ext.asyncio import AsyncSession
from sqlalchemy.orm import Mapped, Session, mapped_column

from core.database import Base, Database, UTCDateTime


class EventType(enum.StrEnum):
    BOOKING_CREATED = "booking.created"
    BOOKING_RESCHEDULED = "booking.rescheduled"
    BOOKING_CANCELLED = "booking.cancelled"
    BOOKING_OPENED = "booking.opened"
    BOOKING_STARTED = "booking.started"
    BOOKING_ENDED = "booking.ended"
    BOOKING_CLOSED = "booking.closed"
    PARTICIPANT_JOINED = "participant.joined"
    PARTICIPANT_LEFT = "participant.left"
    PARTICIPANT_NO_SHOW = "participant.no_show"
    CONSENT_CHANGED = "consent.changed"
    RECORDING_STARTED = "recording.started"
    RECORDING_STOPPED = "recording.stopped"
    RECORDING_READY = "recording.ready"
    TRANSCRIPT_READY = "transcript.ready"
    SUMMARY_READY = "summary.ready"
    AGENDA_READY = "agenda.ready"
    LINK_REVOKED = "link.revoked"
    SUBJECT_ERASED = "subject.erased"


class OutboxEvent(Base):
    __tablename__ = "outbox_events"

    seq: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    id: Mapped[str] = mapped_column(String(40), unique=True)  # the `webhook-id`
    type: Mapped[str] = mapped_column(String(40))
    booking_id: Mapped[uuid.UUID | None] = mapped_column(Uuid, nullable=True)
    # Whose endpoints receive it: set for an event without a booking; else the booking's.
    org_id: Mapped[str | None] = mapped_column(String(32), nullable=True)
    payload: Mapped[dict[str, Any]] = mapped_column(JSON)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime(), index=True)
    dispatched: Mapped[bool] = mapped_column(Boolean, default=False, index=True)


def _iso(value: datetime | None) -> str | None:
    return value.isoformat() if value is not None else None


@dataclass(frozen=True)
class _BookingEvent:
    """What every booking.* event carries: where the booking stands now."""

    type: ClassVar[EventType]
    booking_id: uuid.UUID
    status: str
    starts_at: datetime
    ends_at: datetime
    sequence: int

    def data(self) -> dict[str, Any]:
        return {
            "booking_id": str(self.booking_id),
            "status": self.status,
            "starts_at": _iso(self.starts_at),
            "ends_at": _iso(self.ends_at),
            "sequence": self.sequence,
        }


@dataclass(frozen=True)
class BookingCreated(_BookingEvent):
    type: ClassVar[EventType] = EventType.BOOKING_CREATED
    participants: tuple[tuple[uuid.UUID, str, str], ...] = ()  # (id, external id, role)

    def data(self) -> dict[str, Any]:
        return super().data() | {
            "participants": [
                {"participant_id": str(pid), "external_id": ext, "role": role}
                for pid, ext, role in self.participants
            ]
        }


@dataclass(frozen=True)
class BookingRescheduled(_BookingEvent):
    type: ClassVar[EventType] = EventType.BOOKING_RESCHEDULED


@dataclass(frozen=True)
class BookingCancelled(_BookingEvent):
    type: ClassVar[EventType] = EventType.BOOKING_CANCELLED


@dataclass(frozen=True)
class BookingOpened(_BookingEvent):
    type: ClassVar[EventType] = EventType.BOOKING_OPENED


@dataclass(frozen=True)
class BookingStarted(_BookingEvent):
    type: ClassVar[EventType] = EventType.BOOKING_STARTED


@dataclass(frozen=True)
class BookingEnded(_BookingEvent):
    type: ClassVar[EventType] = EventType.BOOKING_ENDED


@dataclass(frozen=True)
class BookingClosed(_BookingEvent):
    type: ClassVar[EventType] = EventType.BOOKING_CLOSED


@dataclass(frozen=True)
class _ParticipantEvent:
    type: ClassVar[EventType]
    booking_id: uuid.UUID
    participant_id: uuid.UUID
    external_id: str
    role: str
    at: datetime

    def data(self) -> dict[str, Any]:
        return {
            "booking_id": str(self.booking_id),
            "participant_id": str(self.participant_id),
            "external_id": self.external_id,
            "role": self.role,
            "at": _iso(self.at),
        }


@dataclass(frozen=True)
class ParticipantJoined(_ParticipantEvent):
    type: ClassVar[EventType] = EventType.PARTICIPANT_JOINED


@dataclass(frozen=True)
class ParticipantLeft(_ParticipantEvent):
    type: ClassVar[EventType] = EventType.PARTICIPANT_LEFT
    how: str = "left"  # left (deliberately), dropped, window_closed, removed

    def data(self) -> dict[str, Any]:
        return super().data() | {"how": self.how}


@dataclass(frozen=True)
class ParticipantNoShow(_ParticipantEvent):
    type: ClassVar[EventType] = EventType.PARTICIPANT_NO_SHOW


@dataclass(frozen=True)
class LinkRevoked(_ParticipantEvent):
    type: ClassVar[EventType] = EventType.LINK_REVOKED


@dataclass(frozen=True)
class ConsentChanged:
    type: ClassVar[EventType] = EventType.CONSENT_CHANGED
    booking_id: uuid.UUID
    participant_id: uuid.UUID
    purpose: str
    decision: str
    entry_id: uuid.UUID
    at: datetime

    def data(self) -> dict[str, Any]:
        return {
            "booking_id": str(self.booking_id),
            "participant_id": str(self.participant_id),
            "purpose": self.purpose,
            "decision": self.decision,
            "entry_id": str(self.entry_id),
            "at": _iso(self.at),
        }


@dataclass(frozen=True)
class _OutputReady:
    """An after-session output (transcript, summary, agenda) is stored."""

    type: ClassVar[EventType]
    booking_id: uuid.UUID
    job_id: uuid.UUID
    output_id: uuid.UUID

    def data(self) -> dict[str, Any]:
        return {
            "booking_id": str(self.booking_id),
            "job_id": str(self.job_id),
            "output_id": str(self.output_id),
        }


@dataclass(frozen=True)
class TranscriptReady(_OutputReady):
    type: ClassVar[EventType] = EventType.TRANSCRIPT_READY


@dataclass(frozen=True)
class SummaryReady(_OutputReady):
    type: ClassVar[EventType] = EventType.SUMMARY_READY


@dataclass(frozen=True)
class AgendaReady(_OutputReady):
    type: ClassVar[EventType] = EventType.AGENDA_READY


@dataclass(frozen=True)
class RecordingSwitched:
    """The host (or an admin) switched recording of the whole booking on or off."""

    type: ClassVar[EventType]
    booking_id: uuid.UUID
    by: str
    at: datetime

    def data(self) -> dict[str, Any]:
        return {"booking_id": str(self.booking_id), "by": self.by, "at": _iso(self.at)}


@dataclass(frozen=True)
class RecordingStarted(RecordingSwitched):
    type: ClassVar[EventType] = EventType.RECORDING_STARTED


@dataclass(frozen=True)
class RecordingStopped(RecordingSwitched):
    type: ClassVar[EventType] = EventType.RECORDING_STOPPED


@dataclass(frozen=True)
class RecordingReady:
    type: ClassVar[EventType] = EventType.RECORDING_READY
    booking_id: uuid.UUID
    recording_id: uuid.UUID
    participant_id: uuid.UUID
    kind: str

    def data(self) -> dict[str, Any]:
        return {
            "booking_id": str(self.booking_id),
            "recording_id": str(self.recording_id),
            "participant_id": str(self.participant_id),
            "kind": self.kind,
        }


@dataclass(frozen=True)
class SubjectErased:
    """A person was erased: their participant ids (the external id is erased too)."""

    type: ClassVar[EventType] = EventType.SUBJECT_ERASED
    participant_ids: tuple[uuid.UUID, ...]
    at: datetime

    def data(self) -> dict[str, Any]:
        return {"participant_ids": [str(p) for p in self.participant_ids], "at": _iso(self.at)}


OutgoingEvent = (
    _BookingEvent | _ParticipantEvent | ConsentChanged | _OutputReady | RecordingSwitched
    | RecordingReady | SubjectErased
)


def new_event_id() -> str:
    """A Standard Webhooks message id: unique per event, kept across retries and replays."""
    return f"msg_{secrets.token_urlsafe(18)}"


def booking_of(event: OutgoingEvent) -> uuid.UUID | None:
    return getattr(event, "booking_id", None)


def do_write(
    session: AsyncSession, event: OutgoingEvent, at: datetime, *, org_id: str | None = None
) -> OutboxEvent:
    """Add `event` to the outbox in the caller's transaction (it commits with the change).
    Only `org_id`'s endpoints receive it (default: the organization of its booking)."""
    row = OutboxEvent(
        id=new_event_id(),
        type=event.type.value,
        booking_id=booking_of(event),
        org_id=org_id,
        payload={"type": event.type.value, "timestamp": at.isoformat(), "data": event.data()},
        created_at=at,
        dispatched=False,
    )
    session.add(row)
    session.info[_WRITTEN] = True
    return row


_WRITTEN = "callgate.outbox_written"


def on_outbox_commit(db: Database, callback: Callable[[], None]) -> Callable[[], None]:
    """Call `callback` right after each commit, on `db`, of a transaction that wrote to the
    outbox (so this node's sender sends at once instead of at its next poll; what another node
    commits, that node's sender picks up). Returns the function that stops it."""
    engine = db.engine.sync_engine

    def committed(session: Session) -> None:
        if session.bind is engine and session.info.pop(_WRITTEN, False):
            callback()

    def rolled_back(session: Session) -> None:
        session.info.pop(_WRITTEN, None)

    event.listen(Session, "after_commit", committed)
    event.listen(Session, "after_rollback", rolled_back)

    def stop() -> None:
        event.remove(Session, "after_commit", committed)
        event.remove(Session, "after_rollback", rolled_back)

    return stop


def _scrubbed(value: Any, external_id: str, tombstone: str) -> Any:
    if isinstance(value, dict):
        return {
            k: tombstone if k == "external_id" and v == external_id
            else _scrubbed(v, external_id, tombstone)
            for k, v in value.items()
        }
    if isinstance(value, list):
        return [_scrubbed(v, external_id, tombstone) for v in value]
    return value


async def do_scrub(
    session: AsyncSession, booking_ids: Sequence[uuid.UUID], external_id: str, tombstone: str
) -> int:
    """Erasure: the person's external id leaves every stored event of their bookings (sent
    or not; a replay then carries the tombstone). The number of events changed."""
    query = select(OutboxEvent).where(OutboxEvent.booking_id.in_(list(booking_ids)))
    changed = 0
    for row in (await session.scalars(query)).all():
        payload = _scrubbed(row.payload, external_id, tombstone)
        if payload != row.payload:
            row.payload = payload
            changed += 1
    return changed
