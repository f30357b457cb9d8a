"""A few asyncpg connections for the join path, without asyncpg's Pool.

See `Connections`: the join path's credential lookup is one autocommit statement with no session
state, so it needs none of a general pool's per-query work.
"""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import Awaitable, Callable
from typing import Any


class Connections:
    """At most `size` asyncpg connections, opened on first use and reused last-in first-out.
    asyncpg's own Pool costs about as much CPU per query as the query (timeouts, a shielded
    acquire, a reset round trip on release); one autocommit statement with no session state
    needs none of it. A connection whose query failed or was cancelled is dropped (its state
    is unknown); `expire()` drops every connection opened so far (after a database restart).
    """

    def __init__(self, connect: Callable[[], Awaitable[Any]], size: int) -> None:
        self._connect = connect
        self._idle: list[Any] = []
        self._spare = size  # how many more may be opened
        self._waiters: deque[asyncio.Future[Any]] = deque()
        self._generation = 0
        self._closed = False

    async def fetchrow(self, sql: str, *args: Any) -> Any:
        generation = self._generation
        conn = self._idle.pop() if self._idle else await self._take()
        try:
            record = await conn.fetchrow(sql, *args)
        except BaseException:
            self._drop(conn)
            raise
        self._give(conn, generation)
        return record

    async def _take(self) -> Any:
        while True:
            if self._closed:
                raise RuntimeError("the join connections are closed")
            if self._idle:
                return self._idle.pop()
            if self._spare > 0:
                self._spare -= 1
                try:
                    return await self._connect()
                except BaseException:
                    self._spare += 1
                    self._wake()
                    raise
            waiter: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
            self._waiters.append(waiter)
            try:
                conn = await waiter
            except BaseException:  # cancelled: pass on what was handed over meanwhile
                if waiter.done() and not waiter.cancelled() and waiter.exception() is None:
                    handed = waiter.result()
                    if handed is None:
                        self._wake()
                    else:
                        self._give(handed, self._generation)
                raise
            if conn is not None:
                return conn  # else a connection was dropped: its slot is free, go round

    def _give(self, conn: Any, generation: int) -> None:
        if self._closed or generation != self._generation or conn.is_closed():
            self._drop(conn)
            return
        while self._waiters:
            waiter = self._waiters.popleft()
            if not waiter.done():
                waiter.set_result(conn)
                return
        self._idle.append(conn)

    def _drop(self, conn: Any) -> None:
        conn.terminate()
        self._spare += 1
        self._wake()

    def _wake(self) -> None:
        while self._waiters:
            waiter = self._waiters.popleft()
            if not waiter.done():
                waiter.set_result(None)
                return

    def expire(self) -> None:
        self._generation += 1
        idle, self._idle = self._idle, []
        for conn in idle:
            self._drop(conn)

    async def close(self) -> None:
        self._closed = True
        idle, self._idle = self._idle, []
        for waiter in self._waiters:
            if not waiter.done():
                waiter.set_exception(RuntimeError("the join connections are closed"))
        await asyncio.gather(*(conn.close(timeout=5) for conn in idle), return_exceptions=True)
