"""Recording: CPU per recorded person-minute (passthrough vs aiortc's MediaRecorder), how many
people one process records without dropping frames, and withdrawal-to-stop latency.

Senders run in child processes (`bench/_sender.py`, pre-encoded 640x480 30 fps VP8 pattern +
20 ms Opus tone that aiortc only packetizes, paced in real time; the capacity steps spread the
people over several processes), so this process's CPU time is the receiving side only: SRTP,
RTP, jitter buffer, the consent gate and the writers. Consent goes through the real ledger
(`do_decide`) and the real `LiveGate`, on SQLite, in-process bus (two nodes: Redis).
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import os
import secrets
import sys
import tempfile
import time
import unittest.mock
import uuid
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import Any

from aiortc import RTCPeerConnection, RTCSessionDescription
from aiortc.contrib.media import MediaRecorder
from aiortc.mediastreams import MediaStreamTrack

from bench._sender import VIDEO_BIT_RATE
from consent.decisions import DecisionRequest, consent_overview, do_decide
from consent.ledger import Entry
from consent.live import LiveGate
from consent.purposes import Decision, Purpose
from consent.writer import ledger_writer
from core.bookings import Booking, BookingStatus, Participant, Role, RoomState
from core.bus import BusEvent, EventBus, Subscription, Topic
from core.events import ConsentChanged
from core.migrate import upgrade
from core.purposes import RecordingPolicy
from core.runtime import Runtime
from core.settings import Settings
from media.recorder import Recorder
from media.recorder.capture import HOLD_S
from media.recordings import TrackKind
from signaling.credentials import credential_hash, join_credential
from tests.support.recording import withdrawal_commits

ROOT = Path(__file__).resolve().parent.parent
SERVER_LOOP = True  # uvloop, as `callgate serve` runs the recorder (api.cli)
WARMUP_S = 3.0
CPU_WINDOW_S = 12.0
CAPACITY_WINDOW_S = 6.0
CAPACITY_STEPS = (10, 50, 60)  # 60: where one process starts to lose frames
SENDER_PROCESSES = 3  # more only crowd the same two cores
WITHDRAWALS = 24
DROP_LIMIT = 0.01
STEP_BUDGET_S = 600.0  # connecting 50 pages one after the other takes long on a busy host
PIPE_LIMIT = 1 << 24  # SDP offers of 30 pages on one JSON line
REDIS_URL = os.environ.get("CALLGATE_BENCH_REDIS_URL", "redis://127.0.0.1:6379/0")


class Sender:
    """The child processes holding the sending pages, people spread evenly over them (one
    Python process packetizing and encrypting for many people falls behind long before the
    recorder does)."""

    def __init__(self, processes: list[asyncio.subprocess.Process]) -> None:
        self._processes = processes
        self._seq = 0
        self._placed: list[int] = []  # people per process, of the last offer

    @classmethod
    async def start(cls, processes: int = 1) -> Sender:
        started = [
            await asyncio.create_subprocess_exec(
                sys.executable,
                "-m",
                "bench._sender",
                cwd=ROOT,
                stdin=asyncio.subprocess.PIPE,
                stdout=asyncio.subprocess.PIPE,
                limit=PIPE_LIMIT,
            )
            for _ in range(processes)
        ]
        return cls(started)

    async def _ask_one(
        self, process: asyncio.subprocess.Process, message: dict[str, Any], seq: int
    ) -> dict[str, Any]:
        assert process.stdin is not None
        assert process.stdout is not None
        process.stdin.write((json.dumps({**message, "seq": seq}) + "\n").encode())
        await process.stdin.drain()
        while True:  # skip replies to questions an abandoned step no longer waits for
            line = await asyncio.wait_for(process.stdout.readline(), timeout=300)
            answer: dict[str, Any] = json.loads(line)
            if answer.pop("seq", None) == seq:
                return answer

    async def _ask_all(self, messages: list[dict[str, Any]]) -> list[dict[str, Any]]:
        self._seq += 1
        return await asyncio.gather(
            *(
                self._ask_one(process, message, self._seq)
                for process, message in zip(self._processes, messages, strict=True)
            )
        )

    async def offer(self, people: int) -> list[str]:
        share, extra = divmod(people, len(self._processes))
        self._placed = [share + (i < extra) for i in range(len(self._processes))]
        replies = await self._ask_all([{"cmd": "offer", "n": n} for n in self._placed])
        return [sdp for reply in replies for sdp in reply["offers"]]

    async def answer(self, answers: list[str]) -> None:
        parts, at = [], 0
        for n in self._placed:
            parts.append({"answers": answers[at : at + n]})
            at += n
        await self._ask_all(parts)

    async def ask(self, message: dict[str, Any]) -> dict[str, Any]:
        """One message to every process (`count`, `close`): the replies' counts summed."""
        replies = await self._ask_all([message] * len(self._processes))
        total: dict[str, Any] = dict(replies[0])
        for reply in replies[1:]:
            for key, value in reply.items():
                if isinstance(value, int) and not isinstance(value, bool):
                    total[key] = total.get(key, 0) + value
        return total

    async def sent(self) -> int:
        counts = await self.ask({"cmd": "count"})
        return int(counts["audio"]) + int(counts["video"])

    async def stop(self) -> None:
        for process in self._processes:
            if process.stdin is not None:
                process.stdin.close()
        for process in self._processes:
            await process.wait()

    async def kill(self) -> None:
        """For senders too far behind to answer: their pages die with them."""
        for process in self._processes:
            process.kill()
            await process.wait()


