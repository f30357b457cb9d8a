"""Revocation that bites: from the API's answer to the close of the person's socket.

Two callgate nodes (uvicorn processes) share PostgreSQL and Redis. For each cause, COUNT
bookings each have their client's signaling socket open on node B; the cause happens on node
A one booking at a time (a scheduler revokes the link or cancels the booking, an admin erases
the person), and the time is taken from the moment the HTTP answer is read to the moment the
client sees the socket closed (with the `bye` before it). For the window's end, the time is
taken from the window's close (`ends_at`, no grace) to the socket's close. Goal: p99 < 1 s.
"""

from __future__ import annotations

import asyncio
import secrets
import statistics
import tempfile
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
from sqlalchemy import update
from websockets.asyncio.client import ClientConnection
from websockets.exceptions import ConnectionClosed

from core.accounts import Scope, do_create_key
from core.bookings import Participant
from core.database import Database
from core.purposes import Purpose
from core.runtime import build_keyring
from core.settings import Settings
from tests import support
from tests.support.liveserver import LiveServer, start_server
from tests.support.signaling import Seeded, add_booking, open_socket, receive, ticket_for

COUNT = 50  # bookings per cause
ORIGIN = "https://bench.callgate.test"
PURPOSES = (Purpose.RECORDING_AUDIO,)


def pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


async def closed(ws: ClientConnection) -> tuple[float, dict[str, Any] | None]:
    """When the server closed the socket (wall clock), and the last message before it."""
    last: dict[str, Any] | None = None
    try:
        while True:
            last = await receive(ws, wait_s=60)
    except ConnectionClosed:
        return time.time(), last


async def seed(url: str, settings: Settings, now: datetime, ends_in_s: list[float]) -> list[Seeded]:
    """One booking per entry, its window ending that many seconds from `now`; every client
    gets an external id of its own (so erasing one ends one socket)."""
    db = Database(url)
    keys = build_keyring(settings)
    try:
        async with db.session() as session:
            seeded = [
                await add_booking(
                    session, keys, now, now - timedelta(minutes=30),
                    timedelta(minutes=30, seconds=ends), 1, PURPOSES,
                )
                for ends in ends_in_s
            ]
        async with db.session() as session:
            for booking in seeded:
                await session.execute(
                    update(Participant).where(Participant.id == booking.client.id)
                    .values(external_id=f"bench-{booking.client.id}")
                )
    finally:
        await db.close()
    return seeded


async def api_keys(url: str, now: datetime) -> dict[Scope, str]:
    db = Database(url)
    try:
        async with db.session() as session:
            return {
                scope: (await do_create_key(session, scope, "bench", now))[1]
                for scope in (Scope.SCHEDULER, Scope.ADMIN)
            }
    finally:
        await db.close()


async def cause(api: httpx.AsyncClient, kind: str, booking: Seeded, keys: dict[Scope, str]) -> None:
    scheduler = {"Authorization": f"Bearer {keys[Scope.SCHEDULER]}"}
    admin = {"Authorization": f"Bearer {keys[Scope.ADMIN]}"}
    path = f"/v1/bookings/{booking.booking_id}"
    if kind == "revoke":
        answer = await api.post(
            f"{path}/participants/{booking.client.id}/revoke", headers=scheduler
        )
    elif kind == "erase":
        external = f"bench-{booking.client.id}"
        answer = await api.post(
            f"/v1/admin/subjects/{external}/erase", headers=admin, json={"confirm": external}
        )
    else:
        answer = await api.delete(path, headers=scheduler)
    if answer.status_code != 200:
        raise RuntimeError(f"{kind}: {answer.status_code} {answer.text}")


