"""A socket opened on the pre-join screen (`?hold=1`): connected, but nobody is admitted, no
ticket redeemed and nothing shown to the others until the page says `join` (the click)."""

from __future__ import annotations

import json
from typing import Any

from websockets.asyncio.client import ClientConnection

from core.runtime import Runtime
from tests.integration.test_signaling import (
    ORIGIN,
    closed_with,
    join,
    seeded,
    settings_overrides,
)
from tests.support.signaling import Seeded, open_socket, receive, ticket_for

__all__ = ["seeded", "settings_overrides"]  # fixtures shared with test_signaling


async def waiting(ws_base: str, runtime: Runtime, seeded: Seeded, index: int) -> ClientConnection:
    ticket = ticket_for(runtime.keys, seeded, seeded.people[index], runtime.clock.now())
    return await open_socket(ws_base, seeded.room, f"{ticket}&hold=1", ORIGIN)


async def next_after_ping(ws: ClientConnection) -> dict[str, Any]:
    await ws.send(json.dumps({"type": "ping"}))
    return await receive(ws)


async def test_a_waiting_socket_is_nobody_until_it_joins(
    ws_base: str, runtime: Runtime, seeded: Seeded
) -> None:
    client = await waiting(ws_base, runtime, seeded, 1)
    assert await next_after_ping(client) == {"type": "pong"}
    host = await join(ws_base, runtime, seeded, 0)
    welcome = await receive(host)
    assert welcome["peers"] == []  # the waiting client is not in the room
    assert await next_after_ping(host) == {"type": "pong"}  # and nobody was told of it

    await client.send(json.dumps({"type": "join"}))
    client_welcome = await receive(client)
    assert client_welcome["type"] == "welcome"
    assert [p["id"] for p in client_welcome["peers"]] == [str(seeded.host.id)]
    assert (await receive(host))["type"] == "peer-joined"
    await client.close()
    await host.close()


async def test_anything_but_join_or_ping_closes_it_and_the_ticket_stays_unused(
    ws_base: str, runtime: Runtime, seeded: Seeded
) -> None:
    ticket = ticket_for(runtime.keys, seeded, seeded.host, runtime.clock.now())
    early = await open_socket(ws_base, seeded.room, f"{ticket}&hold=1", ORIGIN)
    await early.send(json.dumps({"type": "signal", "to": "x", "payload": {}}))
    code, seen = await closed_with(early)
    assert (code, seen) == (1008, [])
    later = await open_socket(ws_base, seeded.room, ticket, ORIGIN)
    assert (await receive(later))["type"] == "welcome"
    await later.close()
