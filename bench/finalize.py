"""Finishing WebM recordings (`media.finalize`): what giving a closed file its Duration and
Cues costs, per MiB, beside the baseline of re-sealing the same file unchanged (decrypt and
encrypt again, what crash recovery always did), measured in the same run on the same files.

Files are VP8 at 2.5 Mbit/s (640x480 pattern, a key frame a second) as the recorder writes
them, sealed under a data key; each size is finished three times and the median taken.
"""

from __future__ import annotations

import os
import statistics
import tempfile
import time
import tracemalloc
from pathlib import Path

from media.finalize import finalize_webm
from media.storage import LocalStore, decrypt, reseal
from media.webm import WebmVp8Writer
from tests.support.media import encode_vp8

MIB = 1 << 20
SIZES_MIB = (4, 16, 64)
ROUNDS = 3


def write_file(store: LocalStore, key: bytes, name: str, mib: int, frames: list[bytes]) -> Path:
    file = store.open_writer(name, key)
    writer = WebmVp8Writer(file)
    index = 0
    while file.size < mib * MIB:
        writer.write(frames[index % len(frames)], index * 3000)
        index += 1
    writer.close()
    return file.path


def timed(action: object) -> float:
    started = time.perf_counter()
    action()  # type: ignore[operator]
    return time.perf_counter() - started


async def run() -> str:
    frames = encode_vp8(60, keyframe_every=30, bit_rate=2_500_000)
    key = os.urandom(32)
    rows = []
    with tempfile.TemporaryDirectory() as folder:
        store = LocalStore(Path(folder))
        for mib in SIZES_MIB:
            finish, baseline = [], []
            for round_ in range(ROUNDS):
                path = write_file(store, key, f"b/{mib}-{round_}.webm.cgr", mib, frames)
                baseline.append(timed(lambda p=path: reseal(p, key, decrypt(p, key))))
                finish.append(timed(lambda p=path: finalize_webm(p, key)))
                path.unlink()
            path = write_file(store, key, f"b/{mib}-peak.webm.cgr", mib, frames)
            tracemalloc.start()  # a separate, untimed run: tracing slows allocations
            finalize_webm(path, key)
            peak = tracemalloc.get_traced_memory()[1] / MIB
            tracemalloc.stop()
            path.unlink()
            load = os.getloadavg()[0]
            f, b = statistics.median(finish), statistics.median(baseline)
            rows.append(
                f"| {mib} | {f * 1000:.0f} | {f * 1000 / mib:.1f} | {b * 1000 / mib:.1f} "
                f"| {f / b:.1f}x | {peak:.1f} | {load:.1f} |"
            )
    return "\n".join(
        [
            "## Finishing WebM recordings (Duration and Cues)",
            "",
            "When a video span closes (and when recovery salvages a crash-cut file) the file is",
            "remuxed once by `media.finalize` (PyAV, packets copied), in a worker thread,",
            "and sealed again. Baseline: re-sealing the same file unchanged.",
            "",
            "| file (MiB) | finish (ms) | finish (ms/MiB) | re-seal only (ms/MiB) "
            "| finish / re-seal | peak Python memory (MiB) | load (1 min) |",
            "|---|---|---|---|---|---|---|",
            *rows,
            "",
            "Memory while a file is finished (peak of Python allocations, tracemalloc): the",
            "header and the reserved Cues, and a chunk or two in flight; the input is decrypted",
            "as it is read, the clusters are sealed into a spill file as they are written and",
            "read back once. At most two files are finished at once per process.",
        ]
    )
