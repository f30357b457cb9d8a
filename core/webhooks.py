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
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import email.utils
import enum
import hashlib
import hmac
import ipaddress
import json
import random
import secrets
import socket
import time
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from types import TracebackType
from urllib.parse import urlsplit

import httpx
import structlog
from sqlalchemy import JSON, ForeignKey, Integer, String, Text, UniqueConstraint, Uuid, select
from sqlalchemy import update as sql_update
from sqlalchemy.ext.asyncio import AsyncSession
from sqlalchemy.orm import Mapped, aliased, mapped_column

from core.bookings import Booking
from core.database import Base, UTCDateTime, enum_column
from core.errors import InvalidInput, NotFound
from core.outbox import EventType, OutboxEvent, on_outbox_commit
from core.runtime import Runtime
from core.settings import Settings

log = structlog.get_logger(__name__)

SECRET_PREFIX = "whsec_"  # noqa: S105 (the prefix, not a secret)
MAX_BODY = 64 * 1024  # what is read of a receiver's answer, at most
BATCH = 100
PARALLEL = 32  # deliveries in flight per node (each to another endpoint or booking)
RETRYABLE = frozenset({408, 429})
FIRST_DELAY_S = 5.0
MAX_DELAY_S = 8 * 3600.0
MAX_RETRY_AFTER_S = 24 * 3600.0


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
    secret: Mapped[str] = mapped_column(Text)
    previous_secret: Mapped[str | None] = mapped_column(Text, nullable=True)
    previous_secret_until: Mapped[datetime | None] = mapped_column(UTCDateTime(), nullable=True)
    disabled_at: Mapped[datetime | None] = mapped_column(UTCDateTime(), nullable=True)
    disabled_reason: Mapped[str | None] = mapped_column(String(200), nullable=True)
    failing_since: Mapped[datetime | None] = mapped_column(UTCDateTime(), nullable=True)
    created_by: Mapped[str] = mapped_column(String(24))
    created_at: Mapped[datetime] = mapped_column(UTCDateTime())
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime())

    def secrets_at(self, now: datetime) -> list[str]:
        """The secrets that sign now: the current one, and the previous one in its grace."""
        out = [self.secret]
        if self.previous_secret and self.previous_secret_until and now < self.previous_secret_until:
            out.append(self.previous_secret)
        return out


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


# retries


def retry_delay(attempts: int, retry_after: float | None = None) -> float:
    """Seconds until the next try after `attempts` failed ones: 5 s, 20 s, 80 s, ... up to 8 h,
    each +-20 % at random (jitter, so failed receivers are not hit in step), and never
    sooner than the receiver's `Retry-After` (capped at 24 h)."""
    base: float = min(FIRST_DELAY_S * 4.0 ** max(attempts - 1, 0), MAX_DELAY_S)
    delay = base * random.uniform(0.8, 1.2)  # noqa: S311 (jitter, not a secret)
    if retry_after is not None:
        delay = max(delay, min(retry_after, MAX_RETRY_AFTER_S))
    return delay


def parse_retry_after(value: str | None, now: float) -> float | None:
    """RFC 9110 section 10.2.3: delay-seconds or an HTTP-date."""
    if not value:
        return None
    value = value.strip()
    if value.isdigit():
        return float(value)
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    return max(float(when.timestamp()) - now, 0.0)


@dataclass(frozen=True)
class Outcome:
    ok: bool
    retry: bool
    status: int | None = None
    error: str | None = None
    retry_after: float | None = None


async def attempt(
    client: httpx.AsyncClient, url: str, headers: dict[str, str], body: bytes, limit_s: float
) -> Outcome:
    """One POST: its outcome, reading at most MAX_BODY of the answer, following no redirect."""
    try:
        async with client.stream(
            "POST", url, content=body, headers=headers, timeout=limit_s, follow_redirects=False
        ) as response:
            read = 0
            async for chunk in response.aiter_bytes():
                read += len(chunk)
                if read >= MAX_BODY:
                    break
            status = response.status_code
            retry_after = parse_retry_after(response.headers.get("retry-after"), time.time())
    except httpx.TimeoutException:
        return Outcome(ok=False, retry=True, error="timeout")
    except httpx.HTTPError as exc:
        return Outcome(ok=False, retry=True, error=f"{type(exc).__name__}: {exc}"[:300])
    if 200 <= status < 300:
        return Outcome(ok=True, retry=False, status=status)
    retry = status >= 500 or status in RETRYABLE
    error = "redirect not followed" if 300 <= status < 400 else f"answered {status}"
    return Outcome(ok=False, retry=retry, status=status, error=error, retry_after=retry_after)


# endpoints


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
    session: AsyncSession, settings: Settings, *, org_id: str, url: str, description: str,
    event_types: Sequence[str] | None, created_by: str, now: datetime,
) -> Endpoint:
    endpoint = Endpoint(
        id=uuid.uuid4(), org_id=org_id, url=check_url(url, settings), description=description,
        event_types=check_types(event_types), secret=new_secret(), created_by=created_by,
        created_at=now, updated_at=now,
    )
    session.add(endpoint)
    return endpoint


