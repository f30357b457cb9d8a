"""Room fan-out between callgate nodes, and who is present where.

With Redis configured, room events travel on the bus topic `room` (one channel, every node
reads it and keeps what concerns its own sockets), and presence is a Redis hash per room,
`<prefix>:sig:presence:<room>`, one field per person: the node holding their socket, their
name and role, and an expiry the node's heartbeat pushes forward. A node that dies stops
pushing; the survivors drop its entries once expired and announce those people gone.
Without Redis there is one node, and `LocalFanout` does nothing at all.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from collections import deque
from collections.abc import Coroutine, Iterable
from dataclasses import dataclass
from typing import Any, Protocol

import redis.asyncio as aioredis
import structlog
from redis.asyncio.connection import AbstractConnection as Connection

from core.bus import EventBus, RedisBus, Topic, encode
from core.events import RoomFrame
from signaling.protocol import Peer

log = structlog.get_logger(__name__)

BATCH = 64  # most runs (merged messages, one PUBLISH each) written at once
MERGE_BYTES = 256 * 1024  # a merged PUBLISH stays well under Redis' pub/sub output buffer limits

# Delete a presence field only while it still names this node: after a person moved to another
# node, the old node's late cleanup must not erase the new entry.
_DELETE_IF_MINE = """
local raw = redis.call('HGET', KEYS[1], ARGV[1])
if raw and cjson.decode(raw)['node'] == ARGV[2] then
  return redis.call('HDEL', KEYS[1], ARGV[1])
end
return 0
"""


class _Run:
    """Consecutive messages for one topic, sent as one PUBLISH: relayed signals as a flat list
    [room, to, text, room, ...] (`signals`), anything else as a list of frames."""

    __slots__ = ("channel", "items", "signals", "size", "topic")

    def __init__(self, topic: str, channel: str, signals: bool) -> None:
        self.topic = topic
        self.channel = channel
        self.signals = signals
        self.items: list[Any] = []
        self.size = 0


@dataclass(frozen=True)
class Presence:
    node: str
    peer: Peer


class Fanout(Protocol):
    node_id: str
    shared: bool  # True when other nodes exist behind the same rooms

    async def publish(self, data: dict[str, Any], node: str | None = None) -> None:
        """To every node, or only to `node` (its own channel)."""
        ...

    def relay(
        self, node: str, room: str, to: str, text: str
    ) -> Coroutine[Any, Any, None] | None:
        """A signal's text for `to`, whose socket `node` holds. Queued without a coroutine
        (this runs per relayed message); what is returned, if anything, the caller awaits."""
        ...

    async def present(self, entries: Iterable[tuple[str, Peer]]) -> None:
        """Record (room, peer) as present on this node, expiring after the TTL."""
        ...

    async def absent(self, room: str, peer_id: str) -> None: ...

    async def members(self, room: str) -> dict[str, Presence]:
        """Everyone present in `room` on any node, expired entries left out."""
        ...

    async def members_of(self, rooms: list[str]) -> dict[str, dict[str, Presence]]:
        """`members` of many rooms in one round trip."""
        ...

    async def close(self) -> None: ...


class LocalFanout:
    """One node: the hub's own memory is the whole truth."""

    shared = False

    def __init__(self, node_id: str) -> None:
        self.node_id = node_id

    async def publish(self, data: dict[str, Any], node: str | None = None) -> None:
        return None

    def relay(
        self, node: str, room: str, to: str, text: str
    ) -> Coroutine[Any, Any, None] | None:
        return None

    async def present(self, entries: Iterable[tuple[str, Peer]]) -> None:
        return None

    async def absent(self, room: str, peer_id: str) -> None:
        return None

    async def members(self, room: str) -> dict[str, Presence]:
        return {}

    async def members_of(self, rooms: list[str]) -> dict[str, dict[str, Presence]]:
        return {room: {} for room in rooms}

    async def close(self) -> None:
        return None


