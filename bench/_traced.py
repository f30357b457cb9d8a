"""uvicorn with a memory probe, for the soak's leak hunt (`CALLGATE_SOAK_PROBE`); bench only.

`python -m bench._traced DIR FRAMES <uvicorn arguments>` runs uvicorn. Each SIGUSR1 appends
one line to `DIR/sizes.txt`: resident memory, glibc's own account of the C heap (`mallinfo2`:
bytes handed out, bytes held free, bytes in mmapped blocks), pymalloc's (arenas, bytes in
used blocks) and, once tracing, the bytes tracemalloc sees. With FRAMES > 0 the first SIGUSR1
also starts tracemalloc (not at start-up: under tracing the imports alone take a minute of
CPU) and each later one dumps a snapshot to `DIR/snap-N.pickle`. The loop's tasks, counted
by where they wait, go to `DIR/tasks-N.txt`. SIGUSR2 calls `malloc_trim(0)` and then writes a
line as SIGUSR1 does (how much of resident memory was free C heap glibc had kept).
The product carries no debug hook for this.
"""

from __future__ import annotations

import asyncio
import collections
import ctypes
import gc
import os
import re
import signal
import sys
import tempfile
import tracemalloc
from pathlib import Path
from types import FrameType

FIELDS = "n rss_kib traced c_used c_free c_mmap py_arenas py_used note"


class _MallInfo2(ctypes.Structure):
    _fields_ = [(name, ctypes.c_size_t) for name in (
        "arena", "ordblks", "smblks", "hblks", "hblkhd", "usmblks", "fsmblks", "uordblks",
        "fordblks", "keepcost",
    )]


_libc = ctypes.CDLL("libc.so.6")
_libc.mallinfo2.restype = _MallInfo2
_libc.malloc_trim.argtypes = [ctypes.c_size_t]


def _pymalloc() -> tuple[int, int]:
    """(arenas allocated now, bytes in used blocks) from `sys._debugmallocstats`, which
    prints to the C stderr: it is pointed at a file for the call."""
    with tempfile.TemporaryFile("w+") as out:
        sys.stderr.flush()
        saved = os.dup(2)
        os.dup2(out.fileno(), 2)
        try:
            sys._debugmallocstats()
        finally:
            os.dup2(saved, 2)
            os.close(saved)
        out.seek(0)
        text = out.read()
    arenas = re.search(r"# arenas allocated current\s*=\s*([\d,]+)", text)
    used = re.search(r"# bytes in allocated blocks\s*=\s*([\d,]+)", text)

    def number(found: re.Match[str] | None) -> int:
        return int(found.group(1).replace(",", "")) if found else -1

    return number(arenas), number(used)


def _tasks() -> str:
    """The event loop's tasks, counted by coroutine and the line each is waiting at."""
    try:
        tasks = asyncio.all_tasks(asyncio.get_running_loop())
    except RuntimeError:
        return ""
    where: collections.Counter[str] = collections.Counter()
    for task in tasks:
        coro = task.get_coro()
        name = getattr(coro, "__qualname__", repr(coro))
        stack = task.get_stack()
        at = f"{stack[-1].f_code.co_filename}:{stack[-1].f_lineno}" if stack else "?"
        where[f"{name} @ {at}"] += 1
    return "".join(f"{n:6d} {what}\n" for what, n in where.most_common(15))


def main() -> None:
    out = Path(sys.argv[1])
    frames = int(sys.argv[2])
    out.mkdir(parents=True, exist_ok=True)
    sizes = out / "sizes.txt"
    sizes.write_text(FIELDS + "\n")
    taken = 0

    def line(note: str) -> None:
        nonlocal taken
        if tracemalloc.is_tracing():
            gc.collect()  # only then: a full collection every probe would change what is measured
            tracemalloc.take_snapshot().dump(str(out / f"snap-{taken}.pickle"))
        traced = tracemalloc.get_traced_memory()[0] if tracemalloc.is_tracing() else -1
        status = Path("/proc/self/status").read_text()
        rss = int(re.search(r"VmRSS:\s+(\d+)", status).group(1))  # type: ignore[union-attr]
        info = _libc.mallinfo2()
        arenas, used = _pymalloc()
        (out / f"tasks-{taken}.txt").write_text(_tasks())
        with sizes.open("a") as file:
            file.write(
                f"{taken} {rss} {traced} {info.uordblks} {info.fordblks} {info.hblkhd} "
                f"{arenas} {used} {note}\n"
            )
        taken += 1

    def probe(signum: int, frame: FrameType | None) -> None:
        if frames and not tracemalloc.is_tracing():
            tracemalloc.start(frames)
        line("sample")

    def trim(signum: int, frame: FrameType | None) -> None:
        _libc.malloc_trim(0)
        line("after-trim")

    signal.signal(signal.SIGUSR1, probe)
    signal.signal(signal.SIGUSR2, trim)
    import uvicorn.main

    sys.argv = ["uvicorn", *sys.argv[3:]]
    uvicorn.main.main()


if __name__ == "__main__":
    main()
