"""Bookings as the scheduler sees them: validate, create, read, list, reschedule, cancel.

A booking is written whole or not at all: every rule is checked before anything is stored,
and a bad request names each field that was wrong. Events (`booking.*`) are published only
after the commit. Creation honors an Idempotency-Key per API key: the same key with the same
body returns the same booking; the same key with another body is a conflict.
"""

from __future__ import annotations

import hmac
import json
import re
import secrets
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from pydantic import BaseModel, ConfigDict, Field
from sqlalchemy import JSON, ForeignKey, String, Uuid, and_, exists, or_, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncSession
from sqlalchemy.orm import Mapped, mapped_column

from core import outbox
from core.accounts import Caller
from core.bookings import (
    CHILD_BELOW,
    AgeBand,
    Booking,
    BookingStatus,
    Participant,
    Role,
    RoomState,
)
from core.bus import BusEvent, publish_all
from core.crypto import Keyring
from core.database import Base, UTCDateTime
from core.errors import Conflict, FieldError, Gone, InvalidInput, NotFound
from core.events import (
    BookingCancelled,
    BookingChanged,
    BookingCreated,
    BookingUpdated,
    LinkRevoked,
    ParticipantUpdated,
)
from core.inputs import Instant, Line, Paragraph
from core.outbox import do_write
from core.purposes import REQUIRES, Purpose, RecordingAccess, RecordingPolicy
from core.runtime import Runtime
from core.settings import MediaMode, Settings
from signaling.attendance import LeaveHow, end_all_stays
from signaling.credentials import credential_hash, join_credential, join_url
from signaling.livekit import Removal, Rooms

ROOM_NAME_BYTES = 24  # 192 random bits: no one finds a room by guessing its name


class Person(BaseModel):
    """A booked person as the platform knows them."""

    model_config = ConfigDict(extra="forbid")

    external_id: Line = Field(min_length=1, max_length=200, examples=["user-4711"])
    display_name: Line = Field(min_length=1, max_length=200, examples=["Ada Lovelace"])
    age_band: AgeBand | None = Field(
        default=None,
        description="`adult` (18+), `minor` (13-17) or `child` (under 13). Minors and children "
        "decide with their guardian; nobody under `CALLGATE_MINIMUM_AGE` is booked. State "
        "this, `age`, or the older `adult`.",
    )
    age: int | None = Field(
        default=None, ge=0, le=130, description="Age in years; sets `age_band` when given."
    )
    adult: bool | None = Field(
        default=None, description="Deprecated (use `age_band`): true = adult, false = minor."
    )

    def band(self) -> AgeBand | None:
        """The age band the request states (consistency is `_age_errors`' job)."""
        if self.age is not None:
            return AgeBand.of_age(self.age)
        if self.age_band is not None:
            return self.age_band
        if self.adult is not None:
            return AgeBand.ADULT if self.adult else AgeBand.MINOR
        return None


class BookingRequest(BaseModel):
    """What a scheduler books."""

    model_config = ConfigDict(extra="forbid")

    title: Line = Field(min_length=1, max_length=200, examples=["Mentoring session"])
    stated_purpose: Paragraph | None = Field(
        default=None, max_length=2000, description="Why the session happens, in the client's words."
    )
    stated_by: Line | None = Field(
        default=None, min_length=1, max_length=200,
        description="`external_id` of the client who stated the purpose (their words go to "
        "`ai.agenda` only if they grant it); default: the first client.",
        examples=["user-4711"],
    )
    language: str = Field(
        min_length=2, max_length=35, pattern=r"^[A-Za-z]{2,8}(-[A-Za-z0-9]{1,8})*$",
        description="BCP 47 language tag of the session (notices are shown in it).",
        examples=["en"],
    )
    starts_at: Instant = Field(description="Start, with a timezone offset.")
    ends_at: Instant = Field(description="End, with a timezone offset.")
    host: Person
    clients: list[Person] = Field(description="1..max_clients clients.")
    requested_purposes: list[Purpose] = Field(
        default_factory=list, description="What may be asked for consent; nothing else is."
    )
    recording_policy: RecordingPolicy = RecordingPolicy.PER_PARTICIPANT
    recording_access: RecordingAccess = Field(
        default=RecordingAccess.OWN,
        description="Who may read the recordings, transcript and summary after the call: "
        "`admins` (admin keys only), `own` (each person their own files, transcript lines and "
        "the summaries they are in), `host` (the host everything, clients their own), "
        "`participants` (everyone in the booking). Participants read through their join link "
        "for a set number of days after the session (docs/privacy.md).",
    )
    record_automatically: bool = False