class RedisFanout:
    shared = True

    def __init__(
        self, client: aioredis.Redis, bus: EventBus, prefix: str, node_id: str, ttl_s: float
    ) -> None:
        self._redis = client
        self._bus = bus
        self._prefix = prefix
        self.node_id = node_id
        self._ttl_s = ttl_s
        self._delete = client.register_script(_DELETE_IF_MINE)
        self._outbox: deque[_Run] = deque()
        self._flusher: asyncio.Task[None] | None = None
        self._channels: dict[str, str] = {}  # topic -> its Redis channel
        self._channel_of = bus.channel if isinstance(bus, RedisBus) else str
        self._link: _Link | None = None  # the writer's own connection, made on first use

    def key(self, room: str) -> str:
        return f"{self._prefix}:sig:presence:{room}"

    async def publish(self, data: dict[str, Any], node: str | None = None) -> None:
        """Queue for the bus and return: one writer task sends what is queued in batches, so
        a busy node pays one Redis round trip per batch, not per message, and order is kept.
        Consecutive messages for the same topic go out as one message (`batch`, or `signals`
        for relayed signals: one PUBLISH, one decode on the receiving node), so the cost per
        relayed signal falls as the load rises."""
        topic = Topic.ROOM.value if node is None else node_topic(node)
        if not isinstance(self._bus, RedisBus):
            frame = {**data, "node": self.node_id}
            await self._bus.publish(RoomFrame.model_construct(channel=topic, frame=frame))
            return
        run = self._run(topic, signals=False)
        run.items.append(data)
        run.size += len(data.get("text", "")) + 100

    def relay(
        self, node: str, room: str, to: str, text: str
    ) -> Coroutine[Any, Any, None] | None:
        if not isinstance(self._bus, RedisBus):
            return self.publish({"kind": "signal", "room": room, "to": to, "text": text}, node)
        run = self._run(node_topic(node), signals=True)
        run.items += (room, to, text)
        run.size += len(text) + 100
        return None

    def _run(self, topic: str, *, signals: bool) -> _Run:
        """The run the next message for `topic` joins: the last one queued, or a new one."""
        outbox = self._outbox
        if outbox:
            last = outbox[-1]
            if last.topic == topic and last.signals is signals and last.size < MERGE_BYTES:
                return last
        channel = self._channels.get(topic)
        if channel is None:
            if len(self._channels) > 1000:  # (node ids change with every restart)
                self._channels.clear()
            channel = self._channels[topic] = self._channel_of(topic)
        run = _Run(topic, channel, signals)
        outbox.append(run)
        if self._flusher is None:
            self._flusher = asyncio.get_running_loop().create_task(self._flush())
        return run

    async def _flush(self) -> None:
        """Send the queued runs in order, up to BATCH at once; runs queued meanwhile go in
        the next write (a run leaves the outbox before it is encoded, so nothing joins it
        after)."""
        try:
            while self._outbox:
                count = min(len(self._outbox), BATCH)
                runs = [self._outbox.popleft() for _ in range(count)]
                try:
                    await self._send([("PUBLISH", run.channel, self._encode(run)) for run in runs])
                except Exception:  # pub/sub is at most once anyway; the heartbeat repairs presence
                    log.exception("signaling.publish_failed", count=count)
        finally:
            self._flusher = None

    async def _send(self, commands: list[tuple[str, str, str]]) -> None:
        """The commands on this fanout's own Redis connection (a client pipeline per batch,
        taking a pooled connection, building a pipeline object and resetting it, cost three
        times the CPU of the write and the read). The next batch is written without waiting
        for this one's answers: those are read by a task of their own, so a node's relayed
        signals never wait for Redis to be scheduled twice."""
        link = self._link
        if link is None or link.broken:
            link = self._link = _Link(self._redis.connection_pool.make_connection())  # type: ignore[no-untyped-call]
        await link.send(commands)

    def _encode(self, run: _Run) -> str:
        frame: dict[str, Any]
        if run.signals:
            # A flat list of strings: the cheapest JSON to write and to read (a dict per
            # signal cost 3 µs more per message).
            frame = {"kind": "signals", "node": self.node_id, "items": run.items}
        elif len(run.items) == 1:
            frame = {**run.items[0], "node": self.node_id}
        else:
            frame = {"kind": "batch", "node": self.node_id, "items": run.items}
        # Built here from our own frames: no validation on the relay's hot path.
        return encode(RoomFrame.model_construct(channel=run.topic, frame=frame))

    async def close(self) -> None:
        """Send what is still queued (a moment at most), then stop."""
        flusher = self._flusher
        if flusher is not None:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(flusher, 2)
        link, self._link = self._link, None
        if link is not None:
            await link.close()

    async def present(self, entries: Iterable[tuple[str, Peer]]) -> None:
        expires = time.time() + self._ttl_s
        keep_s = max(int(self._ttl_s * 4), 10)
        async with self._redis.pipeline(transaction=False) as pipe:
            count = 0
            for room, peer in entries:
                value = {"node": self.node_id, "peer": peer.model_dump(), "exp": expires}
                pipe.hset(self.key(room), peer.id, json.dumps(value))
                pipe.expire(self.key(room), keep_s)
                count += 1
            if count:
                await pipe.execute()

    async def absent(self, room: str, peer_id: str) -> None:
        await self._delete(keys=[self.key(room)], args=[peer_id, self.node_id])

    async def members(self, room: str) -> dict[str, Presence]:
        return (await self.members_of([room]))[room]

    async def members_of(self, rooms: list[str]) -> dict[str, dict[str, Presence]]:
        if not rooms:
            return {}
        async with self._redis.pipeline(transaction=False) as pipe:
            for room in rooms:
                pipe.hgetall(self.key(room))
            raws: list[dict[bytes, bytes]] = await pipe.execute()
        now = time.time()
        out: dict[str, dict[str, Presence]] = {}
        expired: dict[str, list[bytes]] = {}
        for room, raw in zip(rooms, raws, strict=True):
            out[room] = {}
            for field, value in raw.items():
                presence = _parse(value, now)
                if presence is None:
                    expired.setdefault(room, []).append(field)
                else:
                    out[room][presence.peer.id] = presence
        if expired:
            async with self._redis.pipeline(transaction=False) as pipe:
                for room, fields in expired.items():
                    pipe.hdel(self.key(room), *fields)  # type: ignore[arg-type]
                await pipe.execute()
        return out


