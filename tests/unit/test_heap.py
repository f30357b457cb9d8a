"""glibc's malloc thresholds fixed (core/heap.py): a large block freed no longer moves large
blocks after it into the heap, where their memory would stay after they are freed.

The allocations run in a fresh interpreter: glibc serves a large request from a free chunk
already in the heap when it has one, so in this (long-lived, shared) test process the outcome
would depend on what earlier tests left behind."""

from __future__ import annotations

import subprocess
import sys

from core.heap import fix_thresholds

PROBE = """
import ctypes
from core.heap import fix_thresholds

class MallInfo2(ctypes.Structure):
    _fields_ = [(name, ctypes.c_size_t) for name in (
        "arena", "ordblks", "smblks", "hblks", "hblkhd", "usmblks", "fsmblks", "uordblks",
        "fordblks", "keepcost",
    )]

libc = ctypes.CDLL("libc.so.6")  # the images and this machine run glibc
libc.malloc.restype = ctypes.c_void_p
libc.malloc.argtypes = [ctypes.c_size_t]
libc.free.argtypes = [ctypes.c_void_p]
libc.mallinfo2.restype = MallInfo2
if {fix}:
    assert fix_thresholds(128)
# Unfixed, freeing this 4 MiB block raises the mmap threshold to 4 MiB.
libc.free(libc.malloc(4 * 1024 * 1024))
before = libc.mallinfo2().hblkhd
block = libc.malloc(512 * 1024)
print(libc.mallinfo2().hblkhd - before)  # bytes newly mapped for the block
libc.free(block)
"""


def mapped_for_a_large_block(*, fixed: bool) -> int:
    done = subprocess.run(
        [sys.executable, "-c", PROBE.format(fix=fixed)],
        capture_output=True, text=True, check=True, timeout=60,
    )
    return int(done.stdout)


def test_large_blocks_stay_mmapped_after_a_larger_one_was_freed() -> None:
    assert mapped_for_a_large_block(fixed=True) >= 512 * 1024  # its own mapping


def test_unfixed_glibc_moves_them_into_the_heap() -> None:
    """What the fix is for: glibc's default moves the threshold up (so the probe can fail)."""
    assert mapped_for_a_large_block(fixed=False) == 0


def test_zero_keeps_glibc_defaults() -> None:
    assert not fix_thresholds(0)