def node_settings(
    folder: Path, secret: str, master: str, redis_url: str | None = None, prefix: str = ""
) -> Settings:
    return Settings(
        database_url=f"sqlite+aiosqlite:///{folder / 'bench.db'}",
        redis_url=redis_url,
        redis_prefix=prefix or "cgbench",
        data_dir=folder / "data",
        secret_key=secret,
        master_key=master,
        log_level="CRITICAL",
    )


async def seed_people(runtime: Runtime, count: int) -> list[Participant]:
    """One booking with `count` people, each of whom granted audio and video recording."""
    now = runtime.clock.now()
    booking = Booking(
        id=uuid.uuid4(),
        title="bench",
        language="en",
        starts_at=now,
        ends_at=now + timedelta(hours=1),
        status=BookingStatus.SCHEDULED,
        recording_policy=RecordingPolicy.PER_PARTICIPANT,
        requested_purposes=[Purpose.RECORDING_AUDIO.value, Purpose.RECORDING_VIDEO.value],
        record_automatically=False,
        room_name=secrets.token_hex(16),
        room_state=RoomState.NOT_NEEDED,
        room_attempts=0,
        sequence=0,
        created_by="bench",
        created_at=now,
        updated_at=now,
    )
    ids = [uuid.uuid4() for _ in range(count)]
    async with runtime.db.session() as session:
        session.add(booking)
        await session.flush()
        for position, pid in enumerate(ids):
            session.add(
                Participant(
                    id=pid,
                    booking_id=booking.id,
                    position=position,
                    external_id=f"bench-{pid.hex[:8]}",
                    display_name=f"Person {position}",
                    role=Role.HOST if position == 0 else Role.CLIENT,
                    adult=True,
                    credential_hash=credential_hash(join_credential(runtime.keys, pid, 0)),
                    credential_generation=0,
                    created_at=now,
                )
            )
    for pid in ids:
        for purpose in (Purpose.RECORDING_AUDIO, Purpose.RECORDING_VIDEO):
            await decide(runtime, pid, purpose, Decision.GRANTED)
    async with runtime.db.session() as session:
        people = [await session.get(Participant, pid) for pid in ids]
    return [p for p in people if p is not None]


async def decide(
    runtime: Runtime, participant_id: uuid.UUID, purpose: Purpose, decision: Decision
) -> Entry:
    overview = await consent_overview(runtime.db, participant_id)
    notice = next(p["notice"] for p in overview["purposes"] if p["purpose"] == purpose.value)
    request = DecisionRequest(purpose=purpose, decision=decision, notice_sha256=notice["sha256"])
    return await do_decide(
        ledger_writer(runtime), runtime.bus, participant_id, request, runtime.clock.now()
    )


