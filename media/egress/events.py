"""The events egress control follows (`consent.changed`, `recording.switched`, from every
node): read as they come, each withdrawal's stop started the moment it arrives (the egresses
of that person and kind this node knows at once, as on the committing node), and each event
handled in order beside that. In order, because a grant handled before the withdrawal it
followed would leave a withdrawn-then-granted track unrecorded; the handling of a withdrawal
awaits its stop before it reconciles the room.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable

import structlog

from core.bus import BusEvent, Subscription, Topic
from core.events import ConsentChanged
from core.runtime import Runtime
from core.tasks import stop_tasks
from media.egress.withdrawals import Withdrawals, stops

log = structlog.get_logger(__name__)

Handler = Callable[[BusEvent], Awaitable[None]]
Queued = tuple[BusEvent, "asyncio.Task[None] | None"]


async def follow_events(runtime: Runtime, withdrawals: Withdrawals, handle: Handler) -> None:
    """Subscribe (again after a lost bus) and follow until cancelled."""
    topics = (Topic.CONSENT_CHANGED, Topic.RECORDING_CHANGED)
    while True:
        try:
            async with runtime.bus.subscribe(*topics) as events:
                await _follow(events, withdrawals, handle)
        except asyncio.CancelledError:
            raise
        except Exception:  # the bus went away; the audit keeps failing closed meanwhile
            log.warning("egress.bus_lost", exc_info=True)
            await asyncio.sleep(1.0)


async def _follow(events: Subscription, withdrawals: Withdrawals, handle: Handler) -> None:
    queue: asyncio.Queue[Queued] = asyncio.Queue()
    worker = asyncio.create_task(_in_order(queue, handle), name="egress-events-in-order")
    try:
        async for event in events:
            stop = None
            if isinstance(event, ConsentChanged) and stops(event.purpose, event.decision):
                stop = withdrawals.begin(
                    event.entry_id, event.booking_id, event.subject_id, event.purpose,
                    withdrawals.take_known(event.booking_id, event.subject_id, event.purpose),
                )
            queue.put_nowait((event, stop))
            if worker.done():  # it never ends by itself: surface what ended it
                worker.result()
    finally:
        await stop_tasks([worker])


async def _in_order(queue: asyncio.Queue[Queued], handle: Handler) -> None:
    while True:
        event, stop = await queue.get()
        try:
            if stop is not None:
                await asyncio.shield(stop)  # the withdrawal's stop first, then the room
            await handle(event)
        except asyncio.CancelledError:
            raise
        except Exception:  # one event's failure must not end the loop
            log.exception("egress.event_failed")
