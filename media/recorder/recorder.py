"""The recorder: owns every recording connection of this process, entered on the app lifespan.

It accepts each page's offer (`answer`), decides per frame whether a track may be written
(`decide`: the booking's switch, then the live consent gate), re-checks open spans between
frames, and follows the bus: consent changes, the switch, and people erased mid-call.
"""

from __future__ import annotations

import asyncio
import contextlib
import uuid
from collections import deque
from collections.abc import Awaitable, Callable
from types import TracebackType
from typing import Any

import structlog
from aiortc import RTCConfiguration, RTCIceServer, RTCPeerConnection, RTCSessionDescription
from aiortc.mediastreams import MediaStreamTrack

from core.bookings import Participant
from core.bus import BusEvent, Topic
from core.datakeys import access_data_key
from core.events import (
    BookingCancelled,
    BookingUpdated,
    ConsentChanged,
    LinkRevoked,
    SubjectErased,
    TrackRecording,
)
from core.purposes import Purpose
from core.runtime import Runtime
from core.subjects import Cleanup
from media.backends import open_store
from media.control import RecordingSwitch
from media.gate import ConsentGate, GateSource, gate_confirmed, watch_decisions
from media.recorder.capture import CaptureState, PeerSession, TrackCapture
from media.recorder.grants import GrantEntries
from media.recorder.recovery import STALE_AFTER_S, Recovery
from media.recorder.rows import SpanRows
from media.recorder.spans import Span, SpanSummary
from media.recorder.tap import EncodedTap, install_tap, throttle_remb
from media.recordings import Recording, TrackKind
from media.storage import Storage
from media.subjects import delete_recordings

log = structlog.get_logger("media.recorder")

TICK_S = 0.1  # how often open spans are re-checked when no frame arrives