async def connect_all(sender: Sender, recorder: Recorder, people: list[Participant]) -> None:
    offers = await sender.offer(len(people))
    slots = asyncio.Semaphore(4)  # a few at a time: SQLite takes one writer

    async def answer(person: Participant, sdp: str) -> RTCSessionDescription:
        async with slots:
            return await recorder.answer(person, sdp, "offer")

    answered = await asyncio.gather(
        *(answer(p, sdp) for p, sdp in zip(people, offers, strict=True))
    )
    await sender.answer([a.sdp for a in answered])


FRAMES_PER_S = 30 + 50  # video + 20 ms audio


@dataclass
class Cpu:
    """CPU seconds per person-minute, and the share of the frames that made it (received
    and written, or decoded and encoded): a receiver that falls behind drops input and
    looks cheap, so `per_full_minute` scales the cost up to every frame handled."""

    per_minute: float
    share: float

    @property
    def per_full_minute(self) -> float:
        return self.per_minute / max(self.share, 1e-9)


async def passthrough_cpu(
    runtime: Runtime,
    gate: LiveGate,
    sender: Sender,
    person: Participant,
    record: bool,
    remb_each_packet: bool = False,
) -> Cpu:
    """One person received, and recorded (or only received), by the passthrough recorder;
    `remb_each_packet` leaves aiortc's REMB as shipped (one per packet under overuse), the
    recorder's cost before `media.recorder.tap.throttle_remb`."""
    with contextlib.ExitStack() as stack:
        if remb_each_packet:
            stack.enter_context(
                unittest.mock.patch("media.recorder.recorder.throttle_remb", return_value=None)
            )
        return await _passthrough_cpu(runtime, gate, sender, person, record)


async def _passthrough_cpu(
    runtime: Runtime, gate: LiveGate, sender: Sender, person: Participant, record: bool
) -> Cpu:
    async with Recorder(runtime, gate=lambda: gate) as recorder:
        if record:
            await recorder.start(person.booking_id)
        await connect_all(sender, recorder, [person])
        await asyncio.sleep(WARMUP_S)
        counter = recorder.frames_written if record else recorder.frames_arrived
        frames = sum(counter.values())
        before = time.process_time()
        await asyncio.sleep(CPU_WINDOW_S)
        used = time.process_time() - before
        frames = sum(counter.values()) - frames
        if record:
            await recorder.stop(person.booking_id)
        await sender.ask({"cmd": "close"})
    return Cpu(used * 60 / CPU_WINDOW_S, frames / (FRAMES_PER_S * CPU_WINDOW_S))


class CountingTrack(MediaStreamTrack):
    """Passes a track's decoded frames on, counting them (what MediaRecorder encodes)."""

    def __init__(self, inner: MediaStreamTrack) -> None:
        super().__init__()
        self.kind = inner.kind
        self._inner = inner
        self.count = 0

    async def recv(self) -> Any:
        frame = await self._inner.recv()
        self.count += 1
        return frame


async def media_recorder_cpu(sender: Sender, folder: Path) -> tuple[Cpu, int]:
    """The same through aiortc's MediaRecorder (decode, then libvpx/libopus into WebM);
    also returns how many decoded frames were still queued, unencoded, at the end."""
    pc = RTCPeerConnection()
    sink = MediaRecorder(str(folder / "media-recorder.webm"))
    tracks: list[Any] = []
    counted: list[CountingTrack] = []

    @pc.on("track")
    def on_track(track: Any) -> None:
        counting = CountingTrack(track)
        sink.addTrack(counting)
        tracks.append(track)
        counted.append(counting)

    offers = await sender.offer(1)
    await pc.setRemoteDescription(RTCSessionDescription(sdp=offers[0], type="offer"))
    await pc.setLocalDescription(await pc.createAnswer())
    await sender.answer([pc.localDescription.sdp])
    await sink.start()
    await asyncio.sleep(WARMUP_S)
    frames = sum(t.count for t in counted)
    before = time.process_time()
    await asyncio.sleep(CPU_WINDOW_S)
    used = time.process_time() - before
    frames = sum(t.count for t in counted) - frames
    backlog = sum(track._queue.qsize() for track in tracks)
    await sink.stop()
    await pc.close()
    await sender.ask({"cmd": "close"})
    return Cpu(used * 60 / CPU_WINDOW_S, frames / (FRAMES_PER_S * CPU_WINDOW_S)), backlog


