"""Giving the C heap's free memory back to the system now and then (glibc's `malloc_trim`).

Python hands every object over 512 bytes (request bodies, SDP, media frames, JSON) to the C
allocator. glibc keeps what is freed for reuse and returns it to the system only from the top
of the heap, and only past a threshold it raises itself after large blocks were freed; free
pages between live blocks stay resident. In the soak (bench/soak.py, probed with
`CALLGATE_SOAK_PROBE=0`) the bytes in use by C allocations stayed flat at about 52 MiB while
the free bytes glibc kept grew from 10 to 18 MiB in three minutes, resident memory with them;
one `malloc_trim(0)` gave back 12-15 MiB, and fewer arenas (`MALLOC_ARENA_MAX=2`) changed
nothing. So every node trims periodically: the call releases every whole free page of every
arena (`madvise`), takes a few milliseconds, and is a no-op where the C library is not glibc.
"""

from __future__ import annotations

import asyncio
import ctypes
from collections.abc import Callable
from types import TracebackType

import structlog

from core.tasks import stop_tasks

log = structlog.get_logger(__name__)

Trim = Callable[[], object]


def glibc_trim() -> Trim | None:
    """`malloc_trim(0)` of this process's glibc, or None with another C library."""
    try:
        function = ctypes.CDLL("libc.so.6").malloc_trim
    except (OSError, AttributeError):  # musl, macOS: they return memory their own way
        return None
    function.argtypes = [ctypes.c_size_t]
    function.restype = ctypes.c_int
    return lambda: function(0)


class HeapTrim:
    """Trims the C heap every `interval_s` (0: never); enter it on the app lifespan."""

    def __init__(self, interval_s: float, trim: Trim | None = None) -> None:
        self._interval_s = interval_s
        self._trim = trim if trim is not None else glibc_trim()
        self._task: asyncio.Task[None] | None = None

    async def __aenter__(self) -> HeapTrim:
        if self._interval_s > 0 and self._trim is not None:
            self._task = asyncio.create_task(self._run(self._trim), name="heap-trim")
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await stop_tasks([self._task])

    async def _run(self, trim: Trim) -> None:
        while True:
            await asyncio.sleep(self._interval_s)
            try:
                trim()
            except Exception:  # never worth stopping the node for
                log.warning("heap.trim_failed", exc_info=True)
