"""Bookings as the scheduler sees them: create, read, reschedule, cancel.

A booking belongs to the organization of the key that made it, and every door here that a
caller opens (`access_org_booking`, `do_*`) takes the caller's organization: another
organization's booking is "not found", as if it did not exist. The request models and
their rules are `signaling.bookingrules`, listing is `signaling.bookinglist`, changes to one
participant (new link, correction) are `signaling.participants`.

A booking is written whole or not at all. Events (`booking.*`) are published only after the
commit. Creation honors an Idempotency-Key per API key: the same key with the same body
returns the same booking; the same key with another body is a conflict.
"""

from __future__ import annotations

import hmac
import secrets
import uuid
from datetime import datetime

from sqlalchemy import select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncSession

from core import outbox
from core.accounts import Caller
from core.bookings import Booking, BookingStatus, Participant, Role, RoomState
from core.bus import BusEvent, publish_all
from core.crypto import Keyring
from core.errors import Conflict, Gone, InvalidInput, NotFound
from core.events import BookingCancelled, BookingChanged, BookingCreated, BookingUpdated
from core.organizations import org_settings
from core.outbox import do_write
from core.runtime import Runtime
from core.settings import MediaMode
from signaling.attendance import LeaveHow, end_all_stays
from signaling.bookingrules import (
    BookingRequest,
    Person,
    RescheduleRequest,
    purpose_author,
    request_hashes,
    validate_booking,
    window_errors,
)
from signaling.credentials import credential_hash, join_credential, join_url
from signaling.livekit import Rooms

__all__ = [
    "BookingRequest",
    "Person",
    "RescheduleRequest",
    "access_booking",
    "access_booking_by_id",
    "access_booking_participant",
    "access_org_booking",
    "do_cancel_booking",
    "do_create_booking",
    "do_reschedule_booking",
    "get_booking",
    "join_link",
]

ROOM_NAME_BYTES = 24  # 192 random bits: no one finds a room by guessing its name


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
        org_id=caller.org_id,
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
    """Create a booking of the caller's organization (or return the one this
    Idempotency-Key made); True when new. `rooms` (the app's LiveKit rooms) provisions its
    room; without it nothing is provisioned."""
    async with runtime.db.session() as session:
        settings = await org_settings(session, runtime.settings, caller.org_id)
    validate_booking(request, settings, runtime.clock.now())
    if key is not None and not 1 <= len(key) <= 200:
        raise InvalidInput.field(("header", "Idempotency-Key"), "use 1 to 200 characters")
    if key is not None:
        async with runtime.db.session() as session:
            earlier = await _replay(session, runtime.keys, caller, key, request)
        if earlier is not None:
            return await access_booking_by_id(runtime, caller.org_id, earlier.id), False
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
        return await access_booking_by_id(runtime, caller.org_id, earlier.id), False
    await publish_all(runtime.bus, [_event(BookingCreated, booking)])
    if rooms is not None:
        await rooms.provision(booking.id)
    return await access_booking_by_id(runtime, caller.org_id, booking.id), True


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


async def access_org_booking(
    session: AsyncSession, org_id: str, booking_id: uuid.UUID, *, lock: bool = False
) -> Booking:
    """The organization's booking; another organization's is not found (the only door for
    an API caller: the caller's `org_id`)."""
    booking = await get_booking(session, booking_id, lock=lock)
    if booking is None or booking.org_id != org_id:
        raise NotFound(f"no booking {booking_id}")
    return booking


async def access_booking_by_id(runtime: Runtime, org_id: str, booking_id: uuid.UUID) -> Booking:
    async with runtime.db.session() as session:
        return await access_org_booking(session, org_id, booking_id)


async def access_booking_participant(
    session: AsyncSession, org_id: str, booking_id: uuid.UUID, participant_id: uuid.UUID
) -> Participant:
    """A participant of the organization's booking; another booking's participant is not
    found here."""
    booking = await access_org_booking(session, org_id, booking_id)
    for participant in booking.participants:
        if participant.id == participant_id:
            return participant
    raise NotFound(f"booking {booking_id} has no participant {participant_id}")


async def do_reschedule_booking(
    runtime: Runtime,
    org_id: str,
    booking_id: uuid.UUID,
    request: RescheduleRequest,
    *,
    rooms: Rooms | None = None,
) -> Booking:
    """Move the organization's booking to a new window; SEQUENCE grows so calendars replace
    the invite."""
    errors = window_errors(
        request.starts_at, request.ends_at, runtime.settings, runtime.clock.now()
    )
    if errors:
        raise InvalidInput(f"{errors[0].loc[-1]}: {errors[0].msg}", errors=errors)
    async with runtime.db.session() as session:
        booking = await access_org_booking(session, org_id, booking_id, lock=True)
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
    return await access_booking_by_id(runtime, org_id, booking_id)


async def do_cancel_booking(
    runtime: Runtime, org_id: str, booking_id: uuid.UUID, *, rooms: Rooms | None = None
) -> Booking:
    """Cancel the organization's booking: join links answer 410 from now on and the LiveKit
    room is deleted. Cancelling twice is not an error."""
    events: list[BusEvent] = []
    async with runtime.db.session() as session:
        booking = await access_org_booking(session, org_id, booking_id, lock=True)
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
    return await access_booking_by_id(runtime, org_id, booking_id)
