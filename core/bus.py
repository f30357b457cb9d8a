"""The event bus: how domains react to each other without importing each other.

What travels is a typed event (`core.events`): publishers construct one, subscribers receive
one. Events are published only after the database commit that made them true. Embedded mode uses
an in-process bus; with Redis configured, a Redis pub/sub bus reaches every callgate node.
Delivery is at-most-once (pub/sub): consumers that must not miss a change (the consent gate)
also re-read the database, and fail closed while the bus is down.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import AsyncIterator, Iterable
from contextlib import asynccontextmanager
from typing import Any, Protocol

import redis.asyncio as aioredis
import structlog
from pydantic import ValidationError

from core.events import BusEvent, Topic, from_wire

log = structlog.get_logger(__name__)


__all__ = [
    "BusEvent", "EventBus", "InProcessBus", "RedisBus", "Subscription", "Topic", "decode",
    "encode", "publish_all",
]


def encode(event: BusEvent) -> str:
    """The compact JSON an event travels as on Redis."""
    return json.dumps({"topic": event.topic, "data": event.to_wire()}, separators=(",", ":"))


def decode(raw: str | bytes) -> BusEvent:
    obj = json.loads(raw)
    return from_wire(str(obj["topic"]), dict(obj["data"]))


class Subscription(Protocol):
    def __aiter__(self) -> AsyncIterator[BusEvent]: ...


class EventBus(Protocol):
    async def publish(self, event: BusEvent) -> None: ...

    def subscribe(self, *topics: str) -> contextlib.AbstractAsyncContextManager[Subscription]:
        """Events of these topics published after entering; exact topic names."""
        ...

    async def ping(self) -> None:
        """Raise if the bus cannot currently deliver."""
        ...

    async def close(self) -> None: ...


class _QueueSubscription:
    def __init__(self, queue: asyncio.Queue[BusEvent]) -> None:
        self._queue = queue

    async def __aiter__(self) -> AsyncIterator[BusEvent]:
        while True:
            yield await self._queue.get()


class InProcessBus:
    """Delivers to subscribers of this process only (the embedded single-machine mode)."""

    def __init__(self, max_queue: int = 10_000) -> None:
        self._subs: dict[str, set[asyncio.Queue[BusEvent]]] = {}
        self._max_queue = max_queue
        self._closed = False

    async def publish(self, event: BusEvent) -> None:
        for queue in list(self._subs.get(event.topic, ())):
            if queue.full():
                log.warning("bus.subscriber_overflow", topic=event.topic)
                continue
            queue.put_nowait(event)

    @asynccontextmanager
    async def subscribe(self, *topics: str) -> AsyncIterator[Subscription]:
        queue: asyncio.Queue[BusEvent] = asyncio.Queue(self._max_queue)
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

    async def __aiter__(self) -> AsyncIterator[BusEvent]:
        async for message in self._pubsub.listen():
            if message.get("type") != "message":
                continue
            try:
                event = decode(message["data"])
            except (ValueError, KeyError, ValidationError):  # a node speaking another version
                log.warning("bus.undecodable", channel=str(message.get("channel")))
                continue
            yield event


class RedisBus:
    """Redis pub/sub: every node subscribed to a topic receives each event once."""

    def __init__(self, client: aioredis.Redis, prefix: str) -> None:
        self._redis = client
        self._prefix = prefix

    def channel(self, topic: str) -> str:
        return f"{self._prefix}:bus:{topic}"

    async def publish(self, event: BusEvent) -> None:
        await self._redis.publish(self.channel(event.topic), encode(event))

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


async def publish_all(bus: EventBus, events: Iterable[BusEvent]) -> None:
    """Publish events collected during a transaction, after it committed."""
    for event in events:
        try:
            await bus.publish(event)
        except Exception:  # a bus outage must not undo a committed change
            log.exception("bus.publish_failed", topic=event.topic)