class RescheduleRequest(BaseModel):
    """A new window for a booking."""

    model_config = ConfigDict(extra="forbid")

    starts_at: Instant
    ends_at: Instant


def _window_errors(
    starts_at: datetime, ends_at: datetime, settings: Settings, now: datetime
) -> list[FieldError]:
    if ends_at <= starts_at:
        return [FieldError(("body", "ends_at"), "must be after starts_at")]
    if ends_at <= now and not settings.allow_past_bookings:
        return [FieldError(("body", "ends_at"), "the session would already be over")]
    if ends_at - starts_at > settings.max_booking_duration:
        limit = f"{settings.max_booking_hours:g} h"
        return [FieldError(("body", "ends_at"), f"the session may last at most {limit}")]
    return []


def age_errors(
    loc: tuple[str | int, ...], band: AgeBand | None, stated: AgeBand | None, age: int | None,
    adult: bool | None, settings: Settings,
) -> list[FieldError]:
    """What is wrong with a person's stated age: missing, contradicting itself, or below the
    deployment's minimum age."""
    if band is None:
        return [FieldError((*loc, "age_band"), "state age_band (or age)")]
    if stated is not None and stated is not band:
        return [FieldError((*loc, "age_band"), f"age {age} is in the band {band.value}")]
    if adult is not None and adult is not (band is AgeBand.ADULT):
        return [FieldError((*loc, "adult"), f"contradicts the age band {band.value}")]
    minimum = settings.minimum_age
    if age is not None and age < minimum:
        return [FieldError((*loc, "age"), f"nobody under {minimum} is booked here")]
    if age is None and band is AgeBand.CHILD and minimum > 0:
        why = "children are not booked here" if minimum >= CHILD_BELOW else "state the age"
        return [FieldError((*loc, "age_band"), f"{why} (minimum age {minimum})")]
    return []


def _person_errors(
    loc: tuple[str | int, ...], person: Person, settings: Settings
) -> list[FieldError]:
    return age_errors(loc, person.band(), person.age_band, person.age, person.adult, settings)


def _people_errors(request: BookingRequest, settings: Settings) -> list[FieldError]:
    errors: list[FieldError] = _person_errors(("body", "host"), request.host, settings)
    for index, client in enumerate(request.clients):
        errors += _person_errors(("body", "clients", index), client, settings)
    if not errors and request.host.band() is not AgeBand.ADULT:
        field = "age_band" if request.host.age_band or request.host.age is not None else "adult"
        errors.append(FieldError(("body", "host", field), "the host must be an adult"))
    if not 1 <= len(request.clients) <= settings.max_clients:
        errors.append(
            FieldError(("body", "clients"), f"book 1 to {settings.max_clients} clients")
        )
    seen = {request.host.external_id}
    for index, person in enumerate(request.clients):
        if person.external_id in seen:
            errors.append(
                FieldError(("body", "clients", index, "external_id"), "duplicate participant")
            )
        seen.add(person.external_id)
    if request.stated_by is not None:
        if request.stated_by not in {c.external_id for c in request.clients}:
            errors.append(FieldError(("body", "stated_by"), "must be one of the clients"))
        if request.stated_purpose is None:
            errors.append(FieldError(("body", "stated_by"), "names who stated no purpose"))
    return errors


def purpose_author(request: BookingRequest) -> str | None:
    """The external id of the client whose words `stated_purpose` are, if any."""
    if request.stated_purpose is None or not request.clients:
        return None
    return request.stated_by or request.clients[0].external_id


def _purpose_errors(purposes: list[Purpose]) -> list[FieldError]:
    errors: list[FieldError] = []
    chosen = set(purposes)
    if len(chosen) != len(purposes):
        errors.append(FieldError(("body", "requested_purposes"), "a purpose is listed twice"))
    for purpose in purposes:
        missing = REQUIRES.get(purpose, frozenset()) - chosen
        if missing:
            names = ", ".join(sorted(p.value for p in missing))
            errors.append(
                FieldError(("body", "requested_purposes"), f"{purpose.value} requires {names}")
            )
    return errors


