"""LiveKit mode withdrawal: from the commit of a withdrawal to the Egress stop request, beside
the built-in recorder's commit-to-file-closed measured in the same run.

callgate's real egress control (`media.egress.Egress`, the real `LiveGate`, the real ledger on
SQLite) speaks to the Egress stand-in (tests/standins/egress.py: Egress's Twirp API over HTTP
through the real `livekit-api` client), which notes when each StopEgress request arrives. Who
is in the room with which tracks is given to it directly (five people, audio and video each):
the withdrawal path asks LiveKit nothing before it stops. One node (in-process bus), and two
(node A commits, node B stops, hearing of it over Redis pub/sub).
"""

from __future__ import annotations

import asyncio
import base64
import os
import secrets
import tempfile
import time
from pathlib import Path
from typing import Any, cast

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
from media.egress import Egress
from media.recorder import Recorder
from tests.standins.egress import EgressStandIn
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


def livekit_settings(base: Settings, egress_url: str) -> Settings:
    values = base.model_dump()
    values.update(
        media_mode=MediaMode.LIVEKIT, livekit_url=egress_url, livekit_api_key=KEY,
        livekit_api_secret=SECRET, secret_key=base.secret_key, master_key=base.master_key,
        egress_output_dir=base.data_dir / "egress",  # where the stand-in writes its files
    )
    return Settings(**values)


async def egress_withdrawals(
    decider: Runtime, runtime: Runtime, egress_server: EgressStandIn, people: list[Participant],
) -> list[float]:
    """Withdraw and grant again, alternating audio and video, while the others keep being
    recorded; ms from each withdrawal's commit to its StopEgress request arriving."""
    subject, booking_id = people[0], people[0].booking_id
    out: list[float] = []
    async with (
        LiveGate(runtime) as gate,
        Recorder(runtime, gate=lambda: gate) as recorder,
        lk.LiveKitAPI(egress_server.url, KEY, SECRET) as egress_api,
        Egress(
            runtime, gate=lambda: gate, control=recorder, store=recorder.store,
            client=cast(lk.LiveKitAPI, _Rooms(people)), egress_client=egress_api,
        ) as egress,
    ):
        await gate.ensure_booking(booking_id)
        await _until(lambda: gate.healthy)  # the gate vouches for its answers only then
        await recorder.start(booking_id)
        async with runtime.db.session() as session:
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
                out.append(max(0.0, egress_server.stop_requests[stops][1] - committed[0]) * 1000)
            await decide(decider, subject.id, purpose, Decision.GRANTED)
            await _until(lambda: len(egress_server.running()) == 2 * len(people))
        await recorder.stop(booking_id)
    return out


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
            base = node_settings(folder, secret, master)
            settings = livekit_settings(base, egress_server.url)
            await upgrade(settings.database_url)
            runtime = Runtime.open(settings)
            try:
                async with LiveGate(runtime):  # publishes the notices people decide on
                    people = await seed_people(runtime, PEOPLE)
                progress("LiveKit withdrawals: one node")
                one = await egress_withdrawals(runtime, runtime, egress_server, people)
                progress("LiveKit withdrawals: two nodes")
                two = await _two_nodes(folder, secret, master, egress_server, people)
                progress("built-in withdrawals: one node")
                builtin = await _builtin(runtime, people)
            finally:
                await runtime.close()
    return report(one, two, builtin)


async def _two_nodes(
    folder: Path, secret: str, master: str, egress_server: EgressStandIn,
    people: list[Participant],
) -> list[float] | None:
    prefix = f"cgbench:{secrets.token_hex(4)}"
    node_a = Runtime.open(livekit_settings(
        node_settings(folder, secret, master, REDIS_URL, prefix), egress_server.url))
    node_b = Runtime.open(livekit_settings(
        node_settings(folder, secret, master, REDIS_URL, prefix), egress_server.url))
    try:
        await node_a.bus.ping()
    except Exception:  # no Redis here: the report says so
        await node_b.close()
        await node_a.close()
        return None
    try:
        return await egress_withdrawals(node_a, node_b, egress_server, people)
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


def report(
    one: list[float], two: list[float] | None, builtin: dict[str, list[float]]
) -> str:
    load = os.getloadavg()[0]
    return "\n".join([
        "Withdrawal in LiveKit mode: from the commit of a withdrawal to callgate's StopEgress "
        "request reaching Egress (the stand-in's HTTP server notes its arrival), while four "
        "other people (audio and video each) keep being recorded; alternating audio and "
        "video. Beside it, the built-in recorder in the same run: commit to the file closed "
        "(its frames stop at the same moment).",
        "",
        "| path | withdrawals | p50 (ms) | p99 (ms) | max (ms) |",
        "|---|---|---|---|---|",
        _row("LiveKit, one node: commit -> StopEgress received", one),
        _row("LiveKit, two nodes over Redis: commit on A -> StopEgress from B", two),
        _row("built-in, one node: commit -> file closed", builtin.get("stop_ms")),
        "",
        "The LiveKit path does no LiveKit round trip before the stop: the `consent.changed` "
        "event names the person and purpose, one statement (`UPDATE ... RETURNING` on the "
        "stored egresses) claims the person's live egresses of that kind for this node, then "
        "one StopEgress each. It is not yet as fast as the built-in recorder: the built-in "
        "stop is an in-memory check at the next frame, while this one is a database write and "
        "an HTTP request, and events are handled in order on each node (a withdrawal waits for "
        "the reconcile of the event before it, so a grant handled out of order cannot leave a "
        "track unrecorded). What Egress does after the request (finishing the file) is "
        "Egress's time and is not counted; with the real Egress the request is answered once "
        "the pipeline is told to end, which is when capture stops.",
        f"Load average at the end of the run: {load:.1f} on {os.cpu_count()} cores (shared).",
    ])
