"""The recording peer: each page's aiortc connection, written to disk without transcoding.

aiortc's `MediaRecorder` decodes every frame and encodes it again. Here the receiver's
*encoded* frames are taken instead: `RTCRtpReceiver` (aiortc 1.16) reassembles RTP packets
in its jitter buffer and hands each complete frame (Opus packet, or VP8 frame with the
RFC 7741 descriptor already stripped) to its decoder thread through a queue, from
`_handle_rtp_packet` on the event loop. `EncodedTap` takes that queue's place, so the frame
reaches `TrackCapture.on_frame` synchronously and is never decoded (the decoder thread idles
until the receiver stops).

At every frame the capture asks the live consent gate whether this person allows this
purpose *now*; only then is the frame written. One file per person, per kind, per consent
span: a withdrawal (or a host stop, or the gate going dark) closes the file, a new grant
opens a new one, and a video span starts at a key frame requested with PLI. Fail closed: no
gate, or a gate that cannot confirm its state, means nothing is written and the page is told
"paused" on the bus (`recording.changed`) until the gate is back.
"""

from __future__ import annotations

import asyncio
import contextlib
import enum
import queue
import time
import uuid
from collections import deque
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from datetime import timedelta
from types import TracebackType
from typing import Any, Protocol

import structlog
from aiortc import RTCConfiguration, RTCIceServer, RTCPeerConnection, RTCSessionDescription
from aiortc.jitterbuffer import JitterFrame
from aiortc.mediastreams import MediaStreamTrack
from aiortc.rtcrtpparameters import RTCRtpCodecParameters
from aiortc.rtcrtpreceiver import RTCRtpReceiver
from sqlalchemy import column, delete, select, table

from core.bookings import Participant
from core.bus import BusEvent, Topic
from core.events import ConsentChanged, RecordingSwitched, SubjectErased, TrackRecording
from core.purposes import Decision, Purpose
from core.runtime import Runtime
from media.backends import open_store
from media.keys import access_data_key
from media.ogg import OggOpusWriter
from media.recordings import (
    Recording,
    RecordingState,
    TrackKind,
    do_set_recording_on,
    read_recording_on,
)
from media.storage import EncryptedWriter, Storage
from media.webm import WebmVp8Writer

log = structlog.get_logger(__name__)

TICK_S = 0.1  # how often open spans are re-checked when no frame arrives
PLI_EVERY_S = 0.5  # while a video span waits for its first key frame
STALE_AFTER_S = 10.0  # a file untouched this long after a crash is salvaged on start


class ConsentGate(Protocol):
    """What the recorder needs of the consent gate (`consent.live.LiveGate` fits): a
    synchronous, in-memory answer that is False whenever consent cannot be confirmed."""

    def allows(self, booking_id: uuid.UUID, subject_id: uuid.UUID, purpose: Purpose) -> bool: ...

    async def ensure_booking(self, booking_id: uuid.UUID) -> None:
        """Load a live session's decisions before its first frame is asked about."""
        ...


GateSource = Callable[[], ConsentGate | None]


def gate_confirmed(gate: ConsentGate | None) -> bool:
    """Whether the gate can currently vouch for its answers. A gate may say so through a
    `healthy` attribute (bool or method); one that does not is trusted while present."""
    if gate is None:
        return False
    healthy: Any = getattr(gate, "healthy", True)
    return bool(healthy() if callable(healthy) else healthy)


class CaptureState(enum.StrEnum):
    RECORDING = "recording"
    PAUSED = "paused"  # the gate cannot confirm consent: fail closed, resume when it can
    IDLE = "idle"  # not consented to, or recording not started for the booking


FrameSink = Callable[[RTCRtpCodecParameters, JitterFrame], None]