def validate_booking(request: BookingRequest, settings: Settings, now: datetime) -> None:
    """Every rule a booking must satisfy; InvalidInput naming each failing field."""
    errors = [
        *_window_errors(request.starts_at, request.ends_at, settings, now),
        *_people_errors(request, settings),
        *_purpose_errors(request.requested_purposes),
    ]
    if errors:
        detail = "; ".join(f"{'.'.join(str(p) for p in e.loc[1:])}: {e.msg}" for e in errors)
        raise InvalidInput(detail, errors=errors)


def request_hashes(keys: Keyring, request: BookingRequest) -> list[str]:
    """The Idempotency-Key fingerprint of a request: keyed (HMAC under the server secret), so
    nobody holding the database can recompute it from a guess at the people in it. Erasure
    drops it (signaling/subjects.py). The first is the current secret's; then the previous
    secrets', which a replay made before a rotation still matches."""
    canonical = json.dumps(request.model_dump(mode="json"), sort_keys=True, separators=(",", ":"))
    return [mac.hex() for mac in keys.derivations("idempotency", canonical)]


def join_link(runtime: Runtime, participant: Participant) -> str:
    """The participant's link: derived under the current secret, or under the previous one
    that made it (a link keeps working, and is shown the same, across a secret rotation)."""
    keys = runtime.keys
    generation = participant.credential_generation
    for made_by in (keys, *keys.previous()):
        credential = join_credential(made_by, participant.id, generation)
        if hmac.compare_digest(credential_hash(credential), participant.credential_hash):
            return join_url(runtime.settings, credential)
    return join_url(runtime.settings, join_credential(keys, participant.id, generation))


def _new_booking(
    request: BookingRequest, caller: Caller, key: str | None, runtime: Runtime
) -> Booking:
    now = runtime.clock.now()
    livekit = runtime.settings.media_mode is MediaMode.LIVEKIT
    booking = Booking(
        id=uuid.uuid4(),
        title=request.title,
        stated_purpose=request.stated_purpose,
        language=request.language,
        starts_at=request.starts_at,
        ends_at=request.ends_at,
        status=BookingStatus.SCHEDULED,
        recording_policy=request.recording_policy,
        recording_access=request.recording_access,
        requested_purposes=[p.value for p in request.requested_purposes],
        record_automatically=request.record_automatically,
        room_name=f"cg-{secrets.token_urlsafe(ROOM_NAME_BYTES)}",
        room_state=RoomState.PENDING if livekit else RoomState.NOT_NEEDED,
        room_attempts=0,
        sequence=0,
        created_by=caller.key_id,
        idempotency_key=key,
        request_hash=request_hashes(runtime.keys, request)[0] if key else None,
        created_at=now,
        updated_at=now,
        participants=[],
    )
    people = [(request.host, Role.HOST), *((c, Role.CLIENT) for c in request.clients)]
    author = purpose_author(request)
    for position, (person, role) in enumerate(people):
        pid = uuid.uuid4()
        booking.participants.append(
            Participant(
                id=pid,
                position=position,
                external_id=person.external_id,
                display_name=person.display_name,
                role=role,
                age_band=person.band(),
                age=person.age,
                credential_hash=credential_hash(join_credential(runtime.keys, pid, 0)),
                credential_generation=0,
                created_at=now,
                purpose_author=role is Role.CLIENT and person.external_id == author,
            )
        )
    return booking


async def _replay(
    session: AsyncSession, keys: Keyring, caller: Caller, key: str, request: BookingRequest
) -> Booking | None:
    """The booking an earlier request with this Idempotency-Key made, if any. Once someone in
    it was erased its fingerprint is gone, and every body is a conflict: a replay cannot tell
    whether a guessed name was the erased person's."""
    found = await session.scalar(
        select(Booking).where(Booking.created_by == caller.key_id, Booking.idempotency_key == key)
    )
    if found is None:
        return None
    stored = found.request_hash
    if stored is None or not any(
        hmac.compare_digest(stored, fingerprint) for fingerprint in request_hashes(keys, request)
    ):
        raise Conflict(
            "this Idempotency-Key was used with a different request body",
            extra={"booking_id": str(found.id)},
        )
    return found


