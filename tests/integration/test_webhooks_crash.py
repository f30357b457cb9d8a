"""A real callgate process killed with SIGKILL in the middle of deliveries, then restarted:
every event still reaches the receiver, in order per booking, and what arrives twice arrives
under the same `webhook-id`."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest

from core.accounts import Scope, do_create_key
from core.database import Database
from tests.support.bookings import bearer, booking_body
from tests.support.liveserver import LiveServer, start_server
from tests.support.waiting import eventually
from tests.support.webhooks import Mode, Received, Receiver, first_seen

OVERRIDES: dict[str, Any] = {
    "webhook_allow_private_targets": True, "webhook_timeout_s": 2,
    "webhook_poll_interval_s": 0.05,
}


@pytest.fixture
def servers() -> Iterator[list[LiveServer]]:
    started: list[LiveServer] = []
    yield started
    for server in started:
        server.stop()


async def scheduler_key(database_url: str) -> str:
    db = Database(database_url)
    try:
        async with db.session() as session:
            _, key = await do_create_key(session, Scope.SCHEDULER, "crash", datetime.now(UTC))
    finally:
        await db.close()
    return key


async def test_deliveries_survive_a_sigkill_mid_delivery(
    pg_url: str, tmp_path: Path, servers: list[LiveServer]
) -> None:
    key = await scheduler_key(pg_url)
    receiver = Receiver(mode=Mode.HOLD)
    await receiver.start()
    try:
        node = await asyncio.to_thread(start_server, pg_url, tmp_path / "a", OVERRIDES)
        servers.append(node)
        async with httpx.AsyncClient(base_url=node.base_url, headers=bearer(key)) as api:
            endpoint = await api.post("/v1/webhooks/endpoints", json={"url": receiver.url})
            assert endpoint.status_code == 201, endpoint.text
            receiver.secrets.append(endpoint.json()["secret"])
            starts = datetime.now(UTC) + timedelta(days=1)
            bookings = []
            for _ in range(4):
                made = await api.post("/v1/bookings", json=booking_body(starts))
                assert made.status_code == 201
                bookings.append(made.json()["id"])
                cancelled = await api.delete(f"/v1/bookings/{made.json()['id']}")
                assert cancelled.status_code == 200

        async def in_flight() -> bool:
            return len(receiver.received) >= 1

        await eventually(in_flight, "in_flight")  # the receiver holds these requests open ...
        node.kill()  # ... and callgate dies before any answer
        receiver.mode = Mode.OK
        receiver.release.set()
        node = await asyncio.to_thread(start_server, pg_url, tmp_path / "b", OVERRIDES)
        servers.append(node)

        async def all_there() -> bool:
            return len(first_seen(receiver.received)) == 8

        await eventually(all_there, "all_there", 90)
    finally:
        await receiver.stop()
    got = first_seen(receiver.received)
    for booking_id in bookings:
        kinds = [r.type for r in got if r.data["booking_id"] == booking_id]
        assert kinds == ["booking.created", "booking.cancelled"]
    assert len(receiver.received) > len(got)  # the held ones came again ...
    by_id: dict[str, Received] = {}
    for item in receiver.received:  # ... as the same message under the same id
        assert by_id.setdefault(item.id, item) == item
    assert receiver.rejected == 0
