"""One page's recording connection and its tracks: each frame is decided on as it arrives.

At every frame the capture asks the recorder (the switch and the live consent gate) whether
this person allows this purpose *now*; only then is the frame written, into the open span.
"""

from __future__ import annotations

import enum
import time
import uuid
from collections import deque
from collections.abc import Awaitable
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Protocol

from aiortc import RTCPeerConnection
from aiortc.jitterbuffer import JitterFrame
from aiortc.rtcrtpparameters import RTCRtpCodecParameters
from aiortc.rtcrtpreceiver import RTCRtpReceiver

from media.recorder.spans import Span
from media.recordings import TrackKind
from media.storage import Storage

PLI_EVERY_S = 0.5  # while a video span waits for its first key frame
# A frame is written this long after it arrived, so a withdrawal committed on another node
# (heard over the bus a few milliseconds later) still finds every frame that arrived after
# its commit unwritten, and drops it.
HOLD_S = 0.1


class CaptureState(enum.StrEnum):
    RECORDING = "recording"
    PAUSED = "paused"  # the gate cannot confirm consent: fail closed, resume when it can
    IDLE = "idle"  # not consented to, or recording not started for the booking


@dataclass
class PeerSession:
    """One page's recording connection."""

    booking_id: uuid.UUID
    subject_id: uuid.UUID
    data_key: bytes
    pc: RTCPeerConnection
    captures: list[TrackCapture] = field(default_factory=list)
    closes_at: datetime | None = None  # the join window's end: the connection ends with it

    def close_spans(self) -> None:
        for capture in self.captures:
            capture.close_span()

    def evaluate(self) -> None:
        for capture in self.captures:
            capture.evaluate()


class CaptureHost(Protocol):
    """What a capture needs of the recorder that owns it (`media.recorder.Recorder`)."""

    store: Storage
    frames_arrived: dict[TrackKind, int]
    frames_written: dict[TrackKind, int]

    def decide(self, peer: PeerSession, kind: TrackKind) -> CaptureState: ...

    def row_opened(self, peer: PeerSession, span: Span) -> None: ...

    def row_closed(self, peer: PeerSession, span: Span) -> None: ...

    def state_changed(self, capture: TrackCapture, state: CaptureState) -> None: ...

    def spawn(self, coro: Awaitable[Any]) -> None: ...


class TrackCapture:
    """One incoming track of one person: decides at each frame, writes spans."""

    def __init__(
        self, recorder: CaptureHost, peer: PeerSession, kind: TrackKind, receiver: RTCRtpReceiver
    ) -> None:
        self._recorder = recorder
        self.peer = peer
        self.kind = kind
        self._receiver = receiver
        self.span: Span | None = None
        self.state = CaptureState.IDLE
        self._last_pli = 0.0
        self.frames_seen = 0
        self._held: deque[tuple[bytes, int, float]] = deque()  # (data, timestamp, arrival)

    def on_frame(self, codec: RTCRtpCodecParameters, frame: JitterFrame) -> None:
        arrival = time.time()
        self.frames_seen += 1
        self._recorder.frames_arrived[self.kind] += 1
        state = self._recorder.decide(self.peer, self.kind)
        if state is CaptureState.RECORDING:
            self._held.append((frame.data, frame.timestamp, arrival))
            self._release(arrival - HOLD_S)
        else:
            self._refuse()
        self._set_state(state)

    def evaluate(self) -> None:
        """Re-check between frames, so a span closes even when frames stop coming."""
        state = self._recorder.decide(self.peer, self.kind)
        if state is CaptureState.RECORDING:
            self._release(time.time() - HOLD_S)
        else:
            self._refuse()
            self._set_state(state)

    @property
    def held(self) -> int:
        """Frames arrived and allowed, waiting out HOLD_S before they are written."""
        return len(self._held)

    def _release(self, arrived_by: float) -> None:
        """Write the held frames that arrived by `arrived_by` (consent still holds). The span's
        file is opened with the first frame it is given, so no file is made for frames that a
        refusal drops while held; an audio file's row is queued in the same step (`row_opened`),
        a video file's at its first key frame (one that never sees a key frame is deleted)."""
        held = self._held
        while held and held[0][2] <= arrived_by:
            span = self.span or self._open_span()
            data, timestamp, arrival = held.popleft()
            if span.write(data, timestamp, arrival):
                self._recorder.frames_written[self.kind] += 1
                if span.frames == 1:
                    self._recorder.row_opened(self.peer, span)  # starts at its first frame
            if span.waiting_for_keyframe:
                self._request_keyframe()

    def _refuse(self) -> None:
        """Consent is not confirmed now: the frames still held are dropped, the span ends."""
        self._held.clear()
        self._end_span()

    def _open_span(self) -> Span:
        recording_id = uuid.uuid4()
        relative = f"{self.peer.booking_id}/{recording_id}.{self.kind.extension}.cgr"
        file = self._recorder.store.open_writer(relative, self.peer.data_key)
        self.span = Span.open(file, relative, recording_id, self.kind)
        if self.kind is TrackKind.VIDEO:
            self._request_keyframe()
        return self.span

    def close_span(self) -> None:
        """End the span (the connection is going): frames held under consent are written."""
        self._release(float("inf"))
        self._end_span()

    def _end_span(self) -> None:
        self._held.clear()
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

    def detach(self) -> None:
        """The connection is gone: end the span and tell every page (`idle`), so no page keeps
        showing this track as recorded (docs/recording.md, "What the pages are told")."""
        self.close_span()
        self._set_state(CaptureState.IDLE)

    def _set_state(self, state: CaptureState) -> None:
        if state is not self.state:
            self.state = state
            self._recorder.state_changed(self, state)
