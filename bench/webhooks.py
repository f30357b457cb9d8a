"""Outgoing webhooks on PostgreSQL: events through the outbox to a local receiver.

A throwaway database; the receiver runs in its own process and notes when each message
arrives. callgate's side: each event is written to the outbox in its own transaction (as a
booking change would), then the sender (default settings: it looks for work every
`webhook_poll_interval_s`) dispatches, signs and POSTs it. Measured:
- throughput: BURST events waiting in the outbox (committed before the sender starts), from
  the sender's start to the last arrival;
- latency: PACED events at PACE per second, from each event's commit to its arrival.
Baseline, same run, same receiver: a plain `httpx` POST loop (one request after the other,
no database, no signature), its throughput and per-request time.
"""

from __future__ import annotations

import asyncio
import secrets
import shutil
import statistics
import sys
import tempfile
import time
import uuid
from datetime import UTC, datetime
from pathlib import Path

import httpx

from bench.privacy import admin, sqlalchemy_url
from core.migrate import upgrade
from core.outbox import BookingCancelled, do_write
from core.runtime import Runtime
from core.settings import Settings
from core.webhooks import do_create_endpoint
from core.webhooksender import Sender

BURST = 2000
PACED = 300
PACE = 50  # events per second
BOOKINGS = 50  # events spread over this many bookings (order is kept per booking)
ORG = "default"  # the endpoint's organization: the bookings are bare ids, not rows to look up


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


async def commit_event(runtime: Runtime, booking_id: uuid.UUID) -> tuple[str, float]:
    now = runtime.clock.now()
    async with runtime.db.session() as session:
        row = do_write(
            session, BookingCancelled(booking_id, "cancelled", now, now, 1), now, org_id=ORG
        )
    return row.id, time.time()


async def arrivals(base: str, want: set[str], limit_s: float = 300) -> dict[str, float]:
    deadline = time.monotonic() + limit_s
    async with httpx.AsyncClient() as client:
        while True:
            times: dict[str, float] = (await client.get(f"{base}/times")).json()
            if want <= times.keys():
                return times
            if time.monotonic() > deadline:
                raise RuntimeError(f"{len(want - times.keys())} events never arrived")
            await asyncio.sleep(0.2)


async def wait_up(base: str) -> None:
    async with httpx.AsyncClient() as client:
        for _ in range(200):
            try:
                await client.get(f"{base}/times")
                return
            except httpx.HTTPError:
                await asyncio.sleep(0.05)
    raise RuntimeError("receiver did not start")


async def baseline(base: str) -> tuple[float, list[float]]:
    body = b'{"type":"booking.cancelled","data":{}}'
    took: list[float] = []
    async with httpx.AsyncClient() as client:
        started = time.perf_counter()
        for _ in range(BURST):
            t0 = time.perf_counter()
            response = await client.post(
                f"{base}/hooks", content=body, headers={"x-id": secrets.token_hex(8)}
            )
            response.raise_for_status()
            took.append(time.perf_counter() - t0)
        total = time.perf_counter() - started
    return BURST / total, took


async def fill(runtime: Runtime, bookings: list[uuid.UUID]) -> set[str]:
    """BURST events already committed (in one transaction) before the sender starts."""
    now = runtime.clock.now()
    async with runtime.db.session() as session:
        rows = [
            do_write(session, BookingCancelled(bookings[i % BOOKINGS], "cancelled", now, now, 1),
                     now, org_id=ORG)
            for i in range(BURST)
        ]
    return {row.id for row in rows}


async def measure(runtime: Runtime, base: str) -> dict[str, float]:
    bookings = [uuid.uuid4() for _ in range(BOOKINGS)]
    waiting = await fill(runtime, bookings)
    started = time.time()
    async with Sender(runtime):
        times = await arrivals(base, waiting)
        burst_rate = BURST / (max(times[k] for k in waiting) - started)
        paced: dict[str, float] = {}
        for i in range(PACED):
            event_id, at = await commit_event(runtime, bookings[i % BOOKINGS])
            paced[event_id] = at
            await asyncio.sleep(1 / PACE)
        times = await arrivals(base, set(paced))
    latency = [times[k] - paced[k] for k in paced]
    return {
        "rate": burst_rate, "p50": percentile(latency, 0.5), "p99": percentile(latency, 0.99),
    }


async def run() -> str:
    name = f"cg_bench_{secrets.token_hex(4)}"
    folder = Path(tempfile.mkdtemp(prefix="cg-bench-webhooks-"))
    port = 20000 + secrets.randbelow(20000)
    base = f"http://127.0.0.1:{port}"
    receiver = await asyncio.create_subprocess_exec(sys.executable, "-m", "bench._receiver",
                                                    str(port))
    await admin(f'CREATE DATABASE "{name}"')
    runtime: Runtime | None = None
    try:
        await wait_up(base)
        await upgrade(sqlalchemy_url(name))
        settings = Settings(
            database_url=sqlalchemy_url(name), data_dir=folder, secret_key="s" * 40,
            master_key="a2V5a2V5a2V5a2V5a2V5a2V5a2V5a2V5a2V5a2V5a2U=", log_level="WARNING",
            webhook_allow_private_targets=True,
        )
        runtime = Runtime.open(settings)
        async with runtime.db.session() as session:
            do_create_endpoint(session, settings, runtime.keys, org_id=ORG, url=f"{base}/hooks",
                               description="bench",
                               event_types=None, created_by="bench", now=runtime.clock.now())
        ours = await measure(runtime, base)
        plain_rate, plain = await baseline(base)
    finally:
        if runtime is not None:
            await runtime.close()
        receiver.terminate()
        await receiver.wait()
        await admin(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        await asyncio.to_thread(shutil.rmtree, folder, True)
    poll_ms = Settings().webhook_poll_interval_s * 1000
    stamp = datetime.now(UTC).strftime("%H:%M")
    return "\n".join([
        "## Outgoing webhooks (PostgreSQL)",
        "",
        "| measure | callgate (outbox -> signed POST) | baseline: plain httpx POST loop "
        "(same run, same receiver) | ratio |",
        "|---|---|---|---|",
        f"| throughput: {BURST:,} waiting events of {BOOKINGS} bookings to the receiver "
        f"| {ours['rate']:,.0f} events/s | {plain_rate:,.0f} requests/s "
        f"| {ours['rate'] / plain_rate:.2f}x |",
        f"| p50 commit -> receiver, {PACED} events at {PACE}/s "
        f"| {ours['p50'] * 1000:,.1f} ms | {statistics.median(plain) * 1000:,.2f} ms "
        "(one request) | |",
        f"| p99 commit -> receiver | {ours['p99'] * 1000:,.1f} ms "
        f"| {percentile(plain, 0.99) * 1000:,.2f} ms | |",
        "",
        "callgate's figures include the outbox transaction, dispatch (one delivery row per "
        "endpoint), the lease, ordering per booking, the Standard Webhooks signature and the "
        "delivery's own bookkeeping; the baseline does none of that and would lose every "
        "request made while the receiver is down. At low load the commit that writes an "
        "event wakes the sender of its node (`core.outbox.on_outbox_commit`), so an event "
        "does not wait for the sender's idle poll (`webhook_poll_interval_s`, default "
        f"{poll_ms:.0f} ms), which finds what other processes wrote and retries that fall "
        "due; each send also opens the endpoint's signing secret, sealed under the master "
        "key. "
        f"Reproduce: `.venv/bin/python -m bench webhooks` (run at {stamp} UTC).",
    ])
