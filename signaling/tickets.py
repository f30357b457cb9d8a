"""Single-use signaling tickets: what `POST /v1/join` hands out to open the WebSocket.

A ticket is self-contained (participant, booking, the join link's credential generation,
expiry, nonce, HMAC), so issuing one costs no database write; redeeming it records its nonce,
so a second use is refused on every node. Admission compares the generation with the
participant's current one, so revoking the link voids every ticket issued under it.
"""

from __future__ import annotations

import base64
import binascii
import hmac
import secrets
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime

from sqlalchemy import String, Uuid, delete
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Mapped, mapped_column

from core.crypto import Keyring, b64url
from core.database import Base, Database, UTCDateTime
from core.errors import AuthenticationFailed


class UsedTicket(Base):
    __tablename__ = "used_tickets"

    nonce: Mapped[str] = mapped_column(String(32), primary_key=True)
    participant_id: Mapped[uuid.UUID] = mapped_column(Uuid)
    expires_at: Mapped[datetime] = mapped_column(UTCDateTime(), index=True)


@dataclass(frozen=True)
class TicketClaims:
    participant_id: uuid.UUID
    booking_id: uuid.UUID
    generation: int  # the join link's credential generation the ticket was issued under
    expires_at: datetime
    nonce: str


def issue_ticket(
    keys: Keyring, participant_id: uuid.UUID, booking_id: uuid.UUID, generation: int,
    expires_at: datetime,
) -> str:
    nonce = secrets.token_hex(16)
    expiry = int(expires_at.timestamp())
    body = f"{participant_id}.{booking_id}.{generation}.{expiry}.{nonce}"
    mac = b64url(keys.derive("signaling-ticket", body))
    return f"{b64url(body.encode())}.{mac}"


def read_ticket(keys: Keyring, ticket: str, now: datetime) -> TicketClaims:
    """The claims of an authentic, unexpired ticket (not checking single use)."""
    invalid = AuthenticationFailed("the signaling ticket is not valid; get a new one from /v1/join")
    encoded, _, mac = ticket.partition(".")
    try:
        body = base64.urlsafe_b64decode(encoded + "=" * (-len(encoded) % 4)).decode()
    except (binascii.Error, UnicodeDecodeError, ValueError):
        raise invalid from None
    expected = [b64url(m) for m in keys.derivations("signaling-ticket", body)]
    if not any(hmac.compare_digest(mac, candidate) for candidate in expected):
        raise invalid
    try:
        participant, booking, generation, expiry, nonce = body.split(".")
        claims = TicketClaims(
            uuid.UUID(participant), uuid.UUID(booking), int(generation),
            datetime.fromtimestamp(int(expiry), UTC), nonce,
        )
    except ValueError:
        raise invalid from None
    if claims.expires_at <= now:
        raise AuthenticationFailed("the signaling ticket has expired; get a new one from /v1/join")
    return claims


async def redeem_ticket(db: Database, keys: Keyring, ticket: str, now: datetime) -> TicketClaims:
    """Check a ticket and mark it used; a second redemption anywhere fails."""
    claims = read_ticket(keys, ticket, now)
    try:
        async with db.session() as session:
            session.add(
                UsedTicket(
                    nonce=claims.nonce,
                    participant_id=claims.participant_id,
                    expires_at=claims.expires_at,
                )
            )
    except IntegrityError:
        raise AuthenticationFailed("the signaling ticket was already used") from None
    return claims


async def purge_used_tickets(db: Database, now: datetime) -> int:
    """Forget nonces of expired tickets (an expired ticket is refused anyway)."""
    async with db.session() as session:
        result = await session.execute(delete(UsedTicket).where(UsedTicket.expires_at < now))
    return int(getattr(result, "rowcount", 0) or 0)
