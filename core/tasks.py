"""Stopping a service's background tasks: the one way every lifespan service does it."""

from __future__ import annotations

import asyncio
from collections.abc import Iterable
from typing import Any


async def stop_tasks(tasks: Iterable[asyncio.Task[Any] | None]) -> None:
    """Cancel the tasks and wait until each has ended. What they raise (their cancellation
    included) is theirs and dropped here; cancelling the caller still cancels the caller.
    Safe to call twice and with tasks that already ended (None is skipped)."""
    running = [task for task in tasks if task is not None]
    for task in running:
        task.cancel()
    if running:
        await asyncio.gather(*running, return_exceptions=True)
