"""Signaling fan-out between nodes through the real Redis: what node A relays reaches node B
once, in order, in whichever frame shape A merged it into, and a lost Redis connection costs
at most what was on it, not every message after it."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import pytest
import redis.asyncio as aioredis

from core.bus import RedisBus
from core.events import RoomFrame, Topic
from signaling.fanout import RedisFanout, node_topic
from tests import support


@pytest.fixture
async def client() -> AsyncIterator[aioredis.Redis]:
    redis = aioredis.Redis.from_url(support.REDIS_URL)
    try:
        yield redis
    finally:
        await redis.aclose()


@pytest.fixture
async def writer(redis_prefix: str) -> AsyncIterator[aioredis.Redis]:
    """Node A's client, its connections named so that the test can drop only them (the
    Redis server is shared with other test runs)."""
    redis = aioredis.Redis.from_url(support.REDIS_URL, client_name=redis_prefix.replace(":", "-"))
    try:
        yield redis
    finally:
        await redis.aclose()


def delivered(frames: list[dict[str, object]]) -> list[tuple[str, str, str]]:
    """(room, to, text) of every signal in the frames, as a node's hub reads them."""
    out: list[tuple[str, str, str]] = []
    for frame in frames:
        if frame["kind"] == "signals":
            items = frame["items"]
            assert isinstance(items, list)
            out += [tuple(items[i:i + 3]) for i in range(0, len(items), 3)]  # type: ignore[misc]
        elif frame["kind"] == "batch":
            items = frame["items"]
            assert isinstance(items, list)
            out += [(i["room"], i["to"], i["text"]) for i in items if i["kind"] == "signal"]
        elif frame["kind"] == "signal":
            out.append((str(frame["room"]), str(frame["to"]), str(frame["text"])))
    return out


async def test_relayed_signals_arrive_once_in_order_and_survive_a_dropped_connection(
    client: aioredis.Redis, writer: aioredis.Redis, redis_prefix: str
) -> None:
    bus = RedisBus(client, redis_prefix)
    node_a = RedisFanout(writer, RedisBus(writer, redis_prefix), redis_prefix, "node-a", ttl_s=5)
    frames: list[dict[str, object]] = []
    everyone: list[dict[str, object]] = []

    async with bus.subscribe(node_topic("node-b"), Topic.ROOM.value) as subscription:

        async def read() -> None:
            async for event in subscription:
                assert isinstance(event, RoomFrame)
                assert event.frame["node"] == "node-a"
                (frames if event.topic == node_topic("node-b") else everyone).append(event.frame)

        reader = asyncio.create_task(read())
        try:
            # Many in one tick (one merged frame), a join for every node in between, more after.
            first = [("r1" if n % 2 else "r2", f"p{n}", f'{{"type":"signal","n":{n}}}')
                     for n in range(300)]
            for room, to, text in first[:150]:
                assert node_a.relay("node-b", room, to, text) is None
            await node_a.publish({"kind": "join", "room": "r1", "peer": {"id": "x"}})
            for room, to, text in first[150:]:
                node_a.relay("node-b", room, to, text)
            await support.eventually(lambda: len(delivered(frames)) == 300, "300 signals")
            assert delivered(frames) == first
            assert [f["kind"] for f in everyone] == ["join"]
            assert any(f["kind"] == "signals" for f in frames)

            # Redis drops the writer's connection: later signals go out on a new one.
            name = redis_prefix.replace(":", "-")
            ids = [c["id"] for c in await client.client_list() if c.get("name") == name]
            assert ids
            for killed in ids:
                await client.execute_command("CLIENT", "KILL", "ID", killed)
            later = [("r1", "p1", f'{{"n":{n}}}') for n in range(5)]

            async def all_later() -> bool:
                # Sent again at every check: what went out on the dropped connection is lost
                # (pub/sub is at most once), what follows must arrive.
                for room, to, text in later:
                    node_a.relay("node-b", room, to, text)
                return set(later) <= set(delivered(frames))

            await support.eventually(all_later, "signals after the connection was dropped")
            got = delivered(frames)
            assert got[:300] == first  # nothing of the first run twice
        finally:
            reader.cancel()
            await asyncio.gather(reader, return_exceptions=True)
            await node_a.close()
