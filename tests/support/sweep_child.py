"""A callgate node that dies mid-sweep (a subprocess of test_lifecycle_nodes.py).

It runs the real sweep, with its settings from `CALLGATE_*` and its clock at argv[1]; after
advancing the first due booking, still inside the sweep's transaction (rows locked, nothing
committed), it prints `locked <booking id>` and hangs until the test kills it.
"""

from __future__ import annotations

import asyncio
import sys
from datetime import datetime

from sqlalchemy.ext.asyncio import AsyncSession

from core.bookings import Booking
from core.bus import BusEvent
from core.clock import ManualClock
from core.runtime import Runtime
from core.settings import Settings
from signaling.lifecycle import Lifecycle


class Hanging(Lifecycle):
    async def advance(
        self, session: AsyncSession, booking: Booking, now: datetime
    ) -> list[BusEvent]:
        events = await super().advance(session, booking, now)
        await session.flush()  # the transition is written, not committed
        print(f"locked {booking.id}", flush=True)
        await asyncio.sleep(3600)
        return events


async def main() -> None:
    runtime = Runtime.open(Settings(), clock=ManualClock(datetime.fromisoformat(sys.argv[1])))
    await Hanging(runtime).sweep_once()


if __name__ == "__main__":
    asyncio.run(main())
