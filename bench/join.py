"""`POST /v1/join` on PostgreSQL through a real uvicorn (one worker), 32 concurrent clients.

Baseline in the same run: a bare loop of `livekit.api.AccessToken(...).to_jwt()`, the one
piece of work every LiveKit-mode join must do; the ratio says how much the rest (HTTP, the
indexed read, the window check, JSON) costs on top.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import gc
import os
import secrets
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

import aiohttp
import asyncpg
import httpx
from livekit import api as lk

from core.accounts import Caller, Scope
from core.bookings import Role
from core.migrate import upgrade
from core.runtime import Runtime
from core.settings import MediaMode, Settings
from signaling.bookings import BookingRequest, Person, do_create_booking
from signaling.credentials import join_credential
from signaling.livekit import room_grants

PG_DSN = os.environ.get("CALLGATE_TEST_PG_DSN", "postgresql://postgres@127.0.0.1:54329/postgres")
CONCURRENCY = 32
WARMUP_S = 2.0
MEASURE_S = 10.0
BOOKINGS = 32
LK_KEY, LK_SECRET = "APIbench", "bench-secret-" + "b" * 32
SECRET = "bench-server-secret-" + "s" * 32
MASTER = base64.b64encode(b"m" * 32).decode()


def _pg_url(name: str) -> str:
    base = PG_DSN.rsplit("/", 1)[0].replace("postgresql://", "postgresql+asyncpg://", 1)
    return f"{base}/{name}"


async def _admin(sql: str) -> None:
    conn = await asyncpg.connect(PG_DSN)
    try:
        await conn.execute(sql)
    finally:
        await conn.close()


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def _env(url: str, data_dir: Path) -> dict[str, str]:
    return {
        **os.environ,
        "CALLGATE_DATABASE_URL": url,
        "CALLGATE_DATA_DIR": str(data_dir),
        "CALLGATE_SECRET_KEY": SECRET,
        "CALLGATE_MASTER_KEY": MASTER,
        "CALLGATE_MEDIA_MODE": "livekit",
        "CALLGATE_LIVEKIT_URL": "http://127.0.0.1:9",
        "CALLGATE_LIVEKIT_API_KEY": LK_KEY,
        "CALLGATE_LIVEKIT_API_SECRET": LK_SECRET,
        "CALLGATE_LIVEKIT_RETRY_INTERVAL_S": "3600",
        "CALLGATE_LOG_LEVEL": "WARNING",
    }


async def _seed(url: str, data_dir: Path) -> list[str]:
    """Bookings running now; the join credentials of all their participants."""
    settings = Settings(
        database_url=url, data_dir=data_dir, secret_key=SECRET, master_key=MASTER,
        media_mode=MediaMode.LIVEKIT, livekit_url="http://127.0.0.1:9", livekit_api_key=LK_KEY,
        livekit_api_secret=LK_SECRET, log_level="WARNING",
    )
    runtime = Runtime.open(settings)
    caller = Caller(key_id="bench", scope=Scope.SCHEDULER)
    now = datetime.now(UTC)
    credentials: list[str] = []
    try:
        for index in range(BOOKINGS):
            request = BookingRequest(
                title=f"Bench {index}", language="en", starts_at=now - timedelta(minutes=5),
                ends_at=now + timedelta(hours=2),
                host=Person(external_id=f"h{index}", display_name="Host", adult=True),
                clients=[Person(external_id=f"c{index}-{n}", display_name=f"Client {n}",
                                adult=True) for n in range(7)],
            )
            booking, _ = await do_create_booking(runtime, caller, request)
            credentials += [join_credential(runtime.keys, p.id, 0) for p in booking.participants]
    finally:
        await runtime.close()
    return credentials


async def _wait_ready(base: str, process: asyncio.subprocess.Process) -> None:
    async with httpx.AsyncClient(base_url=base) as client:
        for _ in range(200):
            if process.returncode is not None:
                raise RuntimeError("uvicorn exited")
            try:
                if (await client.get("/healthz")).status_code == 200:
                    return
            except httpx.TransportError:
                pass
            await asyncio.sleep(0.1)
    raise RuntimeError("uvicorn did not become ready")


@dataclass
class Run:
    client: str
    latencies: list[float]
    errors: int
    server_cpu_s: float
    client_cpu_s: float = 0.0
    database_cpu_s: float = 0.0
    joins: int = 0  # all answered, warm-up included (the CPU counters run over both)

    @property
    def per_s(self) -> float:
        return len(self.latencies) / MEASURE_S


async def _hammer(
    send: Callable[[int, str], Awaitable[int]], credentials: list[str]
) -> Run:
    """CONCURRENCY workers joining in a loop; WARMUP_S unmeasured, then MEASURE_S measured."""
    latencies: list[float] = []
    errors = joins = 0
    measure_from = time.perf_counter() + WARMUP_S
    stop_at = measure_from + MEASURE_S

    async def worker(offset: int) -> None:
        nonlocal errors, joins
        n = offset
        while (sent := time.perf_counter()) < stop_at:
            status = await send(offset, credentials[n % len(credentials)])
            n += CONCURRENCY
            joins += 1
            if sent >= measure_from:
                latencies.append(time.perf_counter() - sent)
                errors += status != 200

    await asyncio.gather(*(worker(i) for i in range(CONCURRENCY)))
    return Run("", latencies, errors, 0.0, joins=joins)


async def _with_httpx(base: str, credentials: list[str]) -> Run:
    # One client (one connection) per worker: httpcore's pool scans every connection on
    # every request, which with 32 connections in one pool costs more than the join itself.
    async with contextlib.AsyncExitStack() as stack:
        clients = [
            await stack.enter_async_context(
                httpx.AsyncClient(base_url=base, timeout=30, limits=httpx.Limits(
                    max_connections=1, max_keepalive_connections=1))
            )
            for _ in range(CONCURRENCY)
        ]

        async def send(worker: int, credential: str) -> int:
            response = await clients[worker].post("/v1/join", json={"credential": credential})
            return response.status_code

        return await _hammer(send, credentials)


async def _with_aiohttp(base: str, credentials: list[str]) -> Run:
    connector = aiohttp.TCPConnector(limit=CONCURRENCY)
    async with aiohttp.ClientSession(base, connector=connector) as session:

        async def send(worker: int, credential: str) -> int:
            async with session.post("/v1/join", json={"credential": credential}) as response:
                await response.read()
                return response.status

        return await _hammer(send, credentials)


def _cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process (/proc/<pid>/stat, fields 14 and 15)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


async def _database_cpu(database: str) -> dict[int, float]:
    """CPU time of each PostgreSQL backend serving `database` (empty when it runs elsewhere)."""
    conn = await asyncpg.connect(PG_DSN)
    try:
        pids = await conn.fetch("SELECT pid FROM pg_stat_activity WHERE datname = $1", database)
    finally:
        await conn.close()
    seconds = {}
    for record in pids:
        with contextlib.suppress(OSError):
            seconds[record["pid"]] = _cpu_seconds(record["pid"])
    return seconds


def _spent(before: dict[int, float], after: dict[int, float]) -> float:
    """CPU seconds spent between two snapshots by the backends alive at the second."""
    return sum(cpu - before.get(pid, 0.0) for pid, cpu in after.items())


async def _measure(
    name: str, load: Callable[[str, list[str]], Awaitable[Run]], base: str,
    credentials: list[str], pid: int, database: str,
) -> Run:
    # The benchmark process imported the whole app to seed: keep its heap out of the
    # collector while measuring, so a full collection here is not counted as join latency.
    gc.collect()
    gc.freeze()
    backends = await _database_cpu(database)
    before, client = _cpu_seconds(pid), time.process_time()
    try:
        run = await load(base, credentials)
    finally:
        gc.unfreeze()
    run.client = name
    run.server_cpu_s = _cpu_seconds(pid) - before
    run.client_cpu_s = time.process_time() - client
    run.database_cpu_s = _spent(backends, await _database_cpu(database))
    return run


def _token_loop(seconds: float = 3.0) -> float:
    """Bare `AccessToken(...).to_jwt()` per second, as a LiveKit-mode join builds it."""
    room = f"cg-{secrets.token_urlsafe(24)}"
    count = 0
    started = time.perf_counter()
    while time.perf_counter() - started < seconds:
        (
            lk.AccessToken(LK_KEY, LK_SECRET)
            .with_identity(str(uuid.uuid4()))
            .with_name("Client 1")
            .with_grants(room_grants(Role.CLIENT, room))
            .with_ttl(timedelta(hours=1))
            .to_jwt()
        )
        count += 1
    return count / (time.perf_counter() - started)


HEADER = (
    "| client | joins/s | p50 | p99 | non-200 | server CPU/join | per free core | client "
    "CPU/join | PostgreSQL CPU/join | : tokens/s |\n|---|---|---|---|---|---|---|---|---|---|"
)


def _pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))] * 1000


async def run() -> str:
    load_before = os.getloadavg()[0]
    name = f"cg_bench_{secrets.token_hex(4)}"
    await _admin(f'CREATE DATABASE "{name}"')
    url = _pg_url(name)
    runs: list[Run] = []
    try:
        await upgrade(url)
        with tempfile.TemporaryDirectory() as tmp:
            data_dir = Path(tmp)
            credentials = await _seed(url, data_dir)
            port = _free_port()
            process = await asyncio.create_subprocess_exec(
                sys.executable, "-m", "uvicorn", "api.app:create_app", "--factory",
                "--host", "127.0.0.1", "--port", str(port), "--workers", "1",
                "--loop", "uvloop", "--http", "httptools",  # as `callgate serve` runs it
                "--no-access-log", "--log-level", "warning",
                env=_env(url, data_dir),
                stdout=subprocess.DEVNULL,
            )
            try:
                base = f"http://127.0.0.1:{port}"
                await _wait_ready(base, process)
                for label, load in (("httpx", _with_httpx), ("aiohttp", _with_aiohttp)):
                    runs.append(
                        await _measure(label, load, base, credentials, process.pid, name)
                    )
            finally:
                process.terminate()
                await asyncio.wait_for(process.wait(), 20)
    finally:
        await _admin(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    tokens_per_s = _token_loop()
    load_after = os.getloadavg()[0]
    rows = []

    def per_join_ms(seconds: float, r: Run) -> float:
        return seconds / max(r.joins, 1) * 1000

    for r in runs:
        cpu_ms = per_join_ms(r.server_cpu_s, r)
        rows.append(
            f"| {r.client} | {r.per_s:,.0f} | {_pct(r.latencies, 0.5):.1f} ms | "
            f"{_pct(r.latencies, 0.99):.1f} ms | {r.errors} | {cpu_ms:.2f} ms | "
            f"{1000 / cpu_ms if cpu_ms else 0:,.0f} | {per_join_ms(r.client_cpu_s, r):.2f} ms | "
            f"{per_join_ms(r.database_cpu_s, r):.2f} ms | {r.per_s / tokens_per_s:.3f} |"
        )
    best = max(runs, key=lambda r: r.per_s)
    goal = "met" if best.per_s >= 800 and _pct(best.latencies, 0.99) < 25 else "not met"
    table = "\n".join(rows)
    return f"""## Join (`POST /v1/join`, LiveKit mode, PostgreSQL)

