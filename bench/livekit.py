"""LiveKit mode withdrawal: from the commit of a withdrawal to the Egress stop request, beside
the built-in recorder's commit-to-file-closed measured in the same run.

callgate's real egress control (`media.egress.Egress`, the real `LiveGate`, the real ledger on
SQLite) speaks to the Egress stand-in (tests/standins/egress.py: Egress's Twirp API over HTTP
through the real `livekit-api` client), which notes when each StopEgress request arrives. Who
is in the room with which tracks is given to it directly (five people, audio and video each):
the withdrawal path asks LiveKit nothing before it stops. One node (in-process bus); two nodes
over Redis pub/sub, both running egress control as deployed (the withdrawal commits on A); and
the event path alone (A commits without egress control, B stops on hearing the event).

Each withdrawal is split where its time goes: commit -> StopEgress sent (the client called)
-> received by Egress; beside it, commit -> the stored egresses claimed (the `UPDATE ...
RETURNING` done), which the known egresses' stop does not wait for.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import os
import secrets
import tempfile
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any, cast

import asyncpg
from livekit import api as lk
from livekit.protocol import models
from livekit.protocol import room as lk_room

from bench.recording import (
    REDIS_URL,
    Sender,
    decide,
    node_settings,
    percentile,
    progress,
    seed_people,
    withdrawal_latency,
)
from consent.live import LiveGate
from consent.purposes import Decision, Purpose
from core.bookings import Booking, Participant
from core.migrate import upgrade
from core.runtime import Runtime
from core.settings import MediaMode, Settings
from media.egress import Egress, records
from media.recorder import Recorder
from media.recordings import TrackKind
from tests.standins.egress import EgressStandIn
from tests.support.databases import drop_pg, make_pg_template, pg_url
from tests.support.recording import withdrawal_commits

WITHDRAWALS = 30
PEOPLE = 5
KEY, SECRET = "APIbench", "bench-secret-" + "b" * 32


class _RoomService:
    """LiveKit's `ListParticipants` answer for the bench room: everyone with both tracks."""

    def __init__(self, people: list[Participant]) -> None:
        self._answer = lk_room.ListParticipantsResponse(participants=[
            models.ParticipantInfo(identity=str(p.id), tracks=[
                models.TrackInfo(sid=f"TR_{p.id.hex[:8]}_a", type=models.TrackType.AUDIO),
                models.TrackInfo(sid=f"TR_{p.id.hex[:8]}_v", type=models.TrackType.VIDEO),
            ])
            for p in people
        ])

    async def list_participants(self, _request: Any) -> lk_room.ListParticipantsResponse:
        return self._answer


class _Rooms:
    def __init__(self, people: list[Participant]) -> None:
        self.room = _RoomService(people)


def livekit_settings(base: Settings, egress_url: str, database_url: str | None = None) -> Settings:
    values = base.model_dump()
    values.update(
        media_mode=MediaMode.LIVEKIT, livekit_url=egress_url, livekit_api_key=KEY,
        livekit_api_secret=SECRET, secret_key=base.secret_key, master_key=base.master_key,
        egress_output_dir=base.data_dir / "egress",  # where the stand-in writes its files
        database_url=database_url or base.database_url,
    )
    return Settings(**values)


@dataclass
class Timings:
    """Wall-clock times of each withdrawal's steps (time.time(), seconds)."""

    total_ms: list[float] = field(default_factory=list)
    steps: dict[str, list[float]] = field(default_factory=dict)
    claims: list[tuple[float, float]] = field(default_factory=list)  # (started, done)
    sent: list[float] = field(default_factory=list)
    commits: list[float] = field(default_factory=list)

    def add(self, step: str, ms: float) -> None:
        self.steps.setdefault(step, []).append(ms)


@contextlib.contextmanager
def probed(timings: Timings) -> Iterator[None]:
    """Note when egress control claims the stored egresses (every node's statement)."""
    claim = records.take_over_person

    async def timed(
        db: Any, booking_id: uuid.UUID, subject_id: uuid.UUID, kind: TrackKind, at: datetime
    ) -> list[records.Taken]:
        started = time.time()
        ids = await claim(db, booking_id, subject_id, kind, at)
        if ids:  # the node whose statement moved the rows: it sends the stop
            timings.claims.append((started, time.time()))
        return ids

    records.take_over_person = timed  # type: ignore[assignment]
    try:
        yield
    finally:
        records.take_over_person = claim  # type: ignore[assignment]


