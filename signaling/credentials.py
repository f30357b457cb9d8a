"""Personal join credentials: the secret part of each participant's join link.

A credential is HMAC-SHA256(server secret, participant id + generation): 256 bits no one can
guess without the server secret. Only its SHA-256 is stored (a database leak reveals no link),
yet callgate can show the link again (invite.ics) by deriving it. Revoking bumps the
generation, so the old link stops matching and a new one is derived.
"""

from __future__ import annotations

import re
import uuid

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession

from core.bookings import Participant
from core.crypto import Keyring, b64url, sha256_hex
from core.errors import NotFound
from core.settings import Settings

_SHAPE = re.compile(r"^[A-Za-z0-9_-]{43}$")


def join_credential(keys: Keyring, participant_id: uuid.UUID, generation: int) -> str:
    return b64url(keys.derive("join-link", f"{participant_id}:{generation}"))


def credential_hash(credential: str) -> str:
    return sha256_hex(credential)


def join_url(settings: Settings, credential: str) -> str:
    return f"{settings.base_url()}/join/{credential}"


def looks_like_credential(credential: str) -> bool:
    return bool(_SHAPE.match(credential))


async def get_participant_by_credential(
    session: AsyncSession, credential: str
) -> Participant | None:
    """The participant a live (unrevoked) credential belongs to, else None."""
    if not looks_like_credential(credential):
        return None
    query = select(Participant).where(
        Participant.credential_hash == credential_hash(credential),
        Participant.revoked_at.is_(None),
    )
    return (await session.execute(query)).scalar_one_or_none()


async def access_participant(session: AsyncSession, credential: str) -> Participant:
    """The participant behind a join credential. Unknown and revoked credentials get the
    same NotFound, so a caller cannot tell them apart."""
    participant = await get_participant_by_credential(session, credential)
    if participant is None:
        raise NotFound("this join link is not valid")
    return participant