@dataclass
class Step:
    """One capacity step: the recorder's own losses (written / arrived), the way there
    (arrived / sent), the senders' pace against real time, this process's CPU (1.0 = one
    core) and its CPU seconds per frame written, the figure a starved process still gives."""

    people: int
    kept: float
    arrived: float
    pace: float
    cpu: float
    cpu_per_frame: float
    load: float  # the host's one-minute load average at the end of the step
    overflows: int  # datagrams the host's kernel dropped for a full socket buffer meanwhile

    @property
    def per_core(self) -> float:
        """People one core receives and records, from the CPU per frame."""
        return 1 / max(self.cpu_per_frame * FRAMES_PER_S, 1e-12)


async def capacity(
    runtime: Runtime, gate: LiveGate, sender: Sender, people: list[Participant]
) -> Step:
    async with Recorder(runtime, gate=lambda: gate) as recorder:
        await recorder.start(people[0].booking_id)
        await connect_all(sender, recorder, people)
        progress(f"capacity: {len(people)} pages connected")
        await settle(recorder, len(people))
        sent_before = await sender.sent()
        arrived_before = sum(recorder.frames_arrived.values()) - recorder.frames_held()
        written_before = sum(recorder.frames_written.values())
        overflows_before = udp_overflows()
        cpu_before, wall_before = time.process_time(), time.monotonic()
        await asyncio.sleep(CAPACITY_WINDOW_S)
        sent = await sender.sent() - sent_before
        await asyncio.sleep(0.15)  # frames in flight at the end of the window
        held = recorder.frames_held()  # decided on, written once HOLD_S has passed
        arrived = sum(recorder.frames_arrived.values()) - arrived_before
        written = sum(recorder.frames_written.values()) - written_before
        used = time.process_time() - cpu_before
        cpu = used / (time.monotonic() - wall_before)
        # Every frame sent against every frame that arrived, from the first on: the senders
        # stop (connections up), and what is on its way arrives.
        final = await sender.ask({"cmd": "hold"})
        all_arrived = await drained(recorder)
        overflows = udp_overflows() - overflows_before
        await recorder.stop(people[0].booking_id)
        await sender.ask({"cmd": "close"})
    nominal = len(people) * FRAMES_PER_S * CAPACITY_WINDOW_S
    return Step(
        len(people),
        written / max(arrived - held, 1),
        all_arrived / max(int(final["audio"]) + int(final["video"]), 1),
        sent / nominal,
        cpu,
        used / max(written, 1),
        os.getloadavg()[0],
        overflows,
    )


async def drained(recorder: Recorder) -> int:
    """The frames that arrived, once no more arrive (0.5 s without one; 5 s at most). A
    receiver's jitter buffer keeps its newest frames until the next packet, so up to one
    video and about four audio frames per person never come out: counted as lost."""
    arrived, deadline = -1, time.monotonic() + 5
    while time.monotonic() < deadline:
        now = sum(recorder.frames_arrived.values())
        if now == arrived:
            break
        arrived = now
        await asyncio.sleep(0.5)
    return arrived


def udp_overflows() -> int:
    """The host's count of UDP datagrams dropped for a full receive buffer (Linux)."""
    try:
        lines = Path("/proc/net/snmp").read_text().splitlines()
    except OSError:
        return 0
    names, values = [line.split() for line in lines if line.startswith("Udp:")][:2]
    return int(values[names.index("RcvbufErrors")])


async def settle(recorder: Recorder, people: int) -> None:
    """Wait until every person's audio and video are being written (video from its first
    key frame on), so frames skipped while waiting for a key frame are not counted."""
    deadline = time.monotonic() + 15
    while time.monotonic() < deadline:
        spans = recorder.writing()
        if len(spans) == 2 * people and all(seconds > 0.5 for _, _, seconds in spans):
            break
        await asyncio.sleep(0.1)
    await asyncio.sleep(WARMUP_S)


async def capacity_within_budget(
    runtime: Runtime, gate: LiveGate, sender: Sender, people: list[Participant]
) -> Step | None:
    try:
        async with asyncio.timeout(STEP_BUDGET_S):
            return await capacity(runtime, gate, sender, people)
    except TimeoutError:
        progress(f"capacity: {len(people)} people did not finish in {STEP_BUDGET_S:.0f} s")
        return None