async def measure_cause(
    kind: str, seeded: list[Seeded], node_a: LiveServer, node_b: LiveServer,
    keys: dict[Scope, str], settings: Settings, requests: list[float],
) -> list[float]:
    """Per booking: close - answer (negative: closed before the answer was read); `requests`
    gets close - request sent."""
    ring = build_keyring(settings)
    latencies: list[float] = []
    async with httpx.AsyncClient(base_url=node_a.base_url, timeout=30) as api:
        for booking in seeded:
            ticket = ticket_for(ring, booking, booking.client, datetime.now(UTC))
            ws = await open_socket(node_b.ws_base, booking.room, ticket, ORIGIN)
            await receive(ws)  # welcome
            watcher = asyncio.create_task(closed(ws))
            sent = time.time()
            await cause(api, kind, booking, keys)
            answered = time.time()
            ended, last = await watcher
            if last is None or last.get("type") != "bye":
                raise RuntimeError(f"{kind}: no bye before the close ({last})")
            latencies.append(ended - answered)
            requests.append(ended - sent)
    return latencies


async def measure_window(
    seeded: list[Seeded], closes: list[datetime], node_b: LiveServer, settings: Settings
) -> list[float]:
    ring = build_keyring(settings)
    sockets = []
    for booking in seeded:
        ticket = ticket_for(ring, booking, booking.client, datetime.now(UTC))
        ws = await open_socket(node_b.ws_base, booking.room, ticket, ORIGIN)
        await receive(ws)
        sockets.append(ws)
    ends = await asyncio.gather(*(closed(ws) for ws in sockets))
    return [ended - close.timestamp() for (ended, _), close in zip(ends, closes, strict=True)]


async def run() -> str:
    template = support.make_pg_template()
    work = Path(tempfile.mkdtemp(prefix="cg-bench-access-"))
    servers: list[LiveServer] = []
    try:
        url = support.pg_url(template)
        shared = {
            "redis_url": support.REDIS_URL, "redis_prefix": f"cgbench:{secrets.token_hex(4)}",
            "allowed_origins": [ORIGIN], "signaling_idle_timeout_s": 900,
        }
        node_a = start_server(url, work / "a", shared)
        node_b = start_server(url, work / "b", shared)
        servers += [node_a, node_b]
        settings = node_a.settings
        now = datetime.now(UTC)
        keys = await api_keys(url, now)
        results: dict[str, list[float]] = {}
        sent: dict[str, list[float]] = {}
        for kind in ("revoke", "erase", "cancel"):
            seeded = await seed(url, settings, now, [3600.0] * COUNT)
            sent[kind] = []
            results[kind] = await measure_cause(
                kind, seeded, node_a, node_b, keys, settings, sent[kind]
            )
        start = datetime.now(UTC)
        offsets = [20.0 + 0.1 * i for i in range(COUNT)]  # after every socket is connected
        seeded = await seed(url, settings, start, offsets)
        closes = [start + timedelta(seconds=s) for s in offsets]
        results["window end"] = await measure_window(seeded, closes, node_b, settings)
    finally:
        for server in servers:
            server.stop()
        support.run_blocking(lambda: support.drop_pg(template))
    return report(results, sent)


def report(results: dict[str, list[float]], sent: dict[str, list[float]]) -> str:
    def ms(value: float) -> str:
        return f"{value * 1000:.1f}"

    rows = []
    for kind, values in results.items():
        since_sent = sent.get(kind)
        request = f"{ms(pct(since_sent, 0.99))}" if since_sent else "-"
        rows.append(
            f"| {kind} | {len(values)} | {ms(statistics.median(values))} "
            f"| {ms(pct(values, 0.99))} | {ms(max(values))} | {request} |"
        )
    worst = max(pct(values, 0.99) for values in results.values())
    verdict = "met" if worst < 1.0 else "NOT met"
    return "\n".join([
        "## Revocation that bites (`bench/access.py`)",
        "",
        "Two nodes sharing PostgreSQL and Redis; the person's socket on node B, the cause on",
        "node A (one booking at a time). Time from the API's answer (window end: from the",
        "window's close) to the person's socket closed after its `bye`, in ms; negative: the",
        "socket closed before the answer was read. Last column: p99 from the request sent.",
        "",
        "| cause | sockets | p50 ms | p99 ms | max ms | p99 ms from request |",
        "|---|---|---|---|---|---|",
        *rows,
        "",
        f"Goal p99 < 1,000 ms for every cause: {verdict} (worst p99 {worst * 1000:.1f} ms).",
    ])
