"""Waiting for what a test observes: poll a condition until it holds, or fail at a deadline.

The deadline guards a hang, it is not a timing claim: under load the condition may take many
times longer than on a quiet machine, so the default is generous and a test never shortens it
to make a point about speed (that is bench/'s job).
"""

from __future__ import annotations

import asyncio
import inspect
import time
from collections.abc import Awaitable, Callable
from typing import Any

DEADLINE_S = 30.0
POLL_S = 0.02


async def eventually(
    check: Callable[[], Any | Awaitable[Any]],
    what: str,
    timeout_s: float = DEADLINE_S,
    *,
    in_thread: bool = False,
) -> None:
    """Return once `check()` is truthy (awaited if it returns an awaitable; run in a worker
    thread with `in_thread`, for checks that block, e.g. on S3); AssertionError naming `what`
    once `timeout_s` has passed."""
    deadline = time.monotonic() + timeout_s
    while True:
        result = await asyncio.to_thread(check) if in_thread else check()
        if inspect.isawaitable(result):
            result = await result
        if result:
            return
        if time.monotonic() >= deadline:
            raise AssertionError(f"never happened: {what}")
        await asyncio.sleep(POLL_S)


async def services_ready(services: Any) -> None:
    """Wait until the app's background services (`api.services.Services`) can answer, as a
    load balancer waits for a node: the consent gate has confirmed the database and the bus
    (until then it says no to everything, which a test asking right after start-up would
    misread)."""
    gate = services.gate
    if gate is not None:
        await eventually(lambda: gate.healthy, "the consent gate confirmed its state")
