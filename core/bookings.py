"""Bookings and their participants: the identity every domain refers to.

A booking is a scheduled session between one host and 1..N clients. Each participant has a
pseudonymous id (`Participant.id`, the consent subject and media identity) and a personal
join credential, of which only a hash is stored.
"""

from __future__ import annotations

import enum
import uuid
from datetime import datetime, timedelta

from sqlalchemy import (
    JSON,
    Boolean,
    ForeignKey,
    Integer,
    String,
    Text,
    UniqueConstraint,
    Uuid,
)
from sqlalchemy.orm import Mapped, mapped_column, relationship

from core.database import Base, UTCDateTime, enum_column
from core.purposes import Purpose, RecordingAccess, RecordingPolicy

TOMBSTONE_PREFIX = "erased-"  # the external id an erased person's rows get instead
# The organization a deployment that never made another runs in (core.organizations).
DEFAULT_ORG = "default"


class BookingStatus(enum.StrEnum):
    """The booking's lifecycle (signaling/lifecycle.py moves it on):
    `scheduled -> open -> live -> ended -> closed`, or `cancelled` before `ended`."""

    SCHEDULED = "scheduled"  # booked; the join window has not opened
    OPEN = "open"  # the join window is open, no one has come in yet
    LIVE = "live"  # someone came in
    ENDED = "ended"  # the window closed, or everyone left after the end
    CLOSED = "closed"  # the after-session jobs finished (or none were asked for)
    CANCELLED = "cancelled"

    @classmethod
    def before_end(cls) -> tuple[BookingStatus, ...]:
        """The states a session can still be joined (or cancelled) in."""
        return (cls.SCHEDULED, cls.OPEN, cls.LIVE)

    @property
    def over(self) -> bool:
        """Past the session: no more joins, no more cancelling."""
        return self in (BookingStatus.ENDED, BookingStatus.CLOSED, BookingStatus.CANCELLED)


class Role(enum.StrEnum):
    HOST = "host"
    CLIENT = "client"


class AgeBand(enum.StrEnum):
    """A person's age as the platform states it. Minors and children decide together with
    their guardian (docs/privacy.md, "Minors"); below the deployment's minimum age nobody is
    booked at all."""

    ADULT = "adult"  # 18 and over
    MINOR = "minor"  # 13 to 17
    CHILD = "child"  # under 13

    @classmethod
    def of_age(cls, age: int) -> AgeBand:
        if age >= ADULT_AGE:
            return cls.ADULT
        return cls.MINOR if age >= CHILD_BELOW else cls.CHILD


ADULT_AGE = 18
CHILD_BELOW = 13


class RoomState(enum.StrEnum):
    """Where the booking's media room stands (LiveKit mode; built-in rooms need nothing)."""

    NOT_NEEDED = "not_needed"
    PENDING = "pending"
    CREATED = "created"
    DELETED = "deleted"


def join_window(
    starts_at: datetime, ends_at: datetime, lead: timedelta, grace: timedelta
) -> tuple[datetime, datetime]:
    """When join links work: from `lead` before the start until `grace` after the end (the one
    definition; the join path, signaling admission and the recording peer all use it)."""
    return starts_at - lead, ends_at + grace