def sending(api: lk.LiveKitAPI, timings: Timings) -> lk.LiveKitAPI:
    """`api`, noting when each StopEgress call starts (the request about to be written)."""
    service = api.egress
    stop = service.stop_egress

    async def timed(request: Any) -> Any:
        timings.sent.append(time.time())
        return await stop(request)

    service.stop_egress = timed  # type: ignore[method-assign]
    return api


@contextlib.asynccontextmanager
async def controlling(
    runtime: Runtime, egress_server: EgressStandIn, people: list[Participant], timings: Timings,
) -> AsyncIterator[tuple[Egress, LiveGate, Recorder]]:
    """One node's egress control, as the app runs it (gate, recording switch, Egress)."""
    async with (
        LiveGate(runtime) as gate,
        Recorder(runtime, gate=lambda: gate) as recorder,
        lk.LiveKitAPI(egress_server.url, KEY, SECRET) as egress_api,
        Egress(
            runtime, gate=lambda: gate, control=recorder, store=recorder.store,
            client=cast(lk.LiveKitAPI, _Rooms(people)),
            egress_client=sending(egress_api, timings),
        ) as egress,
    ):
        await gate.ensure_booking(people[0].booking_id)
        await _until(lambda: gate.healthy)  # the gate vouches for its answers only then
        yield egress, gate, recorder


async def egress_withdrawals(
    decider: Runtime, nodes: list[Runtime], egress_server: EgressStandIn,
    people: list[Participant],
) -> Timings:
    """Withdraw and grant again, alternating audio and video, while the others keep being
    recorded; ms from each withdrawal's commit to its StopEgress request arriving, by step."""
    subject, booking_id = people[0], people[0].booking_id
    timings = Timings()
    async with contextlib.AsyncExitStack() as stack:
        controls = [
            await stack.enter_async_context(controlling(node, egress_server, people, timings))
            for node in nodes
        ]
        egress, _, recorder = controls[0]
        stack.enter_context(probed(timings))
        await recorder.start(booking_id)
        async with nodes[0].db.session() as session:
            room = (await session.get(Booking, booking_id)).room_name  # type: ignore[union-attr]
        await egress.reconcile(room)
        await _until(lambda: len(egress_server.running()) == 2 * len(people))
        for i in range(WITHDRAWALS):
            purpose = Purpose.RECORDING_VIDEO if i % 2 == 0 else Purpose.RECORDING_AUDIO
            stops = len(egress_server.stop_requests)
            with withdrawal_commits() as committed:
                await decide(decider, subject.id, purpose, Decision.WITHDRAWN)
            await _until(lambda n=stops: len(egress_server.stop_requests) > n)
            if committed:
                at, received = committed[0], egress_server.stop_requests[stops][1]
                timings.total_ms.append(max(0.0, received - at) * 1000)
                sent = min((t for t in timings.sent if t >= at), default=None)
                if sent is not None:
                    timings.add("commit -> StopEgress sent", (sent - at) * 1000)
                    timings.add("sent -> received by Egress", max(0.0, received - sent) * 1000)
                timings.commits.append(at)
            await decide(decider, subject.id, purpose, Decision.GRANTED)
            await _until(lambda: len(egress_server.running()) == 2 * len(people))
        await recorder.stop(booking_id)
    # The claim may finish after the stop arrived (the known egresses' stop does not wait).
    for at, until in zip(timings.commits, [*timings.commits[1:], float("inf")], strict=True):
        claim = min(((a, b) for a, b in timings.claims if at <= a < until), default=None)
        if claim is not None:
            timings.add("beside it: commit -> stored egresses claimed (UPDATE ... RETURNING "
                        "done)", (claim[1] - at) * 1000)
    return timings


async def _until(check: Any, seconds: float = 10.0) -> None:
    deadline = time.monotonic() + seconds
    while not check():
        if time.monotonic() > deadline:
            raise RuntimeError("the egress stand-in never saw what the bench waited for")
        await asyncio.sleep(0.005)


