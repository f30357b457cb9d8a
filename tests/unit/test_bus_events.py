"""Typed bus events survive the Redis wire: what one node publishes, another receives as the
same typed event (and the two shapes of `recording.changed` stay apart)."""

from __future__ import annotations

import json
import uuid
from datetime import UTC, datetime

import pytest
from pydantic import ValidationError

from core.bus import decode, encode
from core.events import (
    BookingCancelled,
    BookingClosed,
    BookingCreated,
    BookingEnded,
    BookingOpened,
    BookingStarted,
    BookingUpdated,
    BusEvent,
    ConsentChanged,
    JobProgress,
    LinkRevoked,
    NoticeChanged,
    ParticipantJoined,
    ParticipantLeft,
    ParticipantUpdated,
    RecordingSwitched,
    RoomFrame,
    SubjectErased,
    SubjectRestricted,
    Topic,
    TrackRecording,
)
from core.purposes import Actor, Decision, Purpose

BOOKING, PERSON = uuid.uuid4(), uuid.uuid4()
AT = datetime(2030, 5, 4, 7, 0, tzinfo=UTC)
TERMS = {"booking_id": BOOKING, "status": "scheduled", "starts_at": AT, "ends_at": AT,
         "sequence": 2}

EVENTS: list[BusEvent] = [
    BookingCreated(**TERMS),
    BookingUpdated(**TERMS),
    BookingCancelled(**{**TERMS, "status": "cancelled"}),
    BookingOpened(**{**TERMS, "status": "open"}),
    BookingStarted(**{**TERMS, "status": "live"}),
    BookingEnded(**{**TERMS, "status": "ended"}),
    BookingClosed(**{**TERMS, "status": "closed"}),
    ParticipantJoined(booking_id=BOOKING, participant_id=PERSON),
    ParticipantLeft(booking_id=BOOKING, participant_id=PERSON),
    ConsentChanged(
        booking_id=BOOKING, subject_id=PERSON, purpose=Purpose.RECORDING_AUDIO,
        decision=Decision.WITHDRAWN, entry_id=uuid.uuid4(), seq=7, at=AT, actor=Actor.GUARDIAN,
    ),
    RecordingSwitched(booking_id=BOOKING, control="stopped"),
    TrackRecording(booking_id=BOOKING, subject_id=PERSON, kind="video", state="paused"),
    JobProgress(booking_id=BOOKING, status="running", job={"id": "j1", "progress": 40}),
    SubjectErased(booking_id=BOOKING, subject_id=PERSON, tombstone="erased-1"),
    SubjectRestricted(booking_id=BOOKING, subject_id=PERSON, restricted=True),
    NoticeChanged(
        purpose=Purpose.RECORDING_AUDIO, language="en", notice_id=uuid.uuid4(), version=2,
        booking_ids=[BOOKING],
    ),
    LinkRevoked(booking_id=BOOKING, participant_id=PERSON),
    ParticipantUpdated(
        booking_id=BOOKING, participant_id=PERSON, display_name="Ada", age_band="minor"
    ),
]


@pytest.mark.parametrize("event", EVENTS, ids=lambda e: type(e).__name__)
def test_every_event_arrives_as_the_same_typed_event(event: BusEvent) -> None:
    wire = encode(event)
    assert json.loads(wire)["topic"] == event.topic
    received = decode(wire)
    assert type(received) is type(event)
    assert received == event


def test_every_topic_has_an_event_type() -> None:
    typed = {event.topic for event in EVENTS} | {Topic.ROOM.value}
    assert typed == {topic.value for topic in Topic}


def test_room_frames_keep_their_node_channel_and_shape() -> None:
    frame = {"kind": "signal", "room": "cg-1", "to": "p2", "text": "{}", "node": "n1"}
    received = decode(encode(RoomFrame(channel="room.n2", frame=frame)))
    assert isinstance(received, RoomFrame)
    assert (received.topic, received.frame) == ("room.n2", frame)


def test_a_malformed_event_is_refused_not_half_read() -> None:
    wire = json.dumps({"topic": "consent.changed", "data": {"booking_id": str(BOOKING)}})
    with pytest.raises(ValidationError):
        decode(wire)
    with pytest.raises(KeyError):
        decode(json.dumps({"topic": "no.such.topic", "data": {}}))
