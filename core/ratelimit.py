"""Fixed-window counters for rate limits: in memory (one node) or in Redis (all nodes)."""

from __future__ import annotations

import math
import time
from collections import OrderedDict
from dataclasses import dataclass
from typing import Protocol

import redis.asyncio as aioredis


@dataclass(frozen=True)
class Verdict:
    allowed: bool
    count: int
    retry_after_s: int


class RateLimiter(Protocol):
    async def hit(self, key: str, limit: int, window_s: int) -> Verdict:
        """Count one event for `key`; allowed while the window's count is <= limit."""
        ...

    async def peek(self, key: str, limit: int, window_s: int) -> Verdict:
        """Whether one more event would be allowed, without counting it."""
        ...


class MemoryRateLimiter:
    """Counters of one node, at most `max_keys` of them: past that the least recently counted
    key is dropped (an LRU), so a flood of new keys forgets idle ones, never the busy ones."""

    def __init__(self, max_keys: int = 100_000) -> None:
        self._windows: OrderedDict[str, tuple[int, int]] = OrderedDict()
        self._max_keys = max_keys

    def _current(self, key: str, window_s: int) -> tuple[int, int, float]:
        now = time.monotonic()
        window = int(now // window_s)
        start, count = self._windows.get(key, (window, 0))
        if start != window:
            count = 0
        return window, count, now

    async def hit(self, key: str, limit: int, window_s: int) -> Verdict:
        window, count, now = self._current(key, window_s)
        count += 1
        self._windows[key] = (window, count)
        self._windows.move_to_end(key)
        while len(self._windows) > self._max_keys:
            self._windows.popitem(last=False)
        retry = math.ceil((window + 1) * window_s - now)
        return Verdict(count <= limit, count, max(retry, 1))

    async def peek(self, key: str, limit: int, window_s: int) -> Verdict:
        window, count, now = self._current(key, window_s)
        retry = math.ceil((window + 1) * window_s - now)
        return Verdict(count < limit, count, max(retry, 1))


class RedisRateLimiter:
    def __init__(self, client: aioredis.Redis, prefix: str) -> None:
        self._redis = client
        self._prefix = prefix

    def _key(self, key: str, window_s: int) -> tuple[str, int]:
        now = time.time()
        window = int(now // window_s)
        retry = max(math.ceil((window + 1) * window_s - now), 1)
        return f"{self._prefix}:rl:{key}:{window}", retry

    async def hit(self, key: str, limit: int, window_s: int) -> Verdict:
        rkey, retry = self._key(key, window_s)
        async with self._redis.pipeline(transaction=True) as pipe:
            pipe.incr(rkey)
            pipe.expire(rkey, window_s + 1)
            count, _ = await pipe.execute()
        return Verdict(int(count) <= limit, int(count), retry)

    async def peek(self, key: str, limit: int, window_s: int) -> Verdict:
        rkey, retry = self._key(key, window_s)
        raw = await self._redis.get(rkey)
        count = int(raw) if raw is not None else 0
        return Verdict(count < limit, count, retry)