class _Link:
    """One Redis connection written by the fanout's writer task and read by its own reader
    task: commands go out in order as they come, their answers are read as they arrive. An
    error on either side breaks the link (what was on it may be lost, as pub/sub allows);
    the next batch opens a new one."""

    def __init__(self, conn: Connection) -> None:
        self.conn = conn
        self.broken = False
        self._unread = 0
        self._reader: asyncio.Task[None] | None = None
        self._closing: asyncio.Task[None] | None = None

    async def send(self, commands: list[tuple[str, str, str]]) -> None:
        conn = self.conn
        try:
            await conn.send_packed_command(conn.pack_commands(commands), check_health=False)
        except BaseException:
            self._break()
            raise
        self._unread += len(commands)
        if self._reader is None:
            self._reader = asyncio.get_running_loop().create_task(self._read())

    async def _read(self) -> None:
        try:
            while self._unread and not self.broken:
                await self.conn.read_response()
                self._unread -= 1
        except Exception:
            log.warning("signaling.publish_unanswered", exc_info=True)
            self._break()
        finally:
            self._reader = None

    def _break(self) -> None:
        if not self.broken:
            self.broken = True
            self._closing = asyncio.get_running_loop().create_task(self.conn.disconnect())

    async def close(self) -> None:
        """Once every answer is in (a moment at most), disconnect."""
        reader = self._reader
        if reader is not None:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(reader, 2)
        self.broken = True
        with contextlib.suppress(Exception):
            await self.conn.disconnect()


def node_topic(node: str) -> str:
    """The bus topic only `node` reads: signals for the sockets it holds."""
    return f"{Topic.ROOM.value}.{node}"


def _parse(value: bytes, now: float) -> Presence | None:
    """A live presence entry, or None when expired or unreadable."""
    try:
        entry = json.loads(value)
        presence = Presence(str(entry["node"]), Peer.model_validate(entry["peer"]))
        fresh = float(entry["exp"]) > now
    except (ValueError, KeyError, TypeError):
        return None
    return presence if fresh else None