One uvicorn worker (a separate process, uvloop + httptools, no access log) on a free loopback
port, PostgreSQL, {len(credentials)} participants of {BOOKINGS} running bookings; {CONCURRENCY}
concurrent clients in the benchmark process, {WARMUP_S:.0f} s warm-up then {MEASURE_S:.0f} s
measured, once driven by 32 httpx clients (one connection each) and once by one aiohttp
session (a lighter client: on two shared cores the load generator competes with the server).
Each join (`JoinFastPath`, ahead of FastAPI's routing, see docs/bookings.md): request id,
metrics and access log, the failure-limit check, one indexed read (credential hash ->
participant and booking columns, one round trip on the join path's own asyncpg connections),
the window check, one LiveKit token, JSON.
"server CPU/join" is the uvicorn process's CPU time divided by the joins it answered (warm-up
included, as the CPU counters are); "per free core" is its inverse (joins/s one worker would
serve with a core to itself); "client" and "PostgreSQL" are the load generator's and the
benchmark database's backends' CPU per join, which share the same two cores; ": tokens/s" is joins/s
divided by the baseline below.

{HEADER}
{table}

Baseline, same run: a bare `livekit.api.AccessToken(...).to_jwt()` loop made
{tokens_per_s:,.0f} tokens/s, so one join costs the server the CPU time of
{per_join_ms(best.server_cpu_s, best) / 1000 * tokens_per_s:.1f} bare tokens. Load average
(1 min): {load_before:.1f} before the run, {load_after:.1f} at its end, on {os.cpu_count()} cores
(other work on the machine shares them). With {CONCURRENCY} closed-loop clients the mean
latency is {CONCURRENCY} / throughput (Little's law), so p99 < 25 ms needs well over 1,300
joins/s.

Goal (>= 800 joins/s with p99 < 25 ms): **{goal}** (best run: {best.client},
{best.per_s:,.0f} joins/s, p99 {_pct(best.latencies, 0.99):.1f} ms).
"""
