"""The encoded-frame tap: a receiver's complete frames, taken before its decoder.

`RTCRtpReceiver` (aiortc 1.16) reassembles RTP packets in its jitter buffer and hands each
complete frame (Opus packet, or VP8 frame with the RFC 7741 descriptor already stripped) to its
decoder thread through a queue, from `_handle_rtp_packet` on the event loop. `EncodedTap` takes
that queue's place, so the frame reaches the capture synchronously and is never decoded (the
decoder thread idles until the receiver stops).
"""

from __future__ import annotations

import math
import queue
import time
from collections.abc import Callable

import structlog
from aiortc.jitterbuffer import JitterFrame
from aiortc.rtcrtpparameters import RTCRtpCodecParameters
from aiortc.rtcrtpreceiver import RTCRtpReceiver
from aiortc.rtp import RTCP_PSFB_APP, AnyRtcpPacket, RtcpPsfbPacket

log = structlog.get_logger("media.recorder")

FrameSink = Callable[[RTCRtpCodecParameters, JitterFrame], None]
REMB_EVERY_S = 0.25


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


def throttle_remb(receiver: RTCRtpReceiver) -> None:
    """Send a receiver's REMB (RTCP PSFB APP, draft-alvestrand-rmcat-remb) at most every
    REMB_EVERY_S. aiortc sends one with every packet while its estimator sees overuse, which on
    a busy host is most packets: a third of the recorder's CPU went to those sends (py-spy),
    and each sender spent as much taking them in. Four a second still steer the sender."""
    send = receiver._send_rtcp
    last = -math.inf

    async def send_rtcp(packet: AnyRtcpPacket) -> None:
        nonlocal last
        if isinstance(packet, RtcpPsfbPacket) and packet.fmt == RTCP_PSFB_APP:
            now = time.monotonic()
            if now - last < REMB_EVERY_S:
                return
            last = now
        await send(packet)

    setattr(receiver, "_send_rtcp", send_rtcp)  # noqa: B010 (an instance's, not the class's)