async def withdrawal_latency(
    decider: Runtime,
    runtime: Runtime,
    gate: LiveGate,
    sender: Sender,
    people: list[Participant],
) -> dict[str, list[float]]:
    """Withdraw and grant again, over and over, while the others keep recording. Decisions
    are committed through `decider` (another node's runtime, or the same one). Besides the
    file closing, each withdrawal's way is timed: delivered on the recording node's bus (a
    subscriber of its own beside the gate's) and applied by the gate."""
    out: dict[str, list[float]] = {
        "stop_ms": [],
        "last_frame_ms": [],
        "late_frames": [],
        "published_ms": [],
        "delivered_ms": [],
        "applied_ms": [],
    }
    subject = people[0]
    delivered: list[float] = []
    applied: list[float] = []

    def heard(event: ConsentChanged) -> None:
        if event.subject_id == subject.id and event.decision is Decision.WITHDRAWN:
            applied.append(time.time())

    async def listen() -> None:
        async with runtime.bus.subscribe(Topic.CONSENT_CHANGED) as events:
            async for event in events:
                if isinstance(event, ConsentChanged) and event.decision is Decision.WITHDRAWN:
                    delivered.append(time.time())

    listener = asyncio.create_task(listen())
    gate.watch(heard)
    published = StampedBus(decider.bus)
    decider.bus = published
    try:
        async with Recorder(runtime, gate=lambda: gate) as recorder:
            await recorder.start(subject.booking_id)
            await connect_all(sender, recorder, people)
            await asyncio.sleep(WARMUP_S)
            for i in range(WITHDRAWALS):
                purpose = Purpose.RECORDING_VIDEO if i % 2 == 0 else Purpose.RECORDING_AUDIO
                kind = TrackKind.VIDEO if i % 2 == 0 else TrackKind.AUDIO
                await decide(decider, subject.id, purpose, Decision.GRANTED)
                await asyncio.sleep(1.0)  # a video span starts at a key frame (every 0.5 s)
                delivered.clear()
                applied.clear()
                published.stamps.clear()
                with withdrawal_commits() as committed:
                    await decide(decider, subject.id, purpose, Decision.WITHDRAWN)
                await asyncio.sleep(0.3)
                spans = [
                    s
                    for s in recorder.closed_spans
                    if s.subject_id == subject.id and s.kind is kind
                ]
                if not spans or not committed:
                    continue
                span, at = spans[-1], committed[0]
                late = [t for t in span.arrivals if t > at]
                out["stop_ms"].append(max(0.0, span.closed_at - at) * 1000)
                out["last_frame_ms"].append(max(0.0, (span.last_arrival or at) - at) * 1000)
                out["late_frames"].append(float(len(late)))
                if delivered and applied and published.stamps:
                    out["published_ms"].append(max(0.0, published.stamps[0] - at) * 1000)
                    out["delivered_ms"].append(max(0.0, delivered[0] - at) * 1000)
                    out["applied_ms"].append(max(0.0, applied[0] - at) * 1000)
            await recorder.stop(subject.booking_id)
            await sender.ask({"cmd": "close"})
    finally:
        decider.bus = published.inner
        gate.unwatch(heard)
        listener.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await listener
    return out


class StampedBus:
    """A node's bus, noting when a withdrawal is handed to it (after the commit)."""

    def __init__(self, inner: EventBus) -> None:
        self.inner = inner
        self.stamps: list[float] = []

    async def publish(self, event: BusEvent) -> None:
        if isinstance(event, ConsentChanged) and event.decision is Decision.WITHDRAWN:
            self.stamps.append(time.time())
        await self.inner.publish(event)

    def subscribe(self, *topics: str) -> contextlib.AbstractAsyncContextManager[Subscription]:
        return self.inner.subscribe(*topics)

    async def ping(self) -> None:
        await self.inner.ping()

    async def close(self) -> None:
        await self.inner.close()


def progress(message: str) -> None:
    print(f"  {time.strftime('%H:%M:%S')} {message}", file=sys.stderr, flush=True)


