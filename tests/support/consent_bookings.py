"""Bookings with participants for the consent tests, written straight to the database (the
scheduler API is another area's), and the join credentials that open them."""

from __future__ import annotations

import secrets
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta

from consent.purposes import Purpose, RecordingPolicy
from core.bookings import Booking, BookingStatus, Participant, Role, RoomState
from core.purposes import RecordingAccess
from core.runtime import Runtime
from signaling.credentials import credential_hash, join_credential


@dataclass(frozen=True)
class Person:
    id: uuid.UUID
    external_id: str
    display_name: str
    credential: str

    @property
    def headers(self) -> dict[str, str]:
        return {"X-Join-Credential": self.credential}


@dataclass(frozen=True)
class Seeded:
    booking_id: uuid.UUID
    people: list[Person]


async def seed_booking(
    runtime: Runtime,
    purposes: Sequence[Purpose] = (Purpose.RECORDING_AUDIO, Purpose.AI_SUMMARY),
    *,
    names: Sequence[str] = ("Hana Host", "Cleo Client"),
    policy: RecordingPolicy = RecordingPolicy.PER_PARTICIPANT,
    starts_at: datetime | None = None,
    language: str = "en",
    status: BookingStatus = BookingStatus.SCHEDULED,
    access: RecordingAccess = RecordingAccess.OWN,
) -> Seeded:
    now = runtime.clock.now()
    start = starts_at or now + timedelta(minutes=5)
    booking = Booking(
        id=uuid.uuid4(),
        title="Consent test session",
        language=language,
        starts_at=start,
        ends_at=start + timedelta(hours=1),
        status=status,
        recording_policy=policy,
        recording_access=access,
        requested_purposes=[p.value for p in purposes],
        record_automatically=False,
        room_name=secrets.token_hex(16),
        room_state=RoomState.NOT_NEEDED,
        room_attempts=0,
        sequence=0,
        created_by="test",
        created_at=now,
        updated_at=now,
    )
    people = []
    rows = []
    for position, name in enumerate(names):
        pid = uuid.uuid4()
        credential = join_credential(runtime.keys, pid, 0)
        external = f"user-{secrets.token_hex(4)}"
        rows.append(
            Participant(
                id=pid,
                booking_id=booking.id,
                position=position,
                external_id=external,
                display_name=name,
                role=Role.HOST if position == 0 else Role.CLIENT,
                adult=True,
                credential_hash=credential_hash(credential),
                credential_generation=0,
                created_at=now,
            )
        )
        people.append(Person(pid, external, name, credential))
    async with runtime.db.session() as session:
        session.add(booking)
        await session.flush()
        session.add_all(rows)
    return Seeded(booking.id, people)
