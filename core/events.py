"""The bus topics and the typed event each carries: what publishers construct and subscribers
receive (`core.bus` moves them; no subscriber parses a dict).

On Redis an event travels as compact JSON, `{"topic": ..., "data": {...}}`, where `data` is
the model's fields (`to_wire`); `from_wire` turns it back into the model by topic. A topic
may carry more than one shape (`recording.changed`: the booking-wide switch or one track's
state); `from_wire` tells them apart by their fields.
"""

from __future__ import annotations

import enum
import uuid
from datetime import datetime
from typing import Any, ClassVar, Literal

from pydantic import BaseModel, ConfigDict, Field

from core.purposes import Actor, Decision, Purpose


class Topic(enum.StrEnum):
    BOOKING_CREATED = "booking.created"
    BOOKING_UPDATED = "booking.updated"
    BOOKING_CANCELLED = "booking.cancelled"
    BOOKING_OPENED = "booking.opened"
    BOOKING_STARTED = "booking.started"
    BOOKING_ENDED = "booking.ended"
    BOOKING_CLOSED = "booking.closed"
    PARTICIPANT_JOINED = "participant.joined"
    PARTICIPANT_LEFT = "participant.left"
    CONSENT_CHANGED = "consent.changed"
    NOTICE_CHANGED = "consent.notice_changed"  # a material notice version: ask again
    RECORDING_CHANGED = "recording.changed"
    ROOM = "room"  # signaling fan-out between nodes (and `room.<node>` for one node)
    JOB_PROGRESS = "job.progress"
    SUBJECT_ERASED = "subject.erased"
    SUBJECT_RESTRICTED = "subject.restricted"
    LINK_REVOKED = "link.revoked"
    PARTICIPANT_UPDATED = "participant.updated"


class BusEvent(BaseModel):
    """An event on the bus. Subclasses name their topic in `TOPIC`."""

    model_config = ConfigDict(frozen=True, extra="ignore")

    TOPIC: ClassVar[Topic]

    @property
    def topic(self) -> str:
        return self.TOPIC.value

    def to_wire(self) -> dict[str, Any]:
        return self.model_dump(mode="json")


class BookingChanged(BusEvent):
    """A booking's terms as they are after the change (created, rescheduled, cancelled)."""

    booking_id: uuid.UUID
    status: str
    starts_at: datetime
    ends_at: datetime
    sequence: int


class BookingCreated(BookingChanged):
    TOPIC = Topic.BOOKING_CREATED


class BookingUpdated(BookingChanged):
    TOPIC = Topic.BOOKING_UPDATED


class BookingCancelled(BookingChanged):
    TOPIC = Topic.BOOKING_CANCELLED


class BookingOpened(BookingChanged):
    """The join window opened (signaling/lifecycle.py)."""

    TOPIC = Topic.BOOKING_OPENED


class BookingStarted(BookingChanged):
    """The first person came in: the booking is `live`."""

    TOPIC = Topic.BOOKING_STARTED


class BookingEnded(BookingChanged):
    """The session ended (its window closed, or everyone left after the end): the
    after-session jobs start."""

    TOPIC = Topic.BOOKING_ENDED


class BookingClosed(BookingChanged):
    """The after-session jobs finished (or none were asked for)."""

    TOPIC = Topic.BOOKING_CLOSED


class ParticipantJoined(BusEvent):
    """Someone entered the room (`all_or_nothing` recording counts who is present)."""

    TOPIC = Topic.PARTICIPANT_JOINED

    booking_id: uuid.UUID
    participant_id: uuid.UUID


class ParticipantLeft(BusEvent):
    TOPIC = Topic.PARTICIPANT_LEFT

    booking_id: uuid.UUID
    participant_id: uuid.UUID


class ConsentChanged(BusEvent):
    """One ledger entry, as appended: the person, the purpose and what they decided."""

    TOPIC = Topic.CONSENT_CHANGED

    booking_id: uuid.UUID
    subject_id: uuid.UUID
    purpose: Purpose
    decision: Decision
    entry_id: uuid.UUID
    seq: int
    at: datetime
    actor: Actor = Actor.SUBJECT  # a minor's guardian decides on the same subject
    notice_id: uuid.UUID | None = None  # the notice shown (a material change replaces it)