def percentile(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


async def run() -> str:
    secret = secrets.token_urlsafe(32)
    master = base64.b64encode(os.urandom(32)).decode()
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        settings = node_settings(folder, secret, master)
        await upgrade(settings.database_url)
        runtime = Runtime.open(settings)
        sender = await Sender.start()
        try:
            async with LiveGate(runtime) as gate:
                people = await seed_people(runtime, max(CAPACITY_STEPS))
                await gate.ensure_booking(people[0].booking_id)
                progress("CPU: receive only")
                receive_only = await passthrough_cpu(runtime, gate, sender, people[0], False)
                progress("CPU: passthrough")
                passthrough = await passthrough_cpu(runtime, gate, sender, people[0], True)
                progress("CPU: passthrough, aiortc's REMB on every packet")
                before = await passthrough_cpu(runtime, gate, sender, people[0], True, True)
                progress("CPU: MediaRecorder")
                baseline, backlog = await media_recorder_cpu(sender, folder)
                progress("withdrawal latency: one node")
                one_node = await withdrawal_latency(runtime, runtime, gate, sender, people[:5])
            progress("withdrawal latency: two nodes")
            two_nodes = await across_redis(folder, secret, master, sender, people[:5])
            for purpose in (Purpose.RECORDING_AUDIO, Purpose.RECORDING_VIDEO):
                await decide(runtime, people[0].id, purpose, Decision.GRANTED)  # withdrawn above
            await sender.stop()
            sender = await Sender.start(SENDER_PROCESSES)
            steps: list[Step] = []
            async with LiveGate(runtime) as gate:
                await gate.ensure_booking(people[0].booking_id)
                for n in CAPACITY_STEPS:
                    progress(f"capacity: {n} people")
                    step = await capacity_within_budget(runtime, gate, sender, people[:n])
                    if step is None:
                        await sender.kill()
                        sender = await Sender.start(SENDER_PROCESSES)
                        break
                    progress(f"capacity: {step}")
                    steps.append(step)
        finally:
            await sender.stop()
            await runtime.close()
    cpu = Cpus(receive_only, passthrough, before, baseline, backlog)
    return report(cpu, steps, one_node, two_nodes)


@dataclass
class Cpus:
    receive_only: Cpu
    passthrough: Cpu
    remb_each_packet: Cpu
    media_recorder: Cpu
    backlog: int  # MediaRecorder's decoded frames not yet encoded at the end


async def across_redis(
    folder: Path, secret: str, master: str, sender: Sender, people: list[Participant]
) -> dict[str, list[float]] | None:
    """Node A commits the decisions; node B records and hears of them over Redis."""
    prefix = f"cgbench:{secrets.token_hex(4)}"
    node_a = Runtime.open(node_settings(folder, secret, master, REDIS_URL, prefix))
    node_b = Runtime.open(node_settings(folder, secret, master, REDIS_URL, prefix))
    try:
        await node_a.bus.ping()
    except Exception:  # no Redis on this machine: say so in the report
        await node_a.close()
        await node_b.close()
        return None
    try:
        async with LiveGate(node_b) as gate:
            return await withdrawal_latency(node_a, node_b, gate, sender, people)
    finally:
        await node_b.close()
        await node_a.close()


def stopped_by(steps: list[Step], receive_only: Cpu) -> list[str]:
    """What kept the largest step from counting, read from its own figures."""
    if len(steps) < len(CAPACITY_STEPS):
        tried = CAPACITY_STEPS[len(steps)]
        return [
            f"- {tried} people did not finish within {STEP_BUDGET_S:.0f} s (connecting the "
            "pages and waiting for every file to be written): the host could not run "
            "senders and recorder for that many at once."
        ]
    step = steps[-1]
    if step.arrived >= 1 - DROP_LIMIT and 0.95 <= step.pace <= 1.05:
        return []
    lines = [
        f"- What stopped the count at {step.people}: frames lost before they reached the "
        f"recorder ({1 - min(step.arrived, 1):.1%}), not in it (it wrote {step.kept:.1%} of "
        f"what arrived). The host's kernel dropped {step.overflows:,} datagrams for full "
        f"socket buffers during the step (load average {step.load:.1f} on 2 cores)."
    ]
    if step.cpu < 0.8:
        lines.append(
            f"  The recorder had room (it used {step.cpu:.2f} of a core): the senders, "
            f"{step.people // SENDER_PROCESSES} people per process on the same two cores, "
            f"fell behind and caught up in bursts ({step.pace:.2f}x real time), and a burst "
            "overflows the receiving socket's buffer. Two shared cores cannot carry senders "
            f"for {step.people}."
        )
    else:
        lines.append(
            f"  The recorder used {step.cpu:.2f} of a core: it was the limit, and the "
            "kernel dropped what it could not read in time."
        )
    lines.append(
        f"  Even with senders elsewhere, one process would not receive {step.people} people "
        f"at this bit rate: aiortc's receive path alone (SRTP, RTP, jitter buffer, bandwidth "
        f"estimate, in Python) costs {receive_only.per_full_minute:.2f} CPU s per "
        f"person-minute, about {60 / receive_only.per_full_minute:.0f} people per core, "
        "before anything is recorded."
    )
    return lines


STAGES = (
    ("commit -> handed to the bus on the deciding node (ms)", "published_ms"),
    ("commit -> delivered on the recording node's bus (ms)", "delivered_ms"),
    ("commit -> applied by the gate (ms)", "applied_ms"),
    ("commit -> file closed (ms)", "stop_ms"),
    ("commit -> last frame written (ms)", "last_frame_ms"),
    ("frames written after the commit", "late_frames"),
)


def latency_rows(latency: dict[str, list[float]]) -> list[str]:
    return [
        f"| {name} | {percentile(values, 0.5):.1f} | {percentile(values, 0.99):.1f} | "
        f"{max(values, default=float('nan')):.1f} |"
        for name, key in STAGES
        for values in [latency[key]]
    ]


def report(
    cpu: Cpus,
    steps: list[Step],
    one_node: dict[str, list[float]],
    two_nodes: dict[str, list[float]] | None,
) -> str:
    ok = [
        step.people
        for step in steps
        if step.kept >= 1 - DROP_LIMIT
        and step.arrived >= 1 - DROP_LIMIT
        and 0.95 <= step.pace <= 1.05
    ]
    behind = " (it could not keep up: its figure is a lower bound)." if cpu.backlog > 30 else "."
    own = cpu.passthrough.per_full_minute - cpu.receive_only.per_full_minute
    load = ", ".join(f"{x:.1f}" for x in os.getloadavg())
    largest = steps[-1] if steps else None
    lines = [
        "## Recording (built-in recorder)",
        "",
        "One person sending audio + video (640x480, 30 fps VP8 test pattern at about "
        f"{VIDEO_BIT_RATE // 1000} kbit/s, 20 ms Opus tone, pre-encoded and only packetized "
        "by aiortc) from a separate process; CPU seconds of the receiving process per "
        f"recorded person-minute, measured over {CPU_WINDOW_S:.0f} s after {WARMUP_S:.0f} s "
        "warm-up (scaled down from minutes to keep the run short). A receiver that falls "
        "behind drops input and looks cheaper than it is, so each figure is also scaled to "
        "every frame handled (frames handled / frames a full person-minute has).",
        "",
        "| receiver | CPU s / person-minute | frames handled | CPU s / full person-minute |",
        "|---|---|---|---|",
        *[
            f"| {name} | {c.per_minute:.2f} | {c.share:.2f} | {c.per_full_minute:.2f} |"
            for name, c in (
                ("receive only (no recording; SRTP, RTP, jitter buffer)", cpu.receive_only),
                ("passthrough recorder (this)", cpu.passthrough),
                (
                    "passthrough recorder, aiortc's REMB on every packet (before)",
                    cpu.remb_each_packet,
                ),
                ("aiortc `MediaRecorder` (decode + libvpx/libopus to WebM)", cpu.media_recorder),
            )
        ],
        "",
        "- Ratio passthrough / MediaRecorder, per full person-minute: "
        f"**{cpu.passthrough.per_full_minute / cpu.media_recorder.per_full_minute:.3f}** "
        f"(goal <= 0.2). The recording work alone (above receive-only) costs {own:.2f} s "
        f"against {cpu.media_recorder.per_full_minute - cpu.receive_only.per_full_minute:.2f} s.",
        f"- MediaRecorder had {cpu.backlog} decoded frames still waiting to be encoded at the "
        f"end of the window{behind}",
        "- aiortc's receiver sends a REMB (RTCP) with every packet while its bandwidth "
        "estimator sees overuse, which on a busy host is most packets; the recorder now sends "
        "at most four a second per track (`media.recorder.tap.throttle_remb`).",
        "",
        "The receiving process runs on uvloop, the event loop `callgate serve` runs the "
        "recorder on (until 2026-12-01 this benchmark ran it on asyncio's own loop, which "
        "costs more per packet).",
        "",
        f"People recorded at once by one process ({CAPACITY_WINDOW_S:.0f} s each, audio + "
        "video, counted once every file is being written; the senders spread over "
        f"{SENDER_PROCESSES} processes): frames written of those that arrived (the recorder's "
        "own losses), frames that arrived of all those sent, from the first to the last (the "
        "network, the kernel's socket buffers and aiortc's receive path; the senders stop at "
        "the end and what is on its way arrives, but the newest frames a jitter buffer keeps, "
        "one video and about four audio per person, count as lost), the senders' pace "
        "against real time, this "
        "process's CPU (1.0 = one core), and the people one core would record at the CPU "
        "this step spent per frame written.",
        "",
        "| people | written / arrived | arrived / sent | sender pace | CPU | people per core "
        "| load average |",
        "|---|---|---|---|---|---|---|",
        *[
            f"| {s.people} | {s.kept:.3f} | {s.arrived:.3f} | {s.pace:.2f} | {s.cpu:.2f} | "
            f"{s.per_core:.0f} | {s.load:.1f} |"
            for s in steps
        ],
        "",
        f"- Most people recorded at real-time pace (0.95-1.05) with <= {DROP_LIMIT:.0%} of "
        "frames lost, by the recorder or on the way to it: "
        f"**{max(ok) if ok else 0}** (goal >= 50; steps tried: "
        f"{', '.join(str(s.people) for s in steps) or 'none'} of "
        f"{', '.join(str(n) for n in CAPACITY_STEPS)}; a step is abandoned after "
        f"{STEP_BUDGET_S:.0f} s).",
        (
            f"- At {largest.people} people the recorder wrote {largest.kept:.1%} of the frames "
            f"that reached it, and {largest.arrived:.1%} of the frames sent reached it "
            f"(senders at {largest.pace:.2f}x real time); at its CPU per frame one core "
            f"records about **{largest.per_core:.0f} people**. From the one-person figures: "
            f"{60 / cpu.passthrough.per_full_minute:.0f} people per core, SRTP and jitter "
            f"buffer included ({60 / max(own, 1e-9):.0f} for the recording work alone)."
            if largest is not None
            else "- No capacity step finished."
        ),
        *stopped_by(steps, cpu.receive_only),
        "",
        f"Withdrawal latency ({len(one_node['stop_ms'])} withdrawals, alternating audio and "
        "video, while four other people keep recording): from the commit of the withdrawal "
        "(the ledger's transaction) along its way to the recorder closing the file, and to "
        "the arrival of the last frame written after the commit (0 when none was). Frames "
        f"are written {HOLD_S * 1000:.0f} ms after they arrive "
        "(`media.recorder.capture.HOLD_S`), so a withdrawal heard within that time still "
        "finds every frame that arrived after its commit unwritten and drops it.",
        "",
        "One node (in-process bus):",
        "",
        "| | p50 | p99 | max |",
        "|---|---|---|---|",
        *latency_rows(one_node),
        "",
    ]
    if two_nodes is None:
        lines.append("Two nodes: not measured (Redis unreachable at the time of the run).")
    else:
        lines += [
            "Two nodes (node A commits, node B records and hears of it over Redis pub/sub):",
            "",
            "| | p50 | p99 | max |",
            "|---|---|---|---|",
            *latency_rows(two_nodes),
        ]
    lines += [
        "",
        "Goal: p99 <= 10 ms across two nodes with no frame written after the commit. The "
        f"machine is shared: load average at the end of the run was {load} on 2 cores, and "
        "latency tails on a contended event loop are scheduling delays (a frame waiting "
        "behind other work).",
    ]
    return "\n".join(lines)