async def do_create_booking(
    runtime: Runtime,
    caller: Caller,
    request: BookingRequest,
    key: str | None = None,
    *,
    rooms: Rooms | None = None,
) -> tuple[Booking, bool]:
    """Create a booking (or return the one this Idempotency-Key made); True when new.
    `rooms` (the app's LiveKit rooms) provisions its room; without it nothing is provisioned."""
    validate_booking(request, runtime.settings, runtime.clock.now())
    if key is not None and not 1 <= len(key) <= 200:
        raise InvalidInput.field(("header", "Idempotency-Key"), "use 1 to 200 characters")
    if key is not None:
        async with runtime.db.session() as session:
            earlier = await _replay(session, runtime.keys, caller, key, request)
        if earlier is not None:
            return await access_booking_by_id(runtime, earlier.id), False
    booking = _new_booking(request, caller, key, runtime)
    try:
        async with runtime.db.session() as session:
            session.add(booking)
            do_write(session, outbox.BookingCreated(
                *_state(booking),
                participants=tuple(
                    (p.id, p.external_id, p.role.value) for p in booking.participants
                ),
            ), booking.created_at)
    except IntegrityError:
        if key is None:
            raise
        async with runtime.db.session() as session:  # a concurrent twin won the race
            earlier = await _replay(session, runtime.keys, caller, key, request)
        if earlier is None:
            raise
        return await access_booking_by_id(runtime, earlier.id), False
    await publish_all(runtime.bus, [_event(BookingCreated, booking)])
    if rooms is not None:
        await rooms.provision(booking.id)
    return await access_booking_by_id(runtime, booking.id), True


def _state(booking: Booking) -> tuple[uuid.UUID, str, datetime, datetime, int]:
    """What every booking.* outbox event carries, in its field order."""
    return (
        booking.id, booking.status.value, booking.starts_at, booking.ends_at, booking.sequence
    )


def _event(kind: type[BookingChanged], booking: Booking) -> BookingChanged:
    return kind(
        booking_id=booking.id,
        status=booking.status.value,
        starts_at=booking.starts_at,
        ends_at=booking.ends_at,
        sequence=booking.sequence,
    )


async def get_booking(
    session: AsyncSession, booking_id: uuid.UUID, *, lock: bool = False
) -> Booking | None:
    """The booking; with `lock`, its row locked until the transaction ends (the lifecycle
    sweep and attendance take the same lock, so their changes never interleave)."""
    return await session.get(
        Booking, booking_id, populate_existing=True, with_for_update=lock or None
    )


async def access_booking(
    session: AsyncSession, booking_id: uuid.UUID, *, lock: bool = False
) -> Booking:
    booking = await get_booking(session, booking_id, lock=lock)
    if booking is None:
        raise NotFound(f"no booking {booking_id}")
    return booking


async def access_booking_by_id(runtime: Runtime, booking_id: uuid.UUID) -> Booking:
    async with runtime.db.session() as session:
        return await access_booking(session, booking_id)


async def access_booking_participant(
    session: AsyncSession, booking_id: uuid.UUID, participant_id: uuid.UUID
) -> Participant:
    """A participant of this booking; another booking's participant is not found here."""
    booking = await access_booking(session, booking_id)
    for participant in booking.participants:
        if participant.id == participant_id:
            return participant
    raise NotFound(f"booking {booking_id} has no participant {participant_id}")


async def do_reschedule_booking(
    runtime: Runtime,
    booking_id: uuid.UUID,
    request: RescheduleRequest,
    *,
    rooms: Rooms | None = None,
) -> Booking:
    """Move a booking to a new window; SEQUENCE grows so calendars replace the invite."""
    errors = _window_errors(
        request.starts_at, request.ends_at, runtime.settings, runtime.clock.now()
    )
    if errors:
        raise InvalidInput(f"{errors[0].loc[-1]}: {errors[0].msg}", errors=errors)
    async with runtime.db.session() as session:
        booking = await access_booking(session, booking_id, lock=True)
        if booking.status is BookingStatus.CANCELLED:
            raise Gone("this booking was cancelled")
        if booking.status.over:
            raise Conflict(f"the session already {booking.status.value}; it cannot move")
        now = runtime.clock.now()
        booking.starts_at = request.starts_at
        booking.ends_at = request.ends_at
        booking.sequence += 1
        booking.updated_at = now
        if booking.status is BookingStatus.OPEN:  # no one came yet: the sweep reopens it
            booking.status = BookingStatus.SCHEDULED
            booking.opened_at = None
        if booking.room_state is RoomState.DELETED:  # closed with its old window: reopen
            booking.room_state = RoomState.PENDING
        do_write(session, outbox.BookingRescheduled(*_state(booking)), now)
        event = _event(BookingUpdated, booking)
    await publish_all(runtime.bus, [event])
    if rooms is not None:
        await rooms.provision(booking_id)
    return await access_booking_by_id(runtime, booking_id)


