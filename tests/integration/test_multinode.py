"""Two callgate processes sharing PostgreSQL and Redis behave as one signaling service."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import httpx
import pytest

from core.database import Database
from core.runtime import build_keyring
from tests import support
from tests.support.liveserver import LiveServer, start_server
from tests.support.signaling import (
    open_socket,
    receive,
    receive_type,
    seed_booking,
    ticket_for,
    until_pong,
)

ORIGIN = "https://callgate.test"
PRESENCE_TTL_S = 1.5


@pytest.fixture
def nodes(pg_url: str, tmp_path: Path, redis_prefix: str) -> Iterator[list[LiveServer]]:
    overrides = {
        "redis_url": support.REDIS_URL,
        "redis_prefix": redis_prefix,
        "allowed_origins": [ORIGIN],
        "signaling_presence_ttl_s": PRESENCE_TTL_S,
    }
    started: list[LiveServer] = []
    try:
        for name in ("a", "b"):
            started.append(start_server(pg_url, tmp_path / name, overrides))
        yield started
    finally:
        for server in started:
            server.stop()


async def test_people_on_two_nodes_meet_and_a_dead_node_is_noticed(
    nodes: list[LiveServer], pg_url: str
) -> None:
    node_a, node_b = nodes
    keys = build_keyring(node_a.settings)
    clock_now = datetime.now(UTC)
    db = Database(pg_url)
    try:
        seeded = await seed_booking(db, keys, clock_now)
    finally:
        await db.close()
    host = await open_socket(
        node_a.ws_base, seeded.room, ticket_for(keys, seeded, seeded.host, clock_now), ORIGIN
    )
    assert (await receive(host))["peers"] == []
    client = await open_socket(
        node_b.ws_base, seeded.room, ticket_for(keys, seeded, seeded.client, clock_now), ORIGIN
    )
    welcome = await receive(client)
    assert [p["id"] for p in welcome["peers"]] == [str(seeded.host.id)]
    joined = await receive(host)
    assert joined["type"] == "peer-joined"
    assert joined["peer"]["id"] == str(seeded.client.id)

    offer = {"description": {"type": "offer", "sdp": "v=0"}}
    await host.send(json.dumps({"type": "signal", "to": str(seeded.client.id), "payload": offer}))
    assert await receive(client) == {"type": "signal", "from": str(seeded.host.id),
                                     "payload": offer}
    answer = {"description": {"type": "answer", "sdp": "v=0"}}
    await client.send(json.dumps({"type": "signal", "to": str(seeded.host.id),
                                  "payload": answer}))
    assert await receive(host) == {"type": "signal", "from": str(seeded.client.id),
                                   "payload": answer}
    # Presence agrees on both nodes and stays quiet across several heartbeats.
    await asyncio.sleep(PRESENCE_TTL_S * 2)
    assert await until_pong(host) == []
    assert await until_pong(client) == []

    node_a.kill()
    left = await receive(client, wait_s=PRESENCE_TTL_S * 6)
    assert left == {"type": "peer-left", "id": str(seeded.host.id)}
    await client.close()


async def test_a_burst_of_signals_and_the_recording_switch_reach_the_other_node(
    nodes: list[LiveServer], pg_url: str
) -> None:
    node_a, node_b = nodes
    keys = build_keyring(node_a.settings)
    now = datetime.now(UTC)
    db = Database(pg_url)
    try:
        seeded = await seed_booking(db, keys, now)
    finally:
        await db.close()
    host = await open_socket(
        node_a.ws_base, seeded.room, ticket_for(keys, seeded, seeded.host, now), ORIGIN
    )
    assert (await receive(host))["type"] == "welcome"
    client = await open_socket(
        node_b.ws_base, seeded.room, ticket_for(keys, seeded, seeded.client, now), ORIGIN
    )
    assert (await receive(client))["type"] == "welcome"
    assert (await receive(host))["type"] == "peer-joined"

    # Sent without waiting, so node A queues them together for node B: all arrive, in order.
    to = str(seeded.client.id)
    payloads = [{"candidate": {"candidate": f"candidate:{n}", "sdpMid": "0"}} for n in range(40)]
    await asyncio.gather(
        *(host.send(json.dumps({"type": "signal", "to": to, "payload": p})) for p in payloads)
    )
    assert [await receive(client) for _ in payloads] == [
        {"type": "signal", "from": str(seeded.host.id), "payload": p} for p in payloads
    ]

    # The host switches recording on through node A; the page on node B hears of it.
    headers = {"X-Join-Credential": seeded.host.credential}
    async with httpx.AsyncClient(base_url=node_a.base_url, headers=headers) as api:
        started = await api.post(f"/v1/bookings/{seeded.booking_id}/recording/start")
    assert started.status_code == 200, started.text
    assert await receive_type(client, "recording-state") == {"type": "recording-state", "on": True}
    await client.close()
    await host.close()