class EncodedTap:
    """Stands in for `RTCRtpReceiver`'s decoder input queue (`put`/`get`), so complete
    encoded frames go to `on_frame` instead of the decoder. `put(None)` (the receiver
    stopping) is passed to the idle decoder thread so it ends as it would have."""

    def __init__(self, on_frame: FrameSink) -> None:
        self._on_frame = on_frame
        self._stop: queue.SimpleQueue[None] = queue.SimpleQueue()

    def put(self, item: tuple[RTCRtpCodecParameters, JitterFrame] | None) -> None:
        if item is None:
            self._stop.put(None)
            return
        try:
            self._on_frame(*item)
        except Exception:  # a writer failure must not take the peer connection down
            log.exception("recorder.frame_failed")

    def get(self) -> None:
        return self._stop.get()


_QUEUE_ATTRIBUTE = "_RTCRtpReceiver__decoder_queue"


def install_tap(receiver: RTCRtpReceiver, tap: EncodedTap) -> None:
    """Put the tap in place of the decoder queue; must run before `receive()` starts the
    decoder thread (i.e. from the peer connection's `track` event)."""
    if not hasattr(receiver, _QUEUE_ATTRIBUTE):
        raise RuntimeError("this aiortc version has no decoder queue to tap")
    setattr(receiver, _QUEUE_ATTRIBUTE, tap)


@dataclass
class SpanSummary:
    """What a closed span wrote, kept in memory for tests and the benchmark."""

    recording_id: uuid.UUID
    subject_id: uuid.UUID
    kind: TrackKind
    frames: int
    first_arrival: float | None
    last_arrival: float | None
    closed_at: float
    arrivals: tuple[float, ...]


@dataclass
class Span:
    recording_id: uuid.UUID
    kind: TrackKind
    relative_path: str
    file: EncryptedWriter
    writer: OggOpusWriter | WebmVp8Writer
    frames: int = 0
    first_arrival: float | None = None
    last_arrival: float | None = None
    arrivals: deque[float] = field(default_factory=lambda: deque(maxlen=64))

    def write(self, data: bytes, timestamp: int, arrival: float) -> bool:
        """Write one frame; False while a video span still waits for its key frame."""
        if isinstance(self.writer, WebmVp8Writer):
            if not self.writer.write(data, timestamp):
                return False
        else:
            self.writer.write(data, timestamp)
        self.frames += 1
        if self.first_arrival is None:
            self.first_arrival = arrival
        self.last_arrival = arrival
        self.arrivals.append(arrival)
        return True

    @property
    def waiting_for_keyframe(self) -> bool:
        return isinstance(self.writer, WebmVp8Writer) and not self.writer.started


@dataclass
class PeerSession:
    """One page's recording connection."""

    booking_id: uuid.UUID
    subject_id: uuid.UUID
    data_key: bytes
    pc: RTCPeerConnection
    captures: list[TrackCapture] = field(default_factory=list)

    def close_spans(self) -> None:
        for capture in self.captures:
            capture.close_span()


class TrackCapture:
    """One incoming track of one person: decides at each frame, writes spans."""

    def __init__(
        self, recorder: Recorder, peer: PeerSession, kind: TrackKind, receiver: RTCRtpReceiver
    ) -> None:
        self._recorder = recorder
        self.peer = peer
        self.kind = kind
        self._receiver = receiver
        self.span: Span | None = None
        self.state = CaptureState.IDLE
        self._last_pli = 0.0
        self.frames_seen = 0

    def on_frame(self, codec: RTCRtpCodecParameters, frame: JitterFrame) -> None:
        arrival = time.time()
        self.frames_seen += 1
        self._recorder.frames_arrived[self.kind] += 1
        state = self._recorder.decide(self.peer, self.kind)
        if state is CaptureState.RECORDING:
            span = self.span or self._open_span()
            if span.write(frame.data, frame.timestamp, arrival):
                self._recorder.frames_written[self.kind] += 1
                if span.frames == 1:
                    self._recorder.row_opened(self.peer, span)  # starts at its first frame
            if span.waiting_for_keyframe:
                self._request_keyframe()
        else:
            self.close_span()
        self._set_state(state)

    def evaluate(self) -> None:
        """Re-check between frames, so a span closes even when frames stop coming."""
        state = self._recorder.decide(self.peer, self.kind)
        if state is not CaptureState.RECORDING:
            self.close_span()
            self._set_state(state)

    def _open_span(self) -> Span:
        recording_id = uuid.uuid4()
        relative = f"{self.peer.booking_id}/{recording_id}.{self.kind.extension}.cgr"
        file = self._recorder.store.open_writer(relative, self.peer.data_key)
        writer: OggOpusWriter | WebmVp8Writer = (
            OggOpusWriter(file) if self.kind is TrackKind.AUDIO else WebmVp8Writer(file)
        )
        self.span = Span(recording_id, self.kind, relative, file, writer)
        if self.kind is TrackKind.VIDEO:
            self._request_keyframe()
        return self.span

    def close_span(self) -> None:
        span, self.span = self.span, None
        if span is not None:
            span.writer.close()
            self._recorder.row_closed(self.peer, span)

    def _request_keyframe(self) -> None:
        """PLI (RFC 4585 §6.3.1) to every sender of this track, at most every PLI_EVERY_S."""
        now = time.monotonic()
        if now - self._last_pli < PLI_EVERY_S:
            return
        self._last_pli = now
        for source in self._receiver.getSynchronizationSources():
            self._recorder.spawn(self._receiver._send_rtcp_pli(source.source))

    def _set_state(self, state: CaptureState) -> None:
        if state is not self.state:
            self.state = state
            self._recorder.state_changed(self, state)


