"""The event bus: how domains react to each other without importing each other.

Events are published only after the database commit that made them true. Embedded mode uses
an in-process bus; with Redis configured, a Redis pub/sub bus reaches every callgate node.
Delivery is at-most-once (pub/sub): consumers that must not miss a change (the consent gate)
also re-read the database, and fail closed while the bus is down.
"""

from __future__ import annotations

import asyncio
import contextlib
import enum
import json
from collections.abc import AsyncIterator, Iterable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Any, Protocol

import redis.asyncio as aioredis
import structlog

log = structlog.get_logger(__name__)


class Topic(enum.StrEnum):
    BOOKING_CREATED = "booking.created"
    BOOKING_UPDATED = "booking.updated"
    BOOKING_CANCELLED = "booking.cancelled"
    BOOKING_ENDED = "booking.ended"
    PARTICIPANT_JOINED = "participant.joined"
    PARTICIPANT_LEFT = "participant.left"
    CONSENT_CHANGED = "consent.changed"
    RECORDING_CHANGED = "recording.changed"
    ROOM = "room"  # signaling fan-out between nodes; the payload names the room
    JOB_PROGRESS = "job.progress"
    SUBJECT_ERASED = "subject.erased"
    SUBJECT_RESTRICTED = "subject.restricted"


@dataclass(frozen=True)
class Event:
    topic: str
    data: dict[str, Any] = field(default_factory=dict)

    def encode(self) -> str:
        return json.dumps({"topic": self.topic, "data": self.data}, separators=(",", ":"))

    @classmethod
    def decode(cls, raw: str | bytes) -> Event:
        obj = json.loads(raw)
        return cls(topic=str(obj["topic"]), data=dict(obj["data"]))


class Subscription(Protocol):
    def __aiter__(self) -> AsyncIterator[Event]: ...


class EventBus(Protocol):
    async def publish(self, event: Event) -> None: ...

    def subscribe(self, *topics: str) -> contextlib.AbstractAsyncContextManager[Subscription]:
        """Events of these topics published after entering; exact topic names."""
        ...

    async def ping(self) -> None:
        """Raise if the bus cannot currently deliver."""
        ...

    async def close(self) -> None: ...


class _QueueSubscription:
    def __init__(self, queue: asyncio.Queue[Event]) -> None:
        self._queue = queue

    async def __aiter__(self) -> AsyncIterator[Event]:
        while True:
            yield await self._queue.get()


class InProcessBus:
    """Delivers to subscribers of this process only (the embedded single-machine mode)."""

    def __init__(self, max_queue: int = 10_000) -> None:
        self._subs: dict[str, set[asyncio.Queue[Event]]] = {}
        self._max_queue = max_queue
        self._closed = False

    async def publish(self, event: Event) -> None:
        for queue in list(self._subs.get(event.topic, ())):
            if queue.full():
                log.warning("bus.subscriber_overflow", topic=event.topic)
                continue
            queue.put_nowait(event)

    @asynccontextmanager
    async def subscribe(self, *topics: str) -> AsyncIterator[Subscription]:
        queue: asyncio.Queue[Event] = asyncio.Queue(self._max_queue)
        for topic in topics:
            self._subs.setdefault(topic, set()).add(queue)
        try:
            yield _QueueSubscription(queue)
        finally:
            for topic in topics:
                self._subs.get(topic, set()).discard(queue)

    async def ping(self) -> None:
        if self._closed:
            raise ConnectionError("bus closed")

    async def close(self) -> None:
        self._closed = True


class _RedisSubscription:
    def __init__(self, pubsub: Any, prefix: str) -> None:
        self._pubsub = pubsub
        self._strip = len(prefix) + 1

    async def __aiter__(self) -> AsyncIterator[Event]:
        async for message in self._pubsub.listen():
            if message.get("type") != "message":
                continue
            yield Event.decode(message["data"])


class RedisBus:
    """Redis pub/sub: every node subscribed to a topic receives each event once."""

    def __init__(self, client: aioredis.Redis, prefix: str) -> None:
        self._redis = client
        self._prefix = prefix

    def channel(self, topic: str) -> str:
        return f"{self._prefix}:bus:{topic}"

    async def publish(self, event: Event) -> None:
        await self._redis.publish(self.channel(event.topic), event.encode())

    @asynccontextmanager
    async def subscribe(self, *topics: str) -> AsyncIterator[Subscription]:
        pubsub = self._redis.pubsub()
        await pubsub.subscribe(*(self.channel(t) for t in topics))
        try:
            yield _RedisSubscription(pubsub, self._prefix)
        finally:
            with contextlib.suppress(Exception):
                await pubsub.unsubscribe()
            await pubsub.aclose()  # type: ignore[no-untyped-call]

    async def ping(self) -> None:
        await self._redis.ping()

    async def close(self) -> None:
        """The Redis client is owned by the runtime, which closes it."""


async def publish_all(bus: EventBus, events: Iterable[Event]) -> None:
    """Publish events collected during a transaction, after it committed."""
    for event in events:
        try:
            await bus.publish(event)
        except Exception:  # a bus outage must not undo a committed change
            log.exception("bus.publish_failed", topic=event.topic)
