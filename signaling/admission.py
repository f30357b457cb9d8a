"""Who may open a room's signaling socket: the booked person, once, in the window, from us.

`access_admission` is the only door; each refusal is a `CallgateError` that `close_code`
turns into the WebSocket close code documented in docs/signaling.md. The Origin check comes
before the ticket is redeemed, so a page on a foreign site cannot burn a person's ticket.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import select

from consent.state import booking_decisions
from core.bookings import Booking, Participant, Role
from core.errors import (
    AuthenticationFailed,
    CallgateError,
    Gone,
    NotFound,
    PermissionDenied,
    Unavailable,
)
from core.runtime import Runtime
from core.settings import Settings
from signaling.ice import ice_servers
from signaling.protocol import CloseCode, ConsentState, IceServer, Peer
from signaling.tickets import redeem_ticket
from signaling.window import access_window

_BOOKING = select(Booking.id, Booking.status, Booking.starts_at, Booking.ends_at)
_PERSON = select(
    Participant.booking_id, Participant.display_name, Participant.role, Participant.revoked_at,
    Participant.credential_generation,
)


@dataclass(frozen=True)
class Admission:
    booking_id: uuid.UUID
    room_name: str
    closes_at: datetime
    peer: Peer
    ice_servers: list[IceServer]
    consent: list[ConsentState]  # the newest decision per person and purpose, from the ledger


def allowed_origins(settings: Settings) -> frozenset[str]:
    return frozenset({settings.public_origin, *(o.rstrip("/") for o in settings.allowed_origins)})


def check_origin(settings: Settings, origin: str | None) -> None:
    if origin is None:
        raise PermissionDenied("an Origin header is required")
    if origin.rstrip("/") not in allowed_origins(settings):
        raise PermissionDenied(f"origin {origin!r} may not open signaling sockets")


async def access_admission(
    runtime: Runtime, room_name: str, ticket: str, origin: str | None
) -> Admission:
    """The admitted person behind `ticket` for `room_name`, or the reason they are refused."""
    settings = runtime.settings
    check_origin(settings, origin)
    if not ticket:
        raise AuthenticationFailed("a ticket from POST /v1/join is required (?ticket=...)")
    now = runtime.clock.now()
    claims = await redeem_ticket(runtime.db, runtime.keys, ticket, now)
    # Plain column reads (no ORM objects, no relationship loading): this runs per socket.
    async with runtime.db.sessions() as session:
        booking = (await session.execute(_BOOKING.where(Booking.room_name == room_name))).first()
        person = (
            await session.execute(_PERSON.where(Participant.id == claims.participant_id))
        ).first()
        decisions = (
            await booking_decisions(session, booking.id) if booking is not None else []
        )
    if booking is None:
        raise NotFound("no such room")
    if booking.id != claims.booking_id:
        raise PermissionDenied("this ticket is for another room")
    if person is None or person.booking_id != booking.id:
        raise PermissionDenied("this ticket is for another room")
    if person.revoked_at is not None:
        raise AuthenticationFailed("this join link was revoked")
    if person.credential_generation != claims.generation:
        raise AuthenticationFailed("this join link was revoked")
    window = access_window(settings, booking.status, booking.starts_at, booking.ends_at, now)
    closes_at = window.closes_at
    pid = claims.participant_id
    peer = Peer(id=str(pid), name=person.display_name, role=Role(person.role).value)
    servers = [IceServer(**server) for server in ice_servers(settings, pid, now, closes_at)]
    consent = [
        ConsentState(
            who=str(current.subject_id),
            purpose=current.purpose.value,
            decision=current.decision,
        )
        for current in decisions
    ]
    return Admission(booking.id, room_name, closes_at, peer, servers, consent)


def close_code(error: CallgateError) -> CloseCode:
    """The close code a refused socket gets (docs/signaling.md, "Close codes")."""
    if isinstance(error, AuthenticationFailed):
        return CloseCode.BAD_TICKET
    if isinstance(error, NotFound):
        return CloseCode.NO_ROOM
    if isinstance(error, Gone):
        return CloseCode.CANCELLED
    if isinstance(error, Unavailable):
        return CloseCode.TRY_AGAIN
    return CloseCode.FORBIDDEN
