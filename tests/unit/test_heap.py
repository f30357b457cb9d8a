"""The node gives the C heap's free memory back on a schedule (core/heap.py): trims while
entered, stops when left, never with the interval 0, and a failing trim does not stop it."""

from __future__ import annotations

import asyncio
import ctypes

from core.heap import HeapTrim, glibc_trim
from tests.support.waiting import eventually


async def test_trims_every_interval_until_left() -> None:
    calls: list[int] = []
    async with HeapTrim(0.01, trim=lambda: calls.append(1)):
        await eventually(lambda: len(calls) >= 3, "three trims")
    seen = len(calls)
    await asyncio.sleep(0.05)
    assert len(calls) == seen


async def test_interval_zero_never_trims() -> None:
    calls: list[int] = []
    async with HeapTrim(0, trim=lambda: calls.append(1)):
        await asyncio.sleep(0.05)
    assert calls == []


async def test_a_failing_trim_is_tried_again() -> None:
    calls: list[int] = []

    def trim() -> None:
        calls.append(1)
        raise OSError("no")

    async with HeapTrim(0.01, trim=trim):
        await eventually(lambda: len(calls) >= 2, "a second trim after a failure")


def test_glibc_trim_returns_free_heap() -> None:
    trim = glibc_trim()
    assert trim is not None  # the images and this machine run glibc
    libc = ctypes.CDLL("libc.so.6")
    libc.malloc.restype = ctypes.c_void_p
    libc.free.argtypes = [ctypes.c_void_p]
    # Every other block freed: free pages between live blocks, which glibc keeps (it trims
    # only the top of the heap by itself); malloc_trim says 1 when it released memory.
    blocks = [libc.malloc(16_384) for _ in range(4_000)]
    try:
        for block in blocks[::2]:
            libc.free(block)
        assert trim() == 1
    finally:
        for block in blocks[1::2]:
            libc.free(block)
