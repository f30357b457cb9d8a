"""API keys: who is calling the scheduler and admin APIs, with which scope, for which
organization (`core.organizations`): every key but an operator's belongs to one, and sees only
its data.

A key is `cg_<key id>_<secret>`; only SHA-256 of the secret is stored (the secret has 256
random bits, so a fast hash is enough), and the whole key is shown once, at creation.
"""

from __future__ import annotations

import enum
import hashlib
import hmac
import re
import secrets
import uuid
from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import ForeignKey, String, select
from sqlalchemy.ext.asyncio import AsyncSession
from sqlalchemy.orm import Mapped, mapped_column

from core.bookings import Booking, Participant
from core.database import Base, UTCDateTime, enum_column
from core.errors import AuthenticationFailed, InvalidInput, NotFound, PermissionDenied
from core.organizations import DEFAULT_ORG

KEY_PREFIX = "cg"


class Scope(enum.StrEnum):
    SCHEDULER = "scheduler"
    ADMIN = "admin"
    AUDITOR = "auditor"
    METRICS = "metrics"  # reads /metrics and nothing else (a Prometheus scraper)
    OPERATOR = "operator"  # manages organizations; belongs to none, sees none's data


class ApiKey(Base):
    __tablename__ = "api_keys"

    id: Mapped[str] = mapped_column(String(24), primary_key=True)
    secret_hash: Mapped[str] = mapped_column(String(64))
    scope: Mapped[Scope] = mapped_column(enum_column(Scope, 16))
    label: Mapped[str] = mapped_column(String(200), default="")
    created_at: Mapped[datetime] = mapped_column(UTCDateTime())
    revoked_at: Mapped[datetime | None] = mapped_column(UTCDateTime(), nullable=True)
    # The organization whose data the key sees (None only for operator keys).
    org_id: Mapped[str | None] = mapped_column(
        ForeignKey("organizations.id"), nullable=True, index=True
    )


@dataclass(frozen=True)
class Caller:
    """An authenticated API caller, and the organization it acts for (`""` for an operator
    key, which matches no organization's rows)."""

    key_id: str
    scope: Scope
    org_id: str = DEFAULT_ORG


@dataclass(frozen=True)
class Viewer:
    """Who asks for what a booking produced: a participant (by join link) or an API caller."""

    participant: Participant | None = None
    caller: Caller | None = None


async def access_booking_data(
    session: AsyncSession, viewer: Viewer, booking_id: uuid.UUID
) -> None:
    """A booking's recordings, transcripts, summaries and agenda: its own participants and
    its organization's admins. A participant of another booking, or an admin of another
    organization, gets NotFound, so they cannot even learn the booking exists; an API key of
    another scope gets PermissionDenied."""
    if viewer.caller is not None:
        if viewer.caller.scope is not Scope.ADMIN:
            raise PermissionDenied("only the booking's participants and admins may read this")
        org = await session.scalar(select(Booking.org_id).where(Booking.id == booking_id))
        if org is None or org != viewer.caller.org_id:
            raise NotFound(f"no booking {booking_id}")
        return
    if viewer.participant is None:
        raise NotFound("no such booking")
    if viewer.participant.booking_id != booking_id:
        raise NotFound("no such booking")


def _hash(secret: str) -> str:
    return hashlib.sha256(secret.encode()).hexdigest()


async def do_create_key(
    session: AsyncSession, scope: Scope, label: str, now: datetime, org_id: str = DEFAULT_ORG
) -> tuple[ApiKey, str]:
    """Create a key of `org_id` (an operator key belongs to no organization); returns the
    row and the plaintext key, which is never stored."""
    key_id = uuid.uuid4().hex[:16]
    secret = secrets.token_urlsafe(32)
    row = ApiKey(
        id=key_id, secret_hash=_hash(secret), scope=scope, label=label, created_at=now,
        org_id=None if scope is Scope.OPERATOR else org_id,
    )
    session.add(row)
    await session.flush()
    return row, f"{KEY_PREFIX}_{key_id}_{secret}"


_KEY_ID = re.compile(r"^[0-9a-f]{16}$")


def key_id_of(value: str) -> str:
    """The key id in `value`: a bare id, `cg_<id>` or a whole key `cg_<id>_<secret>`."""
    parts = value.strip().split("_", 2)
    key_id = parts[1] if len(parts) >= 2 and parts[0] == KEY_PREFIX else value.strip()
    if not _KEY_ID.match(key_id):
        raise InvalidInput.field(
            ("key_id",), "give the key id (16 hex digits) or the whole key cg_<id>_<secret>"
        )
    return key_id


async def do_revoke_key(session: AsyncSession, key: str, now: datetime) -> ApiKey:
    """Revoke a key named by its id or by the whole key (see `key_id_of`)."""
    key_id = key_id_of(key)
    row = await session.get(ApiKey, key_id)
    if row is None:
        raise NotFound(f"no API key {key_id!r}")
    if row.revoked_at is None:
        row.revoked_at = now
    return row


async def access_caller(session: AsyncSession, presented: str | None) -> Caller:
    """The caller behind a presented key, or AuthenticationFailed (same error for every miss)."""
    if not presented:
        raise AuthenticationFailed("an API key is required (Authorization: Bearer <key>)")
    prefix, _, rest = presented.partition("_")
    key_id, _, secret = rest.partition("_")
    row = None
    if prefix == KEY_PREFIX and key_id and secret:
        query = select(ApiKey).where(ApiKey.id == key_id)
        row = (await session.execute(query)).scalar_one_or_none()
    expected = row.secret_hash if row is not None else _hash("")
    matches = hmac.compare_digest(expected, _hash(secret))
    if row is None or not matches or row.revoked_at is not None:
        raise AuthenticationFailed("the API key is not valid")
    return Caller(key_id=row.id, scope=row.scope, org_id=row.org_id or "")