class Recorder:
    """Owns every recording connection of this process; entered on the app lifespan."""

    def __init__(
        self, runtime: Runtime, gate: GateSource, switch: RecordingSwitch | None = None
    ) -> None:
        self._runtime = runtime
        self._gate = gate
        self.switch = switch or RecordingSwitch(runtime, gate)
        self.switch.watch(self._switched)
        self.store: Storage = open_store(runtime.settings)
        self.grants = GrantEntries(runtime)
        self._rows = SpanRows(runtime, self.store, self.grants, self.spawn)
        self._recovery = Recovery(runtime, self.store)
        self._peers: dict[uuid.UUID, PeerSession] = {}
        self._tasks: set[asyncio.Future[Any]] = set()
        self._background: list[asyncio.Task[None]] = []
        self.frames_arrived = dict.fromkeys(TrackKind, 0)  # complete frames received
        self.frames_written = dict.fromkeys(TrackKind, 0)
        self._closed = False
        self._watched: ConsentGate | None = None  # the gate that tells us of each decision
        self._unwatch: Callable[[], None] | None = None

    @property
    def closed_spans(self) -> deque[SpanSummary]:
        return self._rows.closed_spans

    # lifecycle

    async def __aenter__(self) -> Recorder:
        await self.recover_stale()
        self._background = [
            asyncio.create_task(self._rows.run(), name="recorder-ops"),
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
        if self._unwatch is not None:
            self._unwatch()
        for task in self._background[1:]:
            task.cancel()
        for peer in list(self._peers.values()):
            await self._drop(peer)
        if self._background:
            await self._rows.finish()
            await self._background[0]
        for task in self._background[1:]:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        for pending in list(self._tasks):
            pending.cancel()

    async def recover_stale(self, *, min_age_s: float = STALE_AFTER_S) -> int:
        """See `media.recorder.recovery.Recovery.recover_stale`."""
        return await self._recovery.recover_stale(min_age_s=min_age_s)

    # decisions

    def decide(self, peer: PeerSession, kind: TrackKind) -> CaptureState:
        """May this person's `kind` be written right now?"""
        if not self.switch.is_active(peer.booking_id):
            return CaptureState.IDLE
        gate = self._gate()
        if gate is not self._watched:
            self._watch(gate)
        if gate is None or not gate_confirmed(gate):
            return CaptureState.PAUSED
        if gate.allows(peer.booking_id, peer.subject_id, kind.purpose):
            return CaptureState.RECORDING
        return CaptureState.IDLE

    def _watch(self, gate: ConsentGate | None) -> None:
        if self._unwatch is not None:
            self._unwatch()
        self._watched = gate
        self._unwatch = None if gate is None else watch_decisions(gate, self._decided)

    def _decided(self, event: ConsentChanged) -> None:
        """The gate has just applied a decision: act on it now, before any other frame or
        event is handled (a withdrawal closes the file and drops the frames still held)."""
        peer = self._peers.get(event.subject_id)
        if peer is not None and peer.booking_id == event.booking_id:
            peer.evaluate()

    def frames_held(self) -> int:
        """Frames arrived and allowed but not yet written (`capture.HOLD_S`)."""
        return sum(c.held for peer in self._peers.values() for c in peer.captures)

    def writing(self) -> list[tuple[uuid.UUID, TrackKind, float]]:
        """(person, kind, seconds written so far) of every open span."""
        return [
            (peer.subject_id, capture.kind, capture.span.writer.duration_s)
            for peer in self._peers.values()
            for capture in peer.captures
            if capture.span is not None
        ]

    # the switch (media.control), kept here for the routers and Egress

    def is_active(self, booking_id: uuid.UUID) -> bool:
        return self.switch.is_active(booking_id)

    async def recording_on(self, booking_id: uuid.UUID) -> bool:
        return await self.switch.recording_on(booking_id)

    async def start(self, booking_id: uuid.UUID, by: str = "system") -> None:
        await self.switch.start(booking_id, by)

    async def stop(self, booking_id: uuid.UUID, by: str = "system") -> None:
        await self.switch.stop(booking_id, by)

    async def granting_entries(
        self, booking_id: uuid.UUID, subject_id: uuid.UUID, purpose: Purpose
    ) -> list[str]:
        """The ledger entry that granted this purpose: from the bus, else from consent."""
        return await self.grants.entries(booking_id, subject_id, purpose)

    def _switched(self, booking_id: uuid.UUID, on: bool) -> None:
        if on:
            return
        for peer in self._peers.values():
            if peer.booking_id == booking_id:
                peer.evaluate()

    # connections

    async def answer(self, participant: Participant, sdp: str, kind: str) -> RTCSessionDescription:
        """Accept a page's offer of its tracks; returns the answer."""
        async with self._runtime.db.session() as session:
            data_key = await access_data_key(
                session, self._runtime.keys, participant.external_id, self._runtime.clock.now()
            )
        await self.switch.load(participant.booking_id)
        settings = self._runtime.settings
        servers = [RTCIceServer(urls=url) for url in settings.stun_urls]
        pc = RTCPeerConnection(RTCConfiguration(iceServers=servers or None))
        peer = PeerSession(participant.booking_id, participant.id, data_key, pc)
        booking = participant.booking
        peer.closes_at = booking.join_window(settings.join_lead, settings.join_grace)[1]

        @pc.on("track")
        def on_track(track: MediaStreamTrack) -> None:
            receiver = next(t.receiver for t in pc.getTransceivers() if t.receiver.track is track)
            capture = TrackCapture(self, peer, TrackKind(track.kind), receiver)
            install_tap(receiver, EncodedTap(capture.on_frame))
            throttle_remb(receiver)
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
            capture.detach()

    def connected(self, subject_id: uuid.UUID) -> bool:
        """Whether this person's page has a recording connection on this node."""
        return subject_id in self._peers

    async def settled(self) -> None:
        """Wait until the row and file work queued so far is done."""
        await self._rows.settled()

    def spawn(self, coro: Awaitable[Any]) -> None:
        task = asyncio.ensure_future(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    # called by the captures, on the frame path

    def row_opened(self, peer: PeerSession, span: Span) -> None:
        self._rows.opened(peer, span)

    def row_closed(self, peer: PeerSession, span: Span) -> None:
        self._rows.closed(peer, span)

    def state_changed(self, capture: TrackCapture, state: CaptureState) -> None:
        span = capture.span
        self._rows.publish(
            TrackRecording(
                booking_id=capture.peer.booking_id,
                subject_id=capture.peer.subject_id,
                kind=capture.kind.value,
                state=state.value,
                recording_id=span.recording_id if span else None,
            )
        )

    # background

    async def _run_ticks(self) -> None:
        while True:
            await asyncio.sleep(TICK_S)
            now = self._runtime.clock.now()
            for peer in list(self._peers.values()):
                if peer.closes_at is not None and now >= peer.closes_at:
                    await self._drop(peer)  # the join window closed
                    continue
                peer.evaluate()

    async def _run_events(self) -> None:
        topics = (
            Topic.CONSENT_CHANGED, Topic.RECORDING_CHANGED, Topic.SUBJECT_ERASED,
            Topic.LINK_REVOKED, Topic.BOOKING_CANCELLED, Topic.BOOKING_UPDATED,
        )
        while True:
            try:
                async with self._runtime.bus.subscribe(*topics) as events:
                    async for event in events:
                        await self._on_event(event)
            except asyncio.CancelledError:
                raise
            except Exception:  # the bus went away: the gate fails closed; retry
                log.warning("recorder.bus_lost", exc_info=True)
                await asyncio.sleep(1.0)

    async def _on_event(self, event: BusEvent) -> None:
        if isinstance(event, SubjectErased):
            await self._erased(event.subject_id)
        elif isinstance(event, LinkRevoked | BookingCancelled):
            await self._access_ended(event)
        elif isinstance(event, BookingUpdated):
            self._rescheduled(event)
        elif self.grants.on_event(event):
            for peer in list(self._peers.values()):
                peer.evaluate()
        else:
            self.switch.on_event(event)

    async def _access_ended(self, event: LinkRevoked | BookingCancelled) -> None:
        """A revoked link or a cancelled booking: the connections it admitted close (what
        was written stays, under the person's consent)."""
        person = event.participant_id if isinstance(event, LinkRevoked) else None
        for peer in list(self._peers.values()):
            if peer.booking_id == event.booking_id and person in (None, peer.subject_id):
                await self._drop(peer)

    def _rescheduled(self, event: BookingUpdated) -> None:
        """The window moved: the connections end with the new window."""
        for peer in self._peers.values():
            if peer.booking_id == event.booking_id:
                peer.closes_at = event.ends_at + self._runtime.settings.join_grace

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
            cleanup = Cleanup()
            async with self._runtime.db.session() as session:
                deleted = await delete_recordings(
                    session, store, cleanup, Recording.participant_id == subject_id
                )
            await asyncio.to_thread(cleanup.run)
            log.info("recorder.erased_mid_call", files=deleted)

        self._rows.put(forget)  # after the rows its spans' closing queued
        await peer.pc.close()