async def do_cancel_booking(
    runtime: Runtime, booking_id: uuid.UUID, *, rooms: Rooms | None = None
) -> Booking:
    """Cancel: join links answer 410 from now on and the LiveKit room is deleted.
    Cancelling twice is not an error."""
    events: list[BusEvent] = []
    async with runtime.db.session() as session:
        booking = await access_booking(session, booking_id, lock=True)
        if booking.status in (BookingStatus.ENDED, BookingStatus.CLOSED):
            raise Conflict(f"the session already {booking.status.value}; it cannot be cancelled")
        if booking.status is not BookingStatus.CANCELLED:
            now = runtime.clock.now()
            await end_all_stays(session, booking, now, LeaveHow.CANCELLED)
            booking.status = BookingStatus.CANCELLED
            booking.cancelled_at = now
            booking.updated_at = now
            booking.sequence += 1
            do_write(session, outbox.BookingCancelled(*_state(booking)), now)
            events.append(_event(BookingCancelled, booking))
    await publish_all(runtime.bus, events)
    if rooms is not None:
        await rooms.remove(booking_id)
    return await access_booking_by_id(runtime, booking_id)


async def do_revoke_participant(
    runtime: Runtime, booking_id: uuid.UUID, participant_id: uuid.UUID,
    *, rooms: Rooms | None = None,
) -> Participant:
    """Give the participant a new join link; the old one stops working at once, and so does
    everything it handed out (tickets, sockets, the recording connection, event streams:
    `link.revoked`). With `rooms` (livekit mode) the person is removed from the room and the
    old token kept out."""
    async with runtime.db.session() as session:
        participant = await access_booking_participant(session, booking_id, participant_id)
        participant.credential_generation += 1
        participant.credential_hash = credential_hash(
            join_credential(runtime.keys, participant.id, participant.credential_generation)
        )
        now = runtime.clock.now()
        do_write(session, outbox.LinkRevoked(
            booking_id, participant.id, participant.external_id, participant.role.value, now
        ), now)
    await publish_all(
        runtime.bus, [LinkRevoked(booking_id=booking_id, participant_id=participant_id)]
    )
    if rooms is not None:
        await rooms.revoke(booking_id, participant_id, Removal.REVOKED)
    return participant


class ParticipantCorrection(BaseModel):
    """A correction of what the platform stated about a person (GDPR art. 16)."""

    model_config = ConfigDict(extra="forbid")

    display_name: str | None = Field(default=None, min_length=1, max_length=200)
    age_band: AgeBand | None = None
    age: int | None = Field(default=None, ge=0, le=130)


class Correction(Base):
    """One rectification: when, by which key, which fields (their old values are not kept:
    they were wrong, and are the person's data)."""

    __tablename__ = "participant_corrections"

    id: Mapped[uuid.UUID] = mapped_column(Uuid, primary_key=True, default=uuid.uuid4)
    at: Mapped[datetime] = mapped_column(UTCDateTime())
    booking_id: Mapped[uuid.UUID] = mapped_column(
        ForeignKey("bookings.id", ondelete="CASCADE"), index=True
    )
    participant_id: Mapped[uuid.UUID] = mapped_column(
        ForeignKey("participants.id", ondelete="CASCADE"), index=True
    )
    api_key_id: Mapped[str] = mapped_column(String(24))
    fields: Mapped[list[str]] = mapped_column(JSON)

    def view(self) -> dict[str, Any]:
        return {"at": self.at.isoformat(), "booking_id": str(self.booking_id),
                "participant_id": str(self.participant_id), "api_key_id": self.api_key_id,
                "fields": list(self.fields)}


