"""Personal join credentials (the secret part of each participant's join link), and the
LiveKit access token a join exchanges one for.

A credential is HMAC-SHA256(server secret, participant id + generation): 256 bits no one can
guess without the server secret. Only its SHA-256 is stored (a database leak reveals no link),
yet callgate can show the link again (invite.ics) by deriving it. Revoking bumps the
generation, so the old link stops matching and a new one is derived.
"""

from __future__ import annotations

import functools
import re
import uuid
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

import jwt
from livekit.api.access_token import Claims
from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession

from core.bookings import Participant, Role
from core.crypto import Keyring, b64url, sha256_hex
from core.errors import NotFound, RateLimited
from core.runtime import Runtime
from core.settings import Settings
from signaling.livekit import GENERATION_ATTRIBUTE, room_grants

_SHAPE = re.compile(r"^[A-Za-z0-9_-]{43}$")
_ROOM = "\x00room"  # placeholder in the grant template, replaced by each token's room
FAILURE_WINDOW_S = 60
PREFIX_CHARS = 8  # 48 bits: the failures aimed at one link, whichever addresses they come from
HARD_FACTOR = 10  # past this many times the limit an address is refused outright
T = TypeVar("T")


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


async def guard_credential(
    runtime: Runtime, credential: str, address: str, lookup: Callable[[], Awaitable[T | None]]
) -> T:
    """What `lookup` finds for a presented join credential, under the one failure limit every
    credential-bearing endpoint shares (`join_failures_per_minute`).

    Failures are counted per address and per credential prefix. A prefix that failed too often
    is refused before any lookup, so a link cannot be completed by guessing from many
    addresses. An address that failed too often gets 429 for every credential that is not
    valid, while a valid link from it still works (people behind one NAT are not locked out by
    a neighbour); past HARD_FACTOR times the limit the address is refused outright."""
    limit = runtime.settings.join_failures_per_minute
    by_address = f"cred-fail:addr:{address}"
    by_prefix = f"cred-fail:prefix:{credential[:PREFIX_CHARS]}"
    for key, bound in ((by_prefix, limit), (by_address, limit * HARD_FACTOR)):
        verdict = await runtime.limiter.peek(key, bound, FAILURE_WINDOW_S)
        if not verdict.allowed:
            raise RateLimited("too many failed attempts", retry_after_s=verdict.retry_after_s)
    found = await lookup()
    if found is not None:
        return found
    refused = await runtime.limiter.hit(by_prefix, limit, FAILURE_WINDOW_S)
    counted = await runtime.limiter.hit(by_address, limit, FAILURE_WINDOW_S)
    if not (refused.allowed and counted.allowed):
        wait = max(refused.retry_after_s, counted.retry_after_s)
        raise RateLimited("too many failed attempts", retry_after_s=wait)
    raise NotFound("this join link is not valid")


async def access_participant_guarded(
    runtime: Runtime, credential: str, address: str
) -> Participant:
    """`access_participant` under the shared failure limit (see `guard_credential`)."""

    async def lookup() -> Participant | None:
        async with runtime.db.session() as session:
            return await get_participant_by_credential(session, credential)

    return await guard_credential(runtime, credential, address, lookup)


@functools.cache
def _video_claims(role: Role) -> dict[str, Any]:
    """The `video` claim of a role, as livekit-api's `Claims.asdict()` writes it (camelCase,
    no empty values). The grants depend only on the role; the room is filled in per token."""
    video: dict[str, Any] = Claims(video=room_grants(role, _ROOM)).asdict()["video"]
    return video


def livekit_token(
    api_key: str, api_secret: str, *, identity: str, name: str, role: Role, room: str,
    not_before: int, expires: int, generation: int = 0,
) -> str:
    """A LiveKit access token (HS256 JWT, RFC 7519) with the claims livekit-api's
    `AccessToken(...).with_identity().with_name().with_grants(room_grants()).to_jwt()` puts in
    (`name`, `video`, `sub`, `iss`, `nbf`, `exp`), signed with PyJWT as `AccessToken` does, but
    with the `video` claim prepared once per role: `AccessToken` deep-copies every grant through
    `dataclasses.asdict` on each call, which cost several times the signature on the join path.

    The `callgate.generation` attribute is the join link's generation: LiveKit reports it with
    every join, so callgate can tell a token from a revoked link from one from the new link of
    the same person (signaling/livekit.py, `Rooms.refuse`)."""
    if not identity or not room:
        raise ValueError("identity and room must be set when joining a room")
    claims: dict[str, Any] = {"name": name} if name else {}
    claims["video"] = {**_video_claims(role), "room": room}
    claims["attributes"] = {GENERATION_ATTRIBUTE: str(generation)}
    claims.update(sub=identity, iss=api_key, nbf=not_before, exp=expires)
    return jwt.encode(claims, api_secret, algorithm="HS256")