async def run() -> str:
    secret = secrets.token_urlsafe(32)
    master = base64.b64encode(os.urandom(32)).decode()
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        async with EgressStandIn(KEY, SECRET, "http://127.0.0.1:9/unused") as egress_server:
            settings = livekit_settings(node_settings(folder, secret, master), egress_server.url)
            await upgrade(settings.database_url)
            runtime = Runtime.open(settings)
            try:
                async with LiveGate(runtime):  # publishes the notices people decide on
                    people = await seed_people(runtime, PEOPLE)
                progress("LiveKit withdrawals: SQLite, one node")
                one = await egress_withdrawals(runtime, [runtime], egress_server, people)
                progress("built-in withdrawals: SQLite, one node")
                builtin = await _builtin(runtime, people)
            finally:
                await runtime.close()
        # Egress of its own: egresses of the SQLite run are no concern of the PostgreSQL nodes.
        async with EgressStandIn(KEY, SECRET, "http://127.0.0.1:9/unused") as egress_server:
            on_pg = await _postgres(folder / "pg", secret, master, egress_server)
    return report(one, on_pg, builtin)


async def _postgres(
    folder: Path, secret: str, master: str, egress_server: EgressStandIn
) -> dict[str, Timings | None]:
    """One node, two nodes and the event path on PostgreSQL (what a fleet runs)."""
    try:
        name = await asyncio.to_thread(make_pg_template)  # a new, migrated database
    except (OSError, asyncpg.PostgresError):  # no PostgreSQL here: the report says so
        return {}
    url = pg_url(name)
    try:
        runtime = Runtime.open(livekit_settings(
            node_settings(folder, secret, master), egress_server.url, url))
        try:
            async with LiveGate(runtime):
                people = await seed_people(runtime, PEOPLE)
            progress("LiveKit withdrawals: PostgreSQL, one node")
            one = await egress_withdrawals(runtime, [runtime], egress_server, people)
        finally:
            await runtime.close()
        progress("LiveKit withdrawals: PostgreSQL, two nodes, both running egress control")
        two = await _two_nodes(folder, secret, master, egress_server, people, url, both=True)
        progress("LiveKit withdrawals: PostgreSQL, the event path (A commits, B stops)")
        event = await _two_nodes(folder, secret, master, egress_server, people, url)
        return {"one": one, "two": two, "event": event}
    finally:
        await drop_pg(name)


async def _two_nodes(
    folder: Path, secret: str, master: str, egress_server: EgressStandIn,
    people: list[Participant], database_url: str, *, both: bool = False,
) -> Timings | None:
    """Withdrawals committed on node A; egress control on A and B (`both`), or on B alone
    (the stop then comes from the event B hears over Redis)."""
    prefix = f"cgbench:{secrets.token_hex(4)}"
    node_a = Runtime.open(livekit_settings(
        node_settings(folder, secret, master, REDIS_URL, prefix), egress_server.url,
        database_url))
    node_b = Runtime.open(livekit_settings(
        node_settings(folder, secret, master, REDIS_URL, prefix), egress_server.url,
        database_url))
    try:
        await node_a.bus.ping()
    except Exception:  # no Redis here: the report says so
        await node_b.close()
        await node_a.close()
        return None
    try:
        nodes = [node_a, node_b] if both else [node_b]
        return await egress_withdrawals(node_a, nodes, egress_server, people)
    finally:
        await node_b.close()
        await node_a.close()


async def _builtin(runtime: Runtime, people: list[Participant]) -> dict[str, list[float]]:
    sender = await Sender.start()
    try:
        async with LiveGate(runtime) as gate:
            await gate.ensure_booking(people[0].booking_id)
            return await withdrawal_latency(runtime, runtime, gate, sender, people)
    finally:
        await sender.stop()


def _row(name: str, values: list[float] | None) -> str:
    if not values:
        return f"| {name} | not measured | | | |"
    return (
        f"| {name} | {len(values)} | {percentile(values, 0.5):.1f} | "
        f"{percentile(values, 0.99):.1f} | {max(values):.1f} |"
    )


