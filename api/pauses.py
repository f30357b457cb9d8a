"""Where the event loop stands still, and the garbage collector's share of it.

Everything a node serves waits through a pause: a signaling socket's relay latency is the
relay's own work plus whatever held the loop when the message arrived (docs/performance.md,
"Signaling relay"). Two histograms in /metrics say how long and why:

- `callgate_event_loop_lag_seconds`: how late a timer due every `PROBE_S` fired, for any
  reason (a long callback, a collection, the machine lending the core to someone else);
- `callgate_gc_pause_seconds{generation}`: each cyclic garbage collection, timed from
  `gc.callbacks` (a collection of the oldest generation walks every tracked object).

Startup leaves every module, class and function of the app behind as long-lived objects the
collector would walk in each full collection, forever unchanged: `freeze_startup()` moves
them to the permanent generation once the lifespan has opened everything, and sets the
collector's thresholds for a process whose objects are mostly long-lived sockets.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import time
from types import TracebackType
from typing import Any

from prometheus_client import CollectorRegistry, Gauge, Histogram

from core.tasks import stop_tasks

PROBE_S = 0.01
THRESHOLDS = (10_000, 10, 100)
BUCKETS = (0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1.0)


def freeze_startup() -> int:
    """Collect once, then exempt everything alive from later collections (`gc.freeze`):
    what startup built lives as long as the process. Returns how many objects were frozen.

    Freezing leaves few long-lived objects to compare against, and CPython 3.11 runs a full
    collection once the objects promoted since the last one exceed a quarter of those: with
    the default thresholds (700, 10, 10) a node relaying 5,000 messages/s walked every
    socket's objects every second or two. `THRESHOLDS` collect the young generation every
    10,000 allocations (about a millisecond each) and consider a full collection only after
    100 collections of the middle one (minutes apart under that load). Refcounting frees
    everything else as before; only cyclic garbage waits longer."""
    gc.collect()
    gc.freeze()
    gc.set_threshold(*THRESHOLDS)
    return gc.get_freeze_count()


class Pauses:
    """Times collections and probes the loop while entered (`async with`, on a running loop)."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self.lag = Histogram(
            "callgate_event_loop_lag_seconds",
            f"How late a timer due every {PROBE_S * 1000:.0f} ms fired (the loop was held)",
            buckets=BUCKETS, registry=registry,
        )
        self.collections = Histogram(
            "callgate_gc_pause_seconds", "Cyclic garbage collections by generation",
            ["generation"], buckets=BUCKETS, registry=registry,
        )
        self.frozen = Gauge(
            "callgate_gc_frozen_objects", "Objects exempt from collection (frozen at startup)",
            registry=registry,
        )
        self.frozen.set_function(lambda: float(gc.get_freeze_count()))
        self._by_generation = [self.collections.labels(str(g)) for g in range(3)]
        self._started = 0.0
        self._probe: asyncio.Task[None] | None = None

    def _on_gc(self, phase: str, info: dict[str, Any]) -> None:
        if phase == "start":
            self._started = time.perf_counter()
        else:
            self._by_generation[info["generation"]].observe(time.perf_counter() - self._started)

    async def _run_probe(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            due = loop.time() + PROBE_S
            await asyncio.sleep(PROBE_S)
            self.lag.observe(max(0.0, loop.time() - due))

    async def __aenter__(self) -> Pauses:
        gc.callbacks.append(self._on_gc)
        self._probe = asyncio.get_running_loop().create_task(self._run_probe())
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        with contextlib.suppress(ValueError):
            gc.callbacks.remove(self._on_gc)
        probe, self._probe = self._probe, None
        await stop_tasks([probe])
