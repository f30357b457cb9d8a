"""glibc's malloc thresholds fixed (core/heap.py): a large block freed no longer moves large
blocks after it into the heap, where their memory would stay after they are freed."""

from __future__ import annotations

import ctypes

from core.heap import fix_thresholds


class _MallInfo2(ctypes.Structure):
    _fields_ = [(name, ctypes.c_size_t) for name in (
        "arena", "ordblks", "smblks", "hblks", "hblkhd", "usmblks", "fsmblks", "uordblks",
        "fordblks", "keepcost",
    )]


def test_large_blocks_stay_mmapped_after_a_larger_one_was_freed() -> None:
    libc = ctypes.CDLL("libc.so.6")  # the images and this machine run glibc
    libc.malloc.restype = ctypes.c_void_p
    libc.malloc.argtypes = [ctypes.c_size_t]
    libc.free.argtypes = [ctypes.c_void_p]
    libc.mallinfo2.restype = _MallInfo2
    assert fix_thresholds(128)
    # Unfixed, freeing this 4 MiB block would raise the mmap threshold to 4 MiB.
    libc.free(libc.malloc(4 * 1024 * 1024))
    before = libc.mallinfo2().hblkhd
    block = libc.malloc(512 * 1024)
    try:
        assert libc.mallinfo2().hblkhd - before >= 512 * 1024  # its own mapping
    finally:
        libc.free(block)


def test_zero_keeps_glibc_defaults() -> None:
    assert not fix_thresholds(0)
