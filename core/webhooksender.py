"""The webhook sender: dispatch of the outbox into deliveries, and delivery with retries.

Split from core/webhooks.py (endpoints, deliveries, signing, safe targets), whose docstring
describes the guarantees: order per endpoint and booking, leases across nodes, retries with
backoff and jitter, no redirects, bounded answers.
"""

from __future__ import annotations

import asyncio
import contextlib
import email.utils
import random
import time
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from types import TracebackType

import httpx
import structlog
from cryptography.exceptions import InvalidTag
from sqlalchemy import or_, select
from sqlalchemy import update as sql_update
from sqlalchemy.ext.asyncio import AsyncSession
from sqlalchemy.orm import aliased

from core.bookings import Booking
from core.outbox import OutboxEvent, on_outbox_commit
from core.runtime import Runtime
from core.tasks import stop_tasks
from core.webhooks import (
    Delivery,
    DeliveryStatus,
    Endpoint,
    UnsafeTarget,
    body_of,
    check_target,
    do_disable,
    do_seal_secrets,
    headers_for,
    open_secret,
    signing_secrets,
)

log = structlog.get_logger(__name__)

UNREADABLE_SECRET = (  # the delivery's error text when this node cannot sign
    "the signing secret is sealed under a master key this node does not have "  # noqa: S105
    "(list it in CALLGATE_PREVIOUS_MASTER_KEYS)"
)
MAX_BODY = 64 * 1024  # what is read of a receiver's answer, at most
BATCH = 100
UNREADABLE_REMEMBERED = 1024  # sealed secrets this node found it cannot open, at most
PARALLEL = 32  # deliveries in flight per node (each to another endpoint or booking)
RETRYABLE = frozenset({408, 429})
FIRST_DELAY_S = 5.0
MAX_DELAY_S = 8 * 3600.0
MAX_RETRY_AFTER_S = 24 * 3600.0


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
        # Sealed secrets (as stored) this node's keys cannot open. Their deliveries are left
        # to a node that has the master key: not claimed, not charged an attempt, and the
        # endpoint not counted as failing. A re-sealed secret is another value, so it is
        # looked at again; a new master key needs a restart, which empties this.
        self._unreadable: set[str] = set()

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
        await stop_tasks([task])
        await self._client.aclose()

    def wake(self) -> None:
        """Look for work now (a change was just committed on this node); safe from any
        thread (a commit may run in a worker thread)."""
        if self._loop is not None:
            self._loop.call_soon_threadsafe(self._wake.set)

    async def _forever(self) -> None:
        try:  # secrets an older version stored in plaintext (core.webhooks)
            sealed = await do_seal_secrets(self._rt.db, self._rt.keys, rewrap=False)
            if sealed:
                log.info("webhooks.secrets_sealed", count=sealed)
        except Exception:  # the next start tries again; signing reads either form
            log.exception("webhooks.seal_failed")
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
        where = [
            Delivery.status == DeliveryStatus.PENDING,
            Delivery.next_attempt_at <= now,
            Endpoint.disabled_at.is_(None),
            ~blocked,
        ]
        if self._unreadable:
            # Both secrets that sign: the current one, and the previous one in its grace (a
            # receiver may still verify with it only, so signing without it would fail there).
            where.append(Endpoint.secret.not_in(self._unreadable))
            where.append(or_(
                Endpoint.previous_secret.is_(None), Endpoint.previous_secret_until.is_(None),
                Endpoint.previous_secret_until <= now,
                Endpoint.previous_secret.not_in(self._unreadable),
            ))
        async with self._rt.db.session() as session:
            query = (
                select(Delivery.id, Endpoint)
                .join(Endpoint, Endpoint.id == Delivery.endpoint_id)
                .where(*where).order_by(Delivery.event_seq).limit(BATCH)
            )
            candidates = (await session.execute(query)).all()
        due = [d for d, endpoint in candidates if self._can_open(endpoint, now)]
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

    def _can_open(self, endpoint: Endpoint, now: datetime) -> bool:
        """Whether this node can sign with every secret the endpoint signs with now (the
        current one, and the previous one in its grace); the first time it cannot, an error in
        the log names the endpoint (the operator lists the missing master key in
        CALLGATE_PREVIOUS_MASTER_KEYS)."""
        for stored in signing_secrets(endpoint, now):
            try:
                open_secret(self._rt.keys, endpoint.id, stored)
            except InvalidTag:
                if len(self._unreadable) >= UNREADABLE_REMEMBERED:
                    self._unreadable.clear()  # looked at again, and logged again
                self._unreadable.add(stored)
                log.error("webhooks.secret_unreadable", endpoint_id=str(endpoint.id),
                          error=UNREADABLE_SECRET)
                return False
        return True

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
        try:
            signing = endpoint.secrets_at(self._rt.keys, self._rt.clock.now())
        except InvalidTag:  # sealed under a master key this node lacks: another node may not
            log.error("webhooks.secret_unreadable", endpoint_id=str(endpoint.id))
            return Outcome(ok=False, retry=True, error=UNREADABLE_SECRET)
        headers = headers_for(signing, event.id, stamp, body)
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
            do_disable(endpoint, now, f"every delivery failed since {since}")

