"""Fixed thresholds for glibc's malloc, so the C heap does not grow under churn.

Python hands every object over 512 bytes (request bodies, SDP, media frames, TLS buffers of
database connections) to the C allocator. glibc serves blocks from 128 KiB up with their own
mmap, given back on free, but it raises that threshold to the size of each such block freed
(up to 32 MiB) and the heap's trim threshold to twice that: after the first freed 256 KiB
buffer, every buffer of that size comes from the heap, and free memory at the heap's top is
kept. In the soak (bench/soak.py) the C heap's bytes in use stayed flat at about 51 MiB while
the free bytes glibc kept grew from 10 to 20 MiB in three minutes, and resident memory with
them; one `malloc_trim(0)` at the end gave back 10-15 MiB. Fewer arenas
(`MALLOC_ARENA_MAX=2`) changed nothing, nor did trimming once a minute. Both thresholds fixed
at 128 KiB (setting them turns the adjustment off): resident memory stayed flat and the final
trim found 2 MiB to give back. `mallopt` is glibc's; elsewhere this does nothing.
"""

from __future__ import annotations

import ctypes

M_TRIM_THRESHOLD = -1  # glibc's malloc.h
M_MMAP_THRESHOLD = -3


def fix_thresholds(kib: int) -> bool:
    """Serve blocks of `kib` KiB and more by mmap and give back free heap tops over that
    size, from now on; False when `kib` is 0 or the C library is not glibc."""
    if kib <= 0:
        return False
    try:
        mallopt = ctypes.CDLL("libc.so.6").mallopt
    except (OSError, AttributeError):  # musl, macOS: they return memory their own way
        return False
    mallopt.argtypes = [ctypes.c_int, ctypes.c_int]
    mallopt.restype = ctypes.c_int
    size = kib * 1024
    return bool(mallopt(M_MMAP_THRESHOLD, size)) and bool(mallopt(M_TRIM_THRESHOLD, size))