class Booking(Base):
    __tablename__ = "bookings"

    id: Mapped[uuid.UUID] = mapped_column(Uuid, primary_key=True, default=uuid.uuid4)
    # The organization the booking (and so its participants and everything they made)
    # belongs to (core.organizations).
    org_id: Mapped[str] = mapped_column(
        ForeignKey("organizations.id"), index=True, server_default=DEFAULT_ORG
    )
    title: Mapped[str] = mapped_column(String(200))
    stated_purpose: Mapped[str | None] = mapped_column(Text, nullable=True)
    language: Mapped[str] = mapped_column(String(35))
    starts_at: Mapped[datetime] = mapped_column(UTCDateTime(), index=True)
    ends_at: Mapped[datetime] = mapped_column(UTCDateTime(), index=True)
    status: Mapped[BookingStatus] = mapped_column(enum_column(BookingStatus), index=True)
    recording_policy: Mapped[RecordingPolicy] = mapped_column(enum_column(RecordingPolicy))
    recording_access: Mapped[RecordingAccess] = mapped_column(
        enum_column(RecordingAccess), default=RecordingAccess.OWN
    )
    requested_purposes: Mapped[list[str]] = mapped_column(JSON)
    record_automatically: Mapped[bool] = mapped_column(Boolean, default=False)
    room_name: Mapped[str] = mapped_column(String(64), unique=True)
    room_state: Mapped[RoomState] = mapped_column(enum_column(RoomState))
    room_attempts: Mapped[int] = mapped_column(Integer, default=0)
    room_error: Mapped[str | None] = mapped_column(Text, nullable=True)
    sequence: Mapped[int] = mapped_column(Integer, default=0)
    created_by: Mapped[str] = mapped_column(String(24))
    idempotency_key: Mapped[str | None] = mapped_column(String(200), nullable=True)
    request_hash: Mapped[str | None] = mapped_column(String(64), nullable=True)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime())
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime())
    cancelled_at: Mapped[datetime | None] = mapped_column(UTCDateTime(), nullable=True)
    # When each lifecycle transition happened (null: not yet).
    opened_at: Mapped[datetime | None] = mapped_column(UTCDateTime(), nullable=True)
    live_at: Mapped[datetime | None] = mapped_column(UTCDateTime(), nullable=True)
    ended_at: Mapped[datetime | None] = mapped_column(UTCDateTime(), nullable=True)
    closed_at: Mapped[datetime | None] = mapped_column(UTCDateTime(), nullable=True)

    participants: Mapped[list[Participant]] = relationship(
        back_populates="booking", order_by="Participant.position", lazy="selectin"
    )

    __table_args__ = (UniqueConstraint("created_by", "idempotency_key"),)

    @property
    def purposes(self) -> frozenset[Purpose]:
        return frozenset(Purpose(p) for p in self.requested_purposes)

    def join_window(self, lead: timedelta, grace: timedelta) -> tuple[datetime, datetime]:
        """When join links work (see `join_window`)."""
        return join_window(self.starts_at, self.ends_at, lead, grace)

    @property
    def host(self) -> Participant:
        return next(p for p in self.participants if p.role is Role.HOST)

    @property
    def purpose_author(self) -> Participant | None:
        """The client whose words `stated_purpose` are (`stated_by` at booking): the one rule
        both the agenda trigger and the agenda payload gate ask."""
        return next((p for p in self.participants if p.purpose_author), None)

    @property
    def agenda_people(self) -> list[Participant]:
        """Whose `ai.agenda` grants an agenda needs: the host (the title is theirs) and the
        purpose author, if any."""
        author = self.purpose_author
        return [self.host] if author is None else [self.host, author]


class Participant(Base):
    __tablename__ = "participants"

    id: Mapped[uuid.UUID] = mapped_column(Uuid, primary_key=True, default=uuid.uuid4)
    booking_id: Mapped[uuid.UUID] = mapped_column(
        ForeignKey("bookings.id", ondelete="CASCADE"), index=True
    )
    position: Mapped[int] = mapped_column(Integer)
    external_id: Mapped[str] = mapped_column(String(200), index=True)
    display_name: Mapped[str] = mapped_column(String(200))
    role: Mapped[Role] = mapped_column(enum_column(Role))
    age_band: Mapped[AgeBand] = mapped_column(enum_column(AgeBand), default=AgeBand.ADULT)
    age: Mapped[int | None] = mapped_column(Integer, nullable=True)  # in years, if stated
    credential_hash: Mapped[str] = mapped_column(String(64), unique=True)
    credential_generation: Mapped[int] = mapped_column(Integer, default=0)
    revoked_at: Mapped[datetime | None] = mapped_column(UTCDateTime(), nullable=True)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime())
    # The client whose words the booking's `stated_purpose` are (their data, their consent).
    purpose_author: Mapped[bool] = mapped_column(Boolean, default=False)

    booking: Mapped[Booking] = relationship(back_populates="participants", lazy="joined")

    @property
    def erased(self) -> bool:
        return self.external_id.startswith(TOMBSTONE_PREFIX)

    __table_args__ = (UniqueConstraint("booking_id", "external_id"),)

    @property
    def adult(self) -> bool:
        """Adults decide alone; everyone else with their guardian."""
        return self.age_band is AgeBand.ADULT

    @adult.setter
    def adult(self, value: bool) -> None:  # the flag's meaning before age bands
        self.age_band = AgeBand.ADULT if value else AgeBand.MINOR