class NoticeChanged(BusEvent):
    """A notice version marked as a material change: grants under earlier versions of the
    purpose stop counting from `effective_at`; the bookings not over that request it."""

    TOPIC = Topic.NOTICE_CHANGED

    purpose: Purpose
    language: str
    notice_id: uuid.UUID
    version: int
    booking_ids: list[uuid.UUID]


class RecordingSwitched(BusEvent):
    """The booking-wide recording switch (the host's start/stop)."""

    TOPIC = Topic.RECORDING_CHANGED

    booking_id: uuid.UUID
    control: Literal["started", "stopped"]


class TrackRecording(BusEvent):
    """One person's track: recording, paused (consent or gate says no) or idle."""

    TOPIC = Topic.RECORDING_CHANGED

    booking_id: uuid.UUID
    subject_id: uuid.UUID
    kind: Literal["audio", "video"]
    state: str
    recording_id: uuid.UUID | None = None


class RoomFrame(BusEvent):
    """Signaling fan-out between nodes: `signaling.fanout` owns the frame's shape (joins,
    leaves, relayed signals, batches of them) and `signaling.hub` reads it."""

    TOPIC = Topic.ROOM

    channel: str = Field(default=Topic.ROOM.value, exclude=True)  # `room` or `room.<node>`
    frame: dict[str, Any]

    @property
    def topic(self) -> str:
        return self.channel

    def to_wire(self) -> dict[str, Any]:
        return self.frame


class JobProgress(BusEvent):
    """An AI job changed (created, running, progress, finished); `job` is its public view,
    exactly as `GET /v1/bookings/{id}/jobs` lists it, for the page's event stream."""

    TOPIC = Topic.JOB_PROGRESS

    booking_id: uuid.UUID
    status: str
    job: dict[str, Any]


class SubjectErased(BusEvent):
    TOPIC = Topic.SUBJECT_ERASED

    booking_id: uuid.UUID
    subject_id: uuid.UUID
    tombstone: str


class SubjectRestricted(BusEvent):
    TOPIC = Topic.SUBJECT_RESTRICTED

    booking_id: uuid.UUID
    subject_id: uuid.UUID
    restricted: bool


class LinkRevoked(BusEvent):
    """A join link was revoked: what it handed out ends at once on every node (tickets by
    their credential generation, the call socket, the recording connection, event streams)."""

    TOPIC = Topic.LINK_REVOKED

    booking_id: uuid.UUID
    participant_id: uuid.UUID


class ParticipantUpdated(BusEvent):
    """A person's display name or age band was corrected (rectification)."""

    TOPIC = Topic.PARTICIPANT_UPDATED

    booking_id: uuid.UUID
    participant_id: uuid.UUID
    display_name: str
    age_band: str


_BY_TOPIC: dict[str, type[BusEvent]] = {
    cls.TOPIC.value: cls
    for cls in (
        BookingCreated, BookingUpdated, BookingCancelled, BookingOpened, BookingStarted,
        BookingEnded, BookingClosed, ParticipantJoined,
        ParticipantLeft, ConsentChanged, NoticeChanged, JobProgress, SubjectErased,
        SubjectRestricted, LinkRevoked, ParticipantUpdated,
    )
}


def from_wire(topic: str, data: dict[str, Any]) -> BusEvent:
    """The typed event of `topic` (raises pydantic's ValidationError, or KeyError for a topic
    nobody declared)."""
    if topic == Topic.RECORDING_CHANGED.value:
        shape: type[BusEvent] = RecordingSwitched if "control" in data else TrackRecording
        return shape.model_validate(data)
    if topic == Topic.ROOM.value or topic.startswith(f"{Topic.ROOM.value}."):
        return RoomFrame.model_construct(channel=topic, frame=data)  # hot path: as sent
    return _BY_TOPIC[topic].model_validate(data)