def _steps(name: str, timings: Timings | None) -> list[str]:
    if timings is None:
        return []
    return [_row(f"{name}: {step}", values) for step, values in timings.steps.items()]


def report(
    one: Timings, on_pg: dict[str, Timings | None], builtin: dict[str, list[float]]
) -> str:
    load = os.getloadavg()[0]
    pg_one, two, event = on_pg.get("one"), on_pg.get("two"), on_pg.get("event")
    total = [
        _row("LiveKit, SQLite, one node: commit -> StopEgress received", one.total_ms),
        _row("LiveKit, PostgreSQL, one node", pg_one.total_ms if pg_one else None),
        _row("LiveKit, PostgreSQL, two nodes (both run egress control; commit on A)",
             two.total_ms if two else None),
        _row("LiveKit, PostgreSQL, event path (A commits, B hears it over Redis and stops)",
             event.total_ms if event else None),
        _row("built-in, SQLite, one node: commit -> file closed", builtin.get("stop_ms")),
    ]
    ratio = ""
    if one.total_ms and builtin.get("stop_ms"):
        builtin_p99 = percentile(builtin["stop_ms"], 0.99)
        sides = [
            f"{name} {percentile(t.total_ms, 0.99):.1f} ms"
            for name, t in (("SQLite one node", one), ("PostgreSQL one node", pg_one),
                            ("PostgreSQL two nodes", two))
            if t is not None and t.total_ms
        ]
        ratio = (
            f"p99 of the LiveKit stop: {', '.join(sides)}; built-in in the same run: "
            f"{builtin_p99:.1f} ms."
        )
    return "\n".join([
        "Withdrawal in LiveKit mode: from the commit of a withdrawal to callgate's StopEgress "
        "request reaching Egress (the stand-in's HTTP server notes its arrival), while four "
        "other people (audio and video each) keep being recorded; alternating audio and "
        "video. Beside it, the built-in recorder in the same run: commit to the file closed "
        "(its frames stop at the same moment). SQLite is the embedded single-machine mode, "
        "PostgreSQL what a fleet of nodes shares.",
        "",
        "| path | withdrawals | p50 (ms) | p99 (ms) | max (ms) |",
        "|---|---|---|---|---|",
        *total,
        "",
        ratio,
        "",
        "Where the time goes (each step's own percentiles; they do not add up to the total's):",
        "",
        "| step | withdrawals | p50 (ms) | p99 (ms) | max (ms) |",
        "|---|---|---|---|---|",
        *_steps("SQLite, one node", one),
        *_steps("PostgreSQL, one node", pg_one),
        *_steps("PostgreSQL, two nodes", two),
        *_steps("PostgreSQL, event path", event),
        "",
        "The node that commits a withdrawal starts the stop from the ledger writer's "
        "after-commit hook, before the `consent.changed` event is published: the egresses of "
        "that person and kind it knows (it started them or read them live) get their "
        "StopEgress at once, concurrently, on the client's kept-alive connection; beside it "
        "one statement (`UPDATE ... RETURNING` on the stored egresses) moves the person's live "
        "egresses of that kind to `ending` (the stored state says stopping), and any it did "
        "not know are stopped next. On SQLite every transaction takes the database's one "
        "write lock first (`BEGIN IMMEDIATE`), which under load can take hundreds of "
        "milliseconds, and on both databases the statement's commit waits for the write-ahead "
        "log to reach the disk, which the other work on this machine keeps busy (an empty "
        "transaction takes about a millisecond, this one tens to hundreds): the known "
        "egresses' stop does not wait for it. Other nodes start the "
        "same stop the moment the event arrives, ahead of "
        "their in-order handling of events (which awaits it before reconciling the room). In "
        "the two-node rows either node may have started an egress, so the committing node "
        "knows some and claims the rest first. What Egress does after the request (finishing "
        "the file) is Egress's time and is not counted; with the real Egress the request is "
        "answered once the pipeline is told to end, which is when capture stops. The built-in "
        "figure is measured in the same run, so both share the same minutes of machine load.",
        f"Load average at the end of the run: {load:.1f} on {os.cpu_count()} cores (shared).",
    ])