def _corrected_age(
    participant: Participant, request: ParticipantCorrection, settings: Settings
) -> tuple[AgeBand, int | None]:
    """The band and age after the correction, or InvalidInput."""
    band, age = participant.age_band, participant.age
    if request.age is not None:
        band, age = AgeBand.of_age(request.age), request.age
    elif request.age_band is not None:
        band = request.age_band
        if age is not None and AgeBand.of_age(age) is not band:
            age = None  # the old age contradicts the corrected band
    errors = age_errors(("body",), band, request.age_band, age, None, settings)
    if not errors and participant.role is Role.HOST and band is not AgeBand.ADULT:
        errors.append(FieldError(("body", "age_band"), "the host must be an adult"))
    if errors:
        raise InvalidInput(f"{errors[0].loc[-1]}: {errors[0].msg}", errors=errors)
    return band, age


async def do_correct_participant(
    runtime: Runtime, caller: Caller, booking_id: uuid.UUID, participant_id: uuid.UUID,
    request: ParticipantCorrection,
) -> Participant:
    """Correct a person's display name or age: logged, pushed to the pages at once
    (`participant.updated`), in every invite and join from now on. Nothing else changes: the
    link, the consent given, the role. A band change makes the gate re-read the booking, so
    the guardian rule follows it."""
    if request.display_name is None and request.age_band is None and request.age is None:
        raise InvalidInput.field(("body",), "give display_name, age_band or age")
    async with runtime.db.session() as session:
        participant = await access_booking_participant(session, booking_id, participant_id)
        if participant.revoked_at is not None:
            raise Gone("this person was erased")
        band, age = _corrected_age(participant, request, runtime.settings)
        name = request.display_name or participant.display_name
        fields = [
            field for field, old, new in (
                ("display_name", participant.display_name, name),
                ("age_band", participant.age_band, band), ("age", participant.age, age),
            ) if old != new
        ]
        participant.display_name, participant.age_band, participant.age = name, band, age
        if fields:
            session.add(Correction(
                at=runtime.clock.now(), booking_id=booking_id, participant_id=participant_id,
                api_key_id=caller.key_id, fields=fields,
            ))
    if fields:
        event = ParticipantUpdated(
            booking_id=booking_id, participant_id=participant_id, display_name=name,
            age_band=band.value,
        )
        await publish_all(runtime.bus, [event])
    return participant


@dataclass(frozen=True)
class BookingFilter:
    starts_before: datetime | None = None  # `to`: bookings starting before this
    ends_after: datetime | None = None  # `from`: bookings ending after this
    status: BookingStatus | None = None
    participant: str | None = None  # a participant's external id


# `<start in microseconds since 1970>.<booking id>`: every string of this shape is a cursor
# (the OpenAPI document states the pattern, and nothing matching it is refused).
CURSOR_PATTERN = r"^[0-9]{1,17}\.[0-9a-f]{32}$"
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


def encode_cursor(booking: Booking) -> str:
    micros = (booking.starts_at - _EPOCH) // timedelta(microseconds=1)
    return f"{micros}.{booking.id.hex}"


def decode_cursor(cursor: str) -> tuple[datetime, uuid.UUID]:
    if not re.match(CURSOR_PATTERN, cursor):
        raise InvalidInput.field(("query", "cursor"), "not a cursor from this API")
    micros, ident = cursor.split(".")
    return _EPOCH + timedelta(microseconds=int(micros)), uuid.UUID(hex=ident)


async def list_bookings(
    session: AsyncSession, filters: BookingFilter, cursor: str | None, limit: int
) -> tuple[list[Booking], str | None]:
    """One page of bookings ordered by start, and the cursor of the next page (or None)."""
    query = select(Booking).order_by(Booking.starts_at, Booking.id)
    conditions: list[Any] = []
    if filters.ends_after is not None:
        conditions.append(Booking.ends_at > filters.ends_after)
    if filters.starts_before is not None:
        conditions.append(Booking.starts_at < filters.starts_before)
    if filters.status is not None:
        conditions.append(Booking.status == filters.status)
    if filters.participant is not None:
        conditions.append(
            exists().where(
                Participant.booking_id == Booking.id,
                Participant.external_id == filters.participant,
            )
        )
    if cursor is not None:
        after_start, after_id = decode_cursor(cursor)
        conditions.append(
            or_(
                Booking.starts_at > after_start,
                and_(Booking.starts_at == after_start, Booking.id > after_id),
            )
        )
    rows = list((await session.scalars(query.where(*conditions).limit(limit + 1))).all())
    more = len(rows) > limit
    page = rows[:limit]
    return page, (encode_cursor(page[-1]) if more and page else None)