def do_rotate_secret(endpoint: Endpoint, settings: Settings, now: datetime) -> None:
    """A new secret; the old one keeps signing (next to it) for the grace period."""
    endpoint.previous_secret = endpoint.secret
    endpoint.previous_secret_until = now + timedelta(hours=settings.webhook_secret_grace_hours)
    endpoint.secret = new_secret()
    endpoint.updated_at = now


def do_set_enabled(endpoint: Endpoint, enabled: bool, now: datetime, reason: str) -> None:
    if enabled:
        endpoint.disabled_at = None
        endpoint.disabled_reason = None
        endpoint.failing_since = None
    elif endpoint.disabled_at is None:
        endpoint.disabled_at = now
        endpoint.disabled_reason = reason
    endpoint.updated_at = now


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


async def _orgs_of(
    session: AsyncSession, events: Sequence[OutboxEvent]
) -> dict[uuid.UUID | None, str]:
    """The organization of each event's booking (an event goes to its organization only)."""
    ids = {e.booking_id for e in events if e.booking_id is not None and e.org_id is None}
    if not ids:
        return {}
    query = select(Booking.id, Booking.org_id).where(Booking.id.in_(ids))
    return {row.id: row.org_id for row in (await session.execute(query)).all()}


# the sender


class Sender:
    """Enter on the lifespan: dispatches the outbox and delivers, until closed."""

    def __init__(self, runtime: Runtime, client: httpx.AsyncClient | None = None) -> None:
        self._rt = runtime
        self._settings = runtime.settings
        self._client = client or httpx.AsyncClient(
            follow_redirects=False, limits=httpx.Limits(max_connections=PARALLEL * 2)
        )
        self._task: asyncio.Task[None] | None = None
        self._wake = asyncio.Event()
        self._unlisten: Callable[[], None] | None = None
        self._loop: asyncio.AbstractEventLoop | None = None

    async def __aenter__(self) -> Sender:
        self._loop = asyncio.get_running_loop()
        self._unlisten = on_outbox_commit(self._rt.db, self.wake)
        self._task = asyncio.create_task(self._forever(), name="webhook-sender")
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if self._unlisten is not None:
            self._unlisten()
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        await self._client.aclose()

    def wake(self) -> None:
        """Look for work now (a change was just committed on this node); safe from any
        thread (a commit may run in a worker thread)."""
        if self._loop is not None:
            self._loop.call_soon_threadsafe(self._wake.set)

    async def _forever(self) -> None:
        while True:
            busy = False
            try:
                busy = await self.run_once() > 0
            except asyncio.CancelledError:
                raise
            except Exception:  # a database outage must not end the sender
                log.exception("webhooks.pass_failed")
            if not busy:
                # asyncio.timeout, not wait_for: on Python 3.11 wait_for swallows a cancel that
                # lands as the wake fires, and the closing lifespan then waits for ever.
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(self._settings.webhook_poll_interval_s):
                        await self._wake.wait()
                self._wake.clear()

    async def run_once(self) -> int:
        """Dispatch new events and send what is due; how much was done."""
        dispatched = await self.dispatch()
        sent = await self.deliver_due()
        return dispatched + sent

    async def dispatch(self) -> int:
        now = self._rt.clock.now()
        async with self._rt.db.session() as session:
            query = (
                select(OutboxEvent).where(OutboxEvent.dispatched.is_(False))
                .order_by(OutboxEvent.seq).limit(BATCH).with_for_update(skip_locked=True)
            )
            events = list((await session.scalars(query)).all())
            if not events:
                return 0
            endpoints = list((await session.scalars(
                select(Endpoint).where(Endpoint.disabled_at.is_(None))
            )).all())
            orgs = await _orgs_of(session, events)
            for event in events:
                event.dispatched = True
                org = event.org_id or orgs.get(event.booking_id)
                for endpoint in endpoints:
                    if endpoint.org_id != org:
                        continue
                    if endpoint.event_types and event.type not in endpoint.event_types:
                        continue
                    session.add(Delivery(
                        id=uuid.uuid4(), endpoint_id=endpoint.id, event_seq=event.seq,
                        event_id=event.id, event_type=event.type,
                        ordering_key=str(event.booking_id or event.id),
                        status=DeliveryStatus.PENDING, attempts=0, next_attempt_at=now,
                        created_at=now,
                    ))
        return len(events)

    async def deliver_due(self) -> int:
        now = self._rt.clock.now()
        earlier = aliased(Delivery)
        blocked = (
            select(earlier.id).where(
                earlier.endpoint_id == Delivery.endpoint_id,
                earlier.ordering_key == Delivery.ordering_key,
                earlier.event_seq < Delivery.event_seq,
                earlier.status == DeliveryStatus.PENDING,
            ).exists()
        )
        async with self._rt.db.session() as session:
            query = (
                select(Delivery.id).join(Endpoint, Endpoint.id == Delivery.endpoint_id)
                .where(
                    Delivery.status == DeliveryStatus.PENDING,
                    Delivery.next_attempt_at <= now,
                    Endpoint.disabled_at.is_(None),
                    ~blocked,
                )
                .order_by(Delivery.event_seq).limit(BATCH)
            )
            due = list((await session.scalars(query)).all())
        claimed = await self._claim(due, now)
        if not claimed:
            return 0
        async with self._rt.db.session() as session:
            rows = (await session.execute(
                select(Delivery, Endpoint, OutboxEvent)
                .join(Endpoint, Endpoint.id == Delivery.endpoint_id)
                .join(OutboxEvent, OutboxEvent.seq == Delivery.event_seq)
                .where(Delivery.id.in_(claimed))
            )).all()
        gate = asyncio.Semaphore(PARALLEL)

        async def one(endpoint: Endpoint, event: OutboxEvent) -> Outcome:
            async with gate:
                return await self._send(endpoint, event)

        outcomes = await asyncio.gather(*(one(e, ev) for _, e, ev in rows))
        await self._record([(d.id, o) for (d, _, _), o in zip(rows, outcomes, strict=True)])
        return len(rows)

    async def _claim(self, due: list[uuid.UUID], now: datetime) -> list[uuid.UUID]:
        """Compare-and-set the leases in one statement: exactly one node wins each due
        delivery (a delivery leased by another node, or just delivered, is not returned)."""
        if not due:
            return []
        lease = timedelta(seconds=self._settings.webhook_timeout_s * 2 + 5)
        async with self._rt.db.session() as session:
            result = await session.execute(
                sql_update(Delivery)
                .where(
                    Delivery.id.in_(due),
                    Delivery.status == DeliveryStatus.PENDING,
                    (Delivery.lease_until.is_(None)) | (Delivery.lease_until < now),
                )
                .values(lease_until=now + lease, attempts=Delivery.attempts + 1,
                        last_attempt_at=now)
                .returning(Delivery.id)
                .execution_options(synchronize_session=False)
            )
            return list(result.scalars().all())

    async def _send(self, endpoint: Endpoint, event: OutboxEvent) -> Outcome:
        body = body_of(event)
        # The signature's timestamp is the real time of the attempt: receivers compare it
        # with their own clock (replay protection), whatever clock schedules the retries.
        stamp = int(time.time())
        headers = headers_for(endpoint.secrets_at(self._rt.clock.now()), event.id, stamp, body)
        try:
            await check_target(endpoint.url, self._settings)
            return await attempt(
                self._client, endpoint.url, headers, body, self._settings.webhook_timeout_s
            )
        except UnsafeTarget as exc:
            return Outcome(ok=False, retry=True, error=str(exc)[:300])

    async def _record(self, outcomes: list[tuple[uuid.UUID, Outcome]]) -> None:
        """Every attempt's result, in one transaction."""
        now = self._rt.clock.now()
        async with self._rt.db.session() as session:
            ids = [delivery_id for delivery_id, _ in outcomes]
            deliveries = {
                d.id: d for d in await session.scalars(
                    select(Delivery).where(Delivery.id.in_(ids))
                    .execution_options(populate_existing=True)
                )
            }
            wanted = {d.endpoint_id for d in deliveries.values()}
            endpoints = {
                e.id: e for e in await session.scalars(
                    select(Endpoint).where(Endpoint.id.in_(wanted))
                )
            }
            for delivery_id, outcome in outcomes:
                delivery = deliveries.get(delivery_id)
                if delivery is None or delivery.lease_until is None:
                    continue  # replayed while in flight: the replay's send counts, not this one
                self._apply(delivery, endpoints.get(delivery.endpoint_id), outcome, now)
                if not outcome.ok:
                    log.info("webhooks.attempt_failed", delivery_id=str(delivery_id),
                             error=outcome.error)

    def _apply(
        self, delivery: Delivery, endpoint: Endpoint | None, outcome: Outcome, now: datetime
    ) -> None:
        delivery.lease_until = None
        delivery.last_status_code = outcome.status
        delivery.last_error = outcome.error
        if outcome.ok:
            delivery.status = DeliveryStatus.DELIVERED
            delivery.delivered_at = now
            if endpoint is not None:
                endpoint.failing_since = None
            return
        if outcome.retry:
            delay = retry_delay(delivery.attempts, outcome.retry_after)
            delivery.next_attempt_at = now + timedelta(seconds=delay)
        else:
            delivery.status = DeliveryStatus.FAILED
        if endpoint is not None:
            self._failing(endpoint, now)

    def _failing(self, endpoint: Endpoint, now: datetime) -> None:
        endpoint.failing_since = endpoint.failing_since or now
        limit = timedelta(days=self._settings.webhook_disable_after_days)
        if endpoint.disabled_at is None and now - endpoint.failing_since >= limit:
            since = endpoint.failing_since.isoformat()
            do_set_enabled(endpoint, False, now, f"every delivery failed since {since}")

