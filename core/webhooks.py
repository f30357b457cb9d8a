"""Outgoing webhooks (Standard Webhooks): endpoints, signing, and the sender that loses nothing.

The sender reads the outbox (core/outbox.py). Dispatch turns each new outbox event into one
delivery per enabled endpoint that wants its type; delivery sends it, signed, and keeps
trying until the endpoint answers 2xx:

- **Order.** Deliveries of one endpoint and one booking go out in outbox order: a delivery is
  due only when no earlier one of the same endpoint and booking is still pending.
- **Several nodes, crashes.** A node claims a delivery with a compare-and-set lease
  (`lease_until`) before sending it; a node that dies mid-send leaves the lease to expire and
  any node sends it again, with the same `webhook-id` (receivers deduplicate on it).
- **Retries.** Timeouts, connection errors, 5xx, 408 and 429 are retried with exponential
  backoff and jitter (`retry_delay`), at least as long as `Retry-After` asks; other answers
  fail the delivery (it can be replayed). An endpoint without a single 2xx for
  `webhook_disable_after_days` is disabled, and says so in the API.
- **Safe targets.** https and public addresses only unless `webhook_allow_private_targets`;
  redirects are not followed, at most 64 KiB of an answer is read, each attempt has a timeout.

Signatures follow the Standard Webhooks specification: `webhook-signature: v1,<base64 of
HMAC-SHA256(key, "{webhook-id}.{webhook-timestamp}.{body}")>`, key = the base64 part of the
`whsec_` secret; during a rotation's grace period both secrets sign (space-separated).

Secrets are stored sealed under the master key (AES-256-GCM, bound to the endpoint's id), so a
copy of the database alone cannot forge a webhook; `callgate keys rotate-master` re-seals them
with the data keys, and a row stored in plaintext by an older version is sealed at start-up.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import enum
import hashlib
import hmac
import ipaddress
import json
import secrets
import socket
import uuid
from collections.abc import Sequence
from datetime import datetime, timedelta
from urllib.parse import urlsplit

import structlog
from sqlalchemy import JSON, ForeignKey, Integer, String, Text, UniqueConstraint, Uuid, select
from sqlalchemy import update as sql_update
from sqlalchemy.ext.asyncio import AsyncSession
from sqlalchemy.orm import Mapped, mapped_column

from core.crypto import SEALED_PREFIX, Keyring, is_sealed
from core.database import Base, Database, UTCDateTime, enum_column
from core.errors import InvalidInput, NotFound
from core.outbox import EventType, OutboxEvent
from core.settings import Settings

log = structlog.get_logger(__name__)

SECRET_PREFIX = "whsec_"  # noqa: S105 (the prefix, not a secret)


class DeliveryStatus(enum.StrEnum):
    PENDING = "pending"
    DELIVERED = "delivered"
    FAILED = "failed"  # answered with a status that is not retried; replay sends it again


class Endpoint(Base):
    __tablename__ = "webhook_endpoints"

    id: Mapped[uuid.UUID] = mapped_column(Uuid, primary_key=True, default=uuid.uuid4)
    # Receives only its organization's events, and only its organization's keys see it.
    org_id: Mapped[str] = mapped_column(ForeignKey("organizations.id"), index=True)
    url: Mapped[str] = mapped_column(Text)
    description: Mapped[str] = mapped_column(String(200), default="")
    event_types: Mapped[list[str]] = mapped_column(JSON)
    secret: Mapped[str] = mapped_column(Text)  # sealed (`seal_secret`)
    previous_secret: Mapped[str | None] = mapped_column(Text, nullable=True)  # sealed too
    previous_secret_until: Mapped[datetime | None] = mapped_column(UTCDateTime(), nullable=True)
    disabled_at: Mapped[datetime | None] = mapped_column(UTCDateTime(), nullable=True)
    disabled_reason: Mapped[str | None] = mapped_column(String(200), nullable=True)
    failing_since: Mapped[datetime | None] = mapped_column(UTCDateTime(), nullable=True)
    created_by: Mapped[str] = mapped_column(String(24))
    created_at: Mapped[datetime] = mapped_column(UTCDateTime())
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime())

    def secrets_at(self, keys: Keyring, now: datetime) -> list[str]:
        """The secrets that sign now, in the clear: the current one, and the previous one in
        its grace."""
        return [open_secret(keys, self.id, stored) for stored in signing_secrets(self, now)]

    def current_secret(self, keys: Keyring) -> str:
        """The `whsec_` secret in the clear (to sign, or to show once to the caller)."""
        return open_secret(keys, self.id, self.secret)


class Delivery(Base):
    __tablename__ = "webhook_deliveries"

    id: Mapped[uuid.UUID] = mapped_column(Uuid, primary_key=True, default=uuid.uuid4)
    endpoint_id: Mapped[uuid.UUID] = mapped_column(
        ForeignKey("webhook_endpoints.id", ondelete="CASCADE")
    )
    event_seq: Mapped[int] = mapped_column(Integer)
    event_id: Mapped[str] = mapped_column(String(40))
    event_type: Mapped[str] = mapped_column(String(40))
    ordering_key: Mapped[str] = mapped_column(String(40))
    status: Mapped[DeliveryStatus] = mapped_column(enum_column(DeliveryStatus, 16))
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    next_attempt_at: Mapped[datetime] = mapped_column(UTCDateTime())
    lease_until: Mapped[datetime | None] = mapped_column(UTCDateTime(), nullable=True)
    last_attempt_at: Mapped[datetime | None] = mapped_column(UTCDateTime(), nullable=True)
    last_status_code: Mapped[int | None] = mapped_column(Integer, nullable=True)
    last_error: Mapped[str | None] = mapped_column(String(300), nullable=True)
    delivered_at: Mapped[datetime | None] = mapped_column(UTCDateTime(), nullable=True)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime())

    __table_args__ = (UniqueConstraint("endpoint_id", "event_seq"),)


# signing (Standard Webhooks, "Signature scheme")


def new_secret() -> str:
    return SECRET_PREFIX + base64.b64encode(secrets.token_bytes(24)).decode()


def _secret_context(endpoint_id: uuid.UUID) -> str:
    return f"webhook-secret:{endpoint_id}"


def seal_secret(keys: Keyring, endpoint_id: uuid.UUID, secret: str) -> str:
    """The secret as stored: wrapped under the master key, bound to its endpoint."""
    wrapped = keys.wrap(secret.encode(), _secret_context(endpoint_id))
    return SEALED_PREFIX + base64.b64encode(wrapped).decode()


def signing_secrets(endpoint: Endpoint, now: datetime) -> list[str]:
    """The stored (sealed) secrets that sign now: the current one, and the previous one in
    its grace."""
    out = [endpoint.secret]
    until = endpoint.previous_secret_until
    if endpoint.previous_secret and until is not None and now < until:
        out.append(endpoint.previous_secret)
    return out


def open_secret(keys: Keyring, endpoint_id: uuid.UUID, stored: str) -> str:
    """The secret in the clear (a row an older version stored in plaintext is read as is,
    until `do_seal_secrets` seals it); InvalidTag under a master key this server lacks."""
    if not is_sealed(stored):
        return stored
    wrapped = base64.b64decode(stored.removeprefix(SEALED_PREFIX))
    return keys.unwrap(wrapped, _secret_context(endpoint_id)).decode()


async def do_seal_secrets(db: Database, keys: Keyring, *, rewrap: bool = True) -> int:
    """Seal every stored secret under the current master key: those an older version kept in
    plaintext, and (`rewrap`) those under a previous master key, after a rotation. Returns
    how many were sealed; running it again finds none."""
    changed = 0
    async with db.session() as session:
        for endpoint in (await session.scalars(select(Endpoint))).all():
            context = _secret_context(endpoint.id)
            for column in ("secret", "previous_secret"):
                stored: str | None = getattr(endpoint, column)
                if stored is None:
                    continue
                if is_sealed(stored):
                    if not rewrap:
                        continue
                    wrapped = base64.b64decode(stored.removeprefix(SEALED_PREFIX))
                    if keys.unwrap_current(wrapped, context) is not None:
                        continue
                setattr(endpoint, column, seal_secret(keys, endpoint.id, open_secret(
                    keys, endpoint.id, stored)))
                changed += 1
    return changed


def sign(secret: str, msg_id: str, timestamp: int, body: bytes) -> str:
    key = base64.b64decode(secret.removeprefix(SECRET_PREFIX))
    content = f"{msg_id}.{timestamp}.".encode() + body
    digest = hmac.new(key, content, hashlib.sha256).digest()
    return "v1," + base64.b64encode(digest).decode()


def headers_for(
    secrets_now: Sequence[str], msg_id: str, timestamp: int, body: bytes
) -> dict[str, str]:
    return {
        "content-type": "application/json",
        "webhook-id": msg_id,
        "webhook-timestamp": str(timestamp),
        "webhook-signature": " ".join(sign(s, msg_id, timestamp, body) for s in secrets_now),
        "user-agent": "callgate-webhooks/1",
    }


def body_of(event: OutboxEvent) -> bytes:
    """The same bytes on every attempt: the payload as stored, compact JSON."""
    return json.dumps(event.payload, separators=(",", ":"), sort_keys=True).encode()


# safe targets


class UnsafeTarget(Exception):
    pass


def check_url(url: str, settings: Settings) -> str:
    """An endpoint URL callgate may send to (InvalidInput naming `url` otherwise)."""
    parts = urlsplit(url)
    allow = settings.webhook_allow_private_targets
    if parts.scheme != "https" and not (allow and parts.scheme == "http"):
        raise InvalidInput.field(("body", "url"), "must be an https:// URL")
    if not parts.hostname or parts.username or parts.password:
        raise InvalidInput.field(("body", "url"), "needs a host and no user info")
    with contextlib.suppress(ValueError):
        if not allow and not ipaddress.ip_address(parts.hostname).is_global:
            raise InvalidInput.field(("body", "url"), "must be a public address")
    if len(url) > 2000:
        raise InvalidInput.field(("body", "url"), "at most 2000 characters")
    return url


async def check_target(url: str, settings: Settings) -> None:
    """Every address the host resolves to is public (unless private targets are allowed)."""
    if settings.webhook_allow_private_targets:
        return
    parts = urlsplit(url)
    host, port = parts.hostname or "", parts.port or 443
    loop = asyncio.get_running_loop()
    try:
        infos = await loop.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except OSError as exc:
        raise UnsafeTarget(f"cannot resolve {host}: {exc}") from None
    for info in infos:
        address = ipaddress.ip_address(info[4][0])
        if not address.is_global:
            raise UnsafeTarget(f"{host} resolves to a non-public address")


def check_types(types: Sequence[str] | None) -> list[str]:
    if types is None:
        return []
    known = {t.value for t in EventType}
    for index, name in enumerate(types):
        if name not in known:
            raise InvalidInput.field(("body", "event_types", index), f"unknown event {name!r}")
    return sorted(set(types))


async def access_endpoint(
    session: AsyncSession, org_id: str, endpoint_id: uuid.UUID
) -> Endpoint:
    """The organization's endpoint; another organization's is not found."""
    endpoint = await session.get(Endpoint, endpoint_id, populate_existing=True)
    if endpoint is None or endpoint.org_id != org_id:
        raise NotFound(f"no webhook endpoint {endpoint_id}")
    return endpoint


def do_create_endpoint(
    session: AsyncSession, settings: Settings, keys: Keyring, *, org_id: str, url: str,
    description: str, event_types: Sequence[str] | None, created_by: str, now: datetime,
) -> Endpoint:
    endpoint_id = uuid.uuid4()
    endpoint = Endpoint(
        id=endpoint_id, org_id=org_id, url=check_url(url, settings), description=description,
        event_types=check_types(event_types),
        secret=seal_secret(keys, endpoint_id, new_secret()), created_by=created_by,
        created_at=now, updated_at=now,
    )
    session.add(endpoint)
    return endpoint


def do_rotate_secret(endpoint: Endpoint, settings: Settings, keys: Keyring, now: datetime) -> None:
    """A new secret; the old one keeps signing (next to it) for the grace period."""
    endpoint.previous_secret = endpoint.secret
    endpoint.previous_secret_until = now + timedelta(hours=settings.webhook_secret_grace_hours)
    endpoint.secret = seal_secret(keys, endpoint.id, new_secret())
    endpoint.updated_at = now


def do_disable(endpoint: Endpoint, now: datetime, reason: str) -> None:
    if endpoint.disabled_at is None:
        endpoint.disabled_at = now
        endpoint.disabled_reason = reason
    endpoint.updated_at = now


async def do_enable(session: AsyncSession, endpoint: Endpoint, now: datetime) -> None:
    """Enable the endpoint again; its pending deliveries are due at once (in order), not at
    the end of the back-off their last failures set (up to 8 h): whoever enables it has
    just fixed the receiver."""
    was_disabled = endpoint.disabled_at is not None
    endpoint.disabled_at = None
    endpoint.disabled_reason = None
    endpoint.failing_since = None
    endpoint.updated_at = now
    if was_disabled:
        await session.execute(
            sql_update(Delivery)
            .where(Delivery.endpoint_id == endpoint.id, Delivery.status == DeliveryStatus.PENDING)
            .values(next_attempt_at=now)
            .execution_options(synchronize_session=False)
        )


async def access_delivery(
    session: AsyncSession, endpoint_id: uuid.UUID, delivery_id: uuid.UUID
) -> Delivery:
    delivery = await session.get(Delivery, delivery_id, populate_existing=True)
    if delivery is None or delivery.endpoint_id != endpoint_id:
        raise NotFound(f"endpoint {endpoint_id} has no delivery {delivery_id}")
    return delivery


def do_replay(delivery: Delivery, now: datetime) -> None:
    """Send the delivery again (same `webhook-id`), as soon as its turn comes."""
    delivery.status = DeliveryStatus.PENDING
    delivery.next_attempt_at = now
    delivery.lease_until = None


async def get_endpoints(session: AsyncSession, org_id: str) -> list[Endpoint]:
    query = (
        select(Endpoint).where(Endpoint.org_id == org_id)
        .order_by(Endpoint.created_at, Endpoint.id)
    )
    return list((await session.scalars(query)).all())


async def get_deliveries(
    session: AsyncSession, endpoint_id: uuid.UUID, status: DeliveryStatus | None, limit: int
) -> list[Delivery]:
    query = select(Delivery).where(Delivery.endpoint_id == endpoint_id)
    if status is not None:
        query = query.where(Delivery.status == status)
    query = query.order_by(Delivery.event_seq.desc()).limit(limit)
    return list((await session.scalars(query)).all())
