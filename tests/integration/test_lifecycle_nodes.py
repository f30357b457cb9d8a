"""Two callgate nodes on one PostgreSQL database: every booking is advanced once, and a node
killed in the middle of a sweep leaves nothing half done (its rows go to the other node)."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
from collections import Counter
from datetime import timedelta
from pathlib import Path

import pytest
from fastapi import FastAPI
from sqlalchemy import select

from api.app import create_app
from api.services import Services
from core.bookings import Booking, BookingStatus
from core.clock import ManualClock
from core.outbox import OutboxEvent
from core.runtime import Runtime
from core.settings import Settings
from signaling.lifecycle import Lifecycle
from tests.support.signaling import add_booking
from tests.support.waiting import eventually

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture
def database_url(pg_url: str) -> str:
    """Row locks are what this is about: PostgreSQL only."""
    return pg_url


@pytest.fixture
def settings_overrides() -> dict[str, object]:
    return {"lifecycle_sweep_interval_s": 0.01}


async def seed(runtime: Runtime, count: int, starts_in: timedelta) -> list[str]:
    now = runtime.clock.now()
    async with runtime.db.session() as session:
        seeded = [
            await add_booking(
                session, runtime.keys, now, now + starts_in, timedelta(hours=1), 1, ()
            )
            for _ in range(count)
        ]
    return [str(s.booking_id) for s in seeded]


async def statuses(runtime: Runtime) -> Counter[BookingStatus]:
    async with runtime.db.session() as session:
        return Counter((await session.scalars(select(Booking.status))).all())


async def events(runtime: Runtime) -> Counter[tuple[str, str]]:
    async with runtime.db.session() as session:
        rows = (await session.execute(select(OutboxEvent.booking_id, OutboxEvent.type))).all()
    return Counter((str(booking), kind) for booking, kind in rows)


async def test_two_nodes_advance_every_booking_exactly_once(
    app: FastAPI, runtime: Runtime, settings: Settings, clock: ManualClock
) -> None:
    other = create_app(settings, clock=clock)
    async with other.router.lifespan_context(other):
        ids = await seed(runtime, 40, timedelta(hours=1))
        clock.advance(timedelta(hours=2, minutes=1))  # every window opened and closed

        async def all_closed() -> bool:
            return (await statuses(runtime))[BookingStatus.CLOSED] == len(ids)

        await eventually(all_closed, "all_closed", 60)
    seen = await events(runtime)
    for booking_id in ids:
        for kind in ("booking.opened", "booking.ended", "booking.closed"):
            assert seen[(booking_id, kind)] == 1, (booking_id, kind)
        assert seen[(booking_id, "participant.no_show")] == 2


@pytest.mark.parametrize("settings_overrides", [{"lifecycle_sweep_interval_s": 0}])
async def test_a_node_killed_mid_sweep_leaves_its_bookings_to_the_other(
    runtime: Runtime, services: Services, settings: Settings, clock: ManualClock
) -> None:
    (booking_id,) = await seed(runtime, 1, timedelta(minutes=5))  # its window is open now
    env = {k: v for k, v in os.environ.items() if not k.startswith("CALLGATE_")}
    env |= {
        "CALLGATE_DATABASE_URL": settings.database_url,
        "CALLGATE_DATA_DIR": str(settings.data_dir),
        "CALLGATE_SECRET_KEY": settings.secret_key.get_secret_value() if settings.secret_key
        else "",
        "CALLGATE_MASTER_KEY": settings.master_key.get_secret_value() if settings.master_key
        else "",
    }
    lifecycle = services.lifecycle
    assert isinstance(lifecycle, Lifecycle)
    child = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "tests.support.sweep_child", clock.now().isoformat(),
        cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
    )
    try:
        assert child.stdout is not None
        line = await asyncio.wait_for(child.stdout.readline(), 60)
        assert line.decode().split() == ["locked", booking_id]
        # Meanwhile this node sweeps past the locked booking instead of waiting for it ...
        await lifecycle.sweep_once()
        assert (await statuses(runtime))[BookingStatus.SCHEDULED] == 1
    finally:
        child.send_signal(signal.SIGKILL)
        await child.wait()
    # ... and once the node died (its transaction rolled back), takes it over.

    async def swept() -> bool:
        return await lifecycle.sweep_once() > 0

    await eventually(swept, "swept")
    assert (await statuses(runtime))[BookingStatus.OPEN] == 1
    assert (await events(runtime))[(booking_id, "booking.opened")] == 1