Op = Callable[[], Awaitable[None]]


class Recorder:
    """Owns every recording connection of this process; entered on the app lifespan."""

    def __init__(self, runtime: Runtime, gate: GateSource) -> None:
        self._runtime = runtime
        self._gate = gate
        self.store: Storage = open_store(runtime.settings)
        self._retention = timedelta(days=runtime.settings.recording_retention_days)
        self._peers: dict[uuid.UUID, PeerSession] = {}
        self._active: set[uuid.UUID] = set()
        self._entries: dict[tuple[str, str, str], str] = {}
        self._ops: asyncio.Queue[Op | None] = asyncio.Queue()
        self._tasks: set[asyncio.Future[Any]] = set()
        self._background: list[asyncio.Task[None]] = []
        self.closed_spans: deque[SpanSummary] = deque(maxlen=10_000)
        self.frames_arrived = dict.fromkeys(TrackKind, 0)  # complete frames received
        self.frames_written = dict.fromkeys(TrackKind, 0)
        self._closed = False

    # lifecycle

    async def __aenter__(self) -> Recorder:
        await self.recover_stale()
        self._background = [
            asyncio.create_task(self._run_ops(), name="recorder-ops"),
            asyncio.create_task(self._run_ticks(), name="recorder-ticks"),
            asyncio.create_task(self._run_events(), name="recorder-events"),
        ]
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()

    async def close(self) -> None:
        """Finalize every open file, close every connection, then flush the row updates."""
        if self._closed:
            return
        self._closed = True
        for task in self._background[1:]:
            task.cancel()
        for peer in list(self._peers.values()):
            await self._drop(peer)
        if self._background:
            await self._ops.put(None)
            await self._background[0]
        for task in self._background[1:]:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        for pending in list(self._tasks):
            pending.cancel()

    # decisions

    def decide(self, peer: PeerSession, kind: TrackKind) -> CaptureState:
        """May this person's `kind` be written right now?"""
        if peer.booking_id not in self._active:
            return CaptureState.IDLE
        gate = self._gate()
        if gate is None or not gate_confirmed(gate):
            return CaptureState.PAUSED
        if gate.allows(peer.booking_id, peer.subject_id, kind.purpose):
            return CaptureState.RECORDING
        return CaptureState.IDLE

    def writing(self) -> list[tuple[uuid.UUID, TrackKind, float]]:
        """(person, kind, seconds written so far) of every open span."""
        return [
            (peer.subject_id, capture.kind, capture.span.writer.duration_s)
            for peer in self._peers.values()
            for capture in peer.captures
            if capture.span is not None
        ]

    def is_active(self, booking_id: uuid.UUID) -> bool:
        """This node's cached answer (read on first use, kept current by the bus)."""
        return booking_id in self._active

    async def recording_on(self, booking_id: uuid.UUID) -> bool:
        """The database's answer (shared by every node, kept over restarts); refreshes the cache."""
        async with self._runtime.db.session() as session:
            on = await read_recording_on(session, booking_id)
        if on:
            self._active.add(booking_id)
        else:
            self._apply_stop(booking_id)
        return on

    async def start(self, booking_id: uuid.UUID, by: str = "system") -> None:
        """Start recording a booking (its people are still each asked at every frame)."""
        await self._set(booking_id, True, by)

    async def stop(self, booking_id: uuid.UUID, by: str = "system") -> None:
        await self._set(booking_id, False, by)

    async def _set(self, booking_id: uuid.UUID, on: bool, by: str) -> None:
        gate = self._gate()
        if gate is not None:
            await gate.ensure_booking(booking_id)
        async with self._runtime.db.session() as session:
            await do_set_recording_on(session, booking_id, on, by, self._runtime.clock.now())
        if on:
            self._active.add(booking_id)
        else:
            self._apply_stop(booking_id)
        await self._runtime.bus.publish(
            RecordingSwitched(booking_id=booking_id, control="started" if on else "stopped")
        )

    async def _load(self, booking_id: uuid.UUID) -> None:
        gate = self._gate()
        if gate is not None:
            await gate.ensure_booking(booking_id)
        await self.recording_on(booking_id)

    def _apply_stop(self, booking_id: uuid.UUID) -> None:
        self._active.discard(booking_id)
        for peer in self._peers.values():
            if peer.booking_id == booking_id:
                for capture in peer.captures:
                    capture.evaluate()

    # connections

    async def answer(self, participant: Participant, sdp: str, kind: str) -> RTCSessionDescription:
        """Accept a page's offer of its tracks; returns the answer."""
        async with self._runtime.db.session() as session:
            data_key = await access_data_key(
                session, self._runtime.keys, participant.external_id, self._runtime.clock.now()
            )
        await self._load(participant.booking_id)
        settings = self._runtime.settings
        servers = [RTCIceServer(urls=url) for url in settings.stun_urls]
        pc = RTCPeerConnection(RTCConfiguration(iceServers=servers or None))
        peer = PeerSession(participant.booking_id, participant.id, data_key, pc)

        @pc.on("track")
        def on_track(track: MediaStreamTrack) -> None:
            receiver = next(t.receiver for t in pc.getTransceivers() if t.receiver.track is track)
            capture = TrackCapture(self, peer, TrackKind(track.kind), receiver)
            install_tap(receiver, EncodedTap(capture.on_frame))
            peer.captures.append(capture)

        @pc.on("connectionstatechange")
        async def on_state() -> None:
            if pc.connectionState in ("failed", "closed"):
                await self._drop(peer)

        await pc.setRemoteDescription(RTCSessionDescription(sdp=sdp, type=kind))
        await pc.setLocalDescription(await pc.createAnswer())
        previous = self._peers.pop(participant.id, None)
        if previous is not None:
            await self._drop(previous)
        self._peers[participant.id] = peer
        local = pc.localDescription
        return RTCSessionDescription(sdp=local.sdp, type=local.type)

    async def _drop(self, peer: PeerSession) -> None:
        self._detach(peer)
        await peer.pc.close()

    def _detach(self, peer: PeerSession) -> None:
        """Forget a connection and close its spans (their row work is queued in order)."""
        if self._peers.get(peer.subject_id) is peer:
            del self._peers[peer.subject_id]
        peer.close_spans()
        for capture in peer.captures:
            capture.state = CaptureState.IDLE

    def connected(self, subject_id: uuid.UUID) -> bool:
        """Whether this person's page has a recording connection on this node."""
        return subject_id in self._peers

    async def settled(self) -> None:
        """Wait until the row and file work queued so far is done."""
        done = asyncio.Event()

        async def mark() -> None:
            done.set()

        self._ops.put_nowait(mark)
        await done.wait()

    def spawn(self, coro: Awaitable[Any]) -> None:
        task = asyncio.ensure_future(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    # rows and events, in order, after the file work the frame path did synchronously

    def row_opened(self, peer: PeerSession, span: Span) -> None:
        now = self._runtime.clock.now()

        async def insert() -> None:
            entries = await self._grant_entries(peer, span.kind.purpose)
            async with self._runtime.db.session() as session:
                session.add(
                    Recording(
                        id=span.recording_id,
                        booking_id=peer.booking_id,
                        participant_id=peer.subject_id,
                        kind=span.kind,
                        state=RecordingState.RECORDING,
                        media_type=span.kind.media_type,
                        started_at=now,
                        consent_entry_ids=entries,
                        frames=0,
                        size=0,
                        retain_until=now + self._retention,
                        path=span.relative_path,
                    )
                )

        self._ops.put_nowait(insert)

    def row_closed(self, peer: PeerSession, span: Span) -> None:
        now = self._runtime.clock.now()
        self.closed_spans.append(
            SpanSummary(
                span.recording_id,
                peer.subject_id,
                span.kind,
                span.frames,
                span.first_arrival,
                span.last_arrival,
                time.time(),
                tuple(span.arrivals),
            )
        )
        if span.frames == 0:  # a video span that never saw a key frame: no file, no row
            self.store.delete(span.relative_path)
            return

        async def update() -> None:
            async with self._runtime.db.session() as session:
                row = await session.get(Recording, span.recording_id)
                if row is None:
                    return
                row.state = RecordingState.COMPLETE
                row.ended_at = now
                row.frames = span.frames
                row.size = span.file.size
                row.sha256 = span.file.sha256
                row.retain_until = now + self._retention
            # Publish off the ops queue (an upload must not hold up rows and events).
            self.spawn(asyncio.to_thread(self.store.seal, span.relative_path))

        self._ops.put_nowait(update)

    def state_changed(self, capture: TrackCapture, state: CaptureState) -> None:
        span = capture.span
        event = TrackRecording(
            booking_id=capture.peer.booking_id,
            subject_id=capture.peer.subject_id,
            kind=capture.kind.value,
            state=state.value,
            recording_id=span.recording_id if span else None,
        )

        async def publish() -> None:
            await self._runtime.bus.publish(event)

        self._ops.put_nowait(publish)

    async def _grant_entries(self, peer: PeerSession, purpose: Purpose) -> list[str]:
        return await self.granting_entries(peer.booking_id, peer.subject_id, purpose)

    async def granting_entries(
        self, booking_id: uuid.UUID, subject_id: uuid.UUID, purpose: Purpose
    ) -> list[str]:
        """The ledger entry that granted this purpose: from the bus, else the ledger."""
        key = (str(booking_id), str(subject_id), purpose.value)
        if key in self._entries:
            return [self._entries[key]]
        ledger = table(
            "consent_ledger",
            column("id"),
            column("seq"),
            column("booking_id"),
            column("subject_id"),
            column("purpose"),
            column("decision"),
        )
        query = (
            select(ledger.c.id, ledger.c.decision)
            .where(
                ledger.c.booking_id == booking_id,
                ledger.c.subject_id == subject_id,
                ledger.c.purpose == purpose.value,
            )
            .order_by(ledger.c.seq.desc())
            .limit(1)
        )
        try:
            async with self._runtime.db.session() as session:
                found = (await session.execute(query)).first()
        except Exception:  # a recording is still worth keeping without the lookup
            log.warning("recorder.ledger_lookup_failed", exc_info=True)
            return []
        if found is None or str(found.decision) != "granted":
            return []
        return [str(found.id)]

    # background

    async def _run_ops(self) -> None:
        while True:
            op = await self._ops.get()
            if op is None:
                return
            try:
                await op()
            except Exception:  # rows are bookkeeping; the files are already safe
                log.exception("recorder.op_failed")

    async def _run_ticks(self) -> None:
        while True:
            await asyncio.sleep(TICK_S)
            for peer in list(self._peers.values()):
                for capture in peer.captures:
                    capture.evaluate()

    async def _run_events(self) -> None:
        topics = (Topic.CONSENT_CHANGED, Topic.RECORDING_CHANGED, Topic.SUBJECT_ERASED)
        while True:
            try:
                async with self._runtime.bus.subscribe(*topics) as events:
                    async for event in events:
                        if isinstance(event, SubjectErased):
                            await self._erased(event.subject_id)
                        else:
                            self._on_event(event)
            except asyncio.CancelledError:
                raise
            except Exception:  # the bus went away: the gate fails closed; retry
                log.warning("recorder.bus_lost", exc_info=True)
                await asyncio.sleep(1.0)

    def _on_event(self, event: BusEvent) -> None:
        if isinstance(event, ConsentChanged):
            key = (str(event.booking_id), str(event.subject_id), event.purpose.value)
            if event.decision is Decision.GRANTED:
                self._entries[key] = str(event.entry_id)
            else:
                self._entries.pop(key, None)
            for peer in list(self._peers.values()):
                for capture in peer.captures:
                    capture.evaluate()
        elif isinstance(event, RecordingSwitched):
            if event.control == "started":
                self._active.add(event.booking_id)
            else:
                self._apply_stop(event.booking_id)

    async def _erased(self, subject_id: uuid.UUID) -> None:
        """A person erased while their page is connected: close their connection and spans,
        then (after the row work those queued) delete whatever rows and files of theirs the
        erasure could not see yet. Their key is destroyed, so nothing of it could be read."""
        peer = self._peers.get(subject_id)
        if peer is None:
            return
        self._detach(peer)
        store = self.store

        async def forget() -> None:
            async with self._runtime.db.session() as session:
                paths = list((await session.scalars(
                    select(Recording.path).where(Recording.participant_id == subject_id)
                )).all())
                await session.execute(
                    delete(Recording).where(Recording.participant_id == subject_id)
                )
            for path in paths:
                await asyncio.to_thread(store.delete, path)
            if paths:
                await asyncio.to_thread(store.delete_published, paths)
            log.info("recorder.erased_mid_call", files=len(paths))

        self._ops.put_nowait(forget)  # after the rows its spans' closing queued
        await peer.pc.close()

    # crash recovery

    async def recover_stale(self, *, min_age_s: float = STALE_AFTER_S) -> int:
        """Salvage files a killed process left open (rows still `recording`, file untouched
        for `min_age_s`): keep their whole chunks, seal them, complete the rows."""
        query = (
            select(Recording, Participant.external_id)
            .join(Participant, Participant.id == Recording.participant_id)
            .where(Recording.state == RecordingState.RECORDING)
        )
        async with self._runtime.db.session() as session:
            rows = (await session.execute(query)).all()
        recovered = 0
        for row, external_id in rows:
            if await self._recover_one(row, external_id, min_age_s):
                recovered += 1
        await self._publish_leftovers()
        return recovered

    async def _publish_leftovers(self) -> None:
        """Complete files whose publishing (an upload) an outage or a restart interrupted."""
        spooled = await asyncio.to_thread(self.store.unpublished)
        if not spooled:
            return
        done = (RecordingState.COMPLETE, RecordingState.RECOVERED)
        query = select(Recording.path).where(
            Recording.path.in_(spooled), Recording.state.in_(done)
        )
        async with self._runtime.db.session() as session:
            paths = list((await session.execute(query)).scalars())
        for path in paths:
            await asyncio.to_thread(self.store.seal, path)

    async def _recover_one(self, row: Recording, external_id: str, min_age_s: float) -> bool:
        path = self.store.path(row.path)
        try:
            age = time.time() - path.stat().st_mtime
        except FileNotFoundError:
            age = None
        if age is not None and age < min_age_s:
            return False
        now = self._runtime.clock.now()
        async with self._runtime.db.session() as session:
            key = await access_data_key(session, self._runtime.keys, external_id, now)
            fresh = await session.get(Recording, row.id)
            if fresh is None:
                return False
            if age is None:
                await session.delete(fresh)
                return False
            size, digest = await asyncio.to_thread(self.store.recover, row.path, key)
            fresh.state = RecordingState.RECOVERED
            fresh.size = size
            fresh.sha256 = digest
            fresh.ended_at = now
            fresh.retain_until = now + self._retention
        return True
