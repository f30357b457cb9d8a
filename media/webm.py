"""WebM (Matroska) writer: VP8 frames as SimpleBlocks, written live, no transcoding.

Shape of a live WebM stream (Matroska spec, RFC 9559; WebM byte stream): an EBML header,
then a Segment and Clusters of *unknown size* (RFC 9559 §6.2), so the file is valid at every
block boundary and a killed process leaves a playable prefix. Frames come from RTP already
reassembled (RFC 7741 payload descriptor removed by aiortc's depacketizer); the VP8 frame
tag says whether a frame is a key frame and, for key frames, its size (RFC 6386 §9.1).
"""

from __future__ import annotations

import secrets
import struct

from media.ogg import Sink

VIDEO_RATE = 90_000  # RTP clock of VP8 (RFC 7741 §4.1)
TIMESTAMP_SCALE_NS = 1_000_000  # block timestamps in milliseconds
CLUSTER_MIN_MS = 1_000  # start a new cluster at the first key frame after this
CLUSTER_MAX_MS = 5_000  # and always after this (block timestamps are int16 ms)

_UNKNOWN_SIZE = b"\x01\xff\xff\xff\xff\xff\xff\xff"
_KEYFRAME_FLAG = 0x80

EBML = 0x1A45DFA3
SEGMENT = 0x18538067
INFO = 0x1549A966
TRACKS = 0x1654AE6B
CLUSTER = 0x1F43B675


def vint_size(size: int) -> bytes:
    """An EBML variable-size integer (RFC 8794 §4) in the fewest octets."""
    for length in range(1, 9):
        if size < (1 << (7 * length)) - 1:
            return (size | (1 << (7 * length))).to_bytes(length, "big")
    raise ValueError("element too large")


def element_id(value: int) -> bytes:
    return value.to_bytes((value.bit_length() + 7) // 8, "big")


def element(eid: int, payload: bytes) -> bytes:
    return element_id(eid) + vint_size(len(payload)) + payload


def uint(eid: int, value: int) -> bytes:
    return element(eid, value.to_bytes(max(1, (value.bit_length() + 7) // 8), "big"))


def string(eid: int, value: str) -> bytes:
    return element(eid, value.encode())


def vp8_is_keyframe(frame: bytes) -> bool:
    """Bit 0 of the 3-byte frame tag is 0 for key frames (RFC 6386 §9.1)."""
    return bool(frame) and not frame[0] & 0x01


def vp8_dimensions(frame: bytes) -> tuple[int, int] | None:
    """(width, height) of a key frame: after the tag, start code 9d 01 2a, then 14-bit sizes."""
    if len(frame) < 10 or not vp8_is_keyframe(frame) or frame[3:6] != b"\x9d\x01\x2a":
        return None
    width, height = struct.unpack_from("<HH", frame, 6)
    return width & 0x3FFF, height & 0x3FFF


def _header(width: int, height: int) -> bytes:
    ebml = element(
        EBML,
        uint(0x4286, 1)  # EBMLVersion
        + uint(0x42F7, 1)  # EBMLReadVersion
        + uint(0x42F2, 4)  # EBMLMaxIDLength
        + uint(0x42F3, 8)  # EBMLMaxSizeLength
        + string(0x4282, "webm")  # DocType
        + uint(0x4287, 4)  # DocTypeVersion
        + uint(0x4285, 2),  # DocTypeReadVersion
    )
    info = element(
        INFO,
        uint(0x2AD7B1, TIMESTAMP_SCALE_NS)  # TimestampScale
        + string(0x4D80, "callgate")  # MuxingApp
        + string(0x5741, "callgate"),  # WritingApp
    )
    video = element(0xE0, uint(0xB0, width) + uint(0xBA, height))  # PixelWidth/Height
    track = element(
        0xAE,  # TrackEntry
        uint(0xD7, 1)  # TrackNumber
        + uint(0x73C5, secrets.randbits(56) or 1)  # TrackUID
        + uint(0x83, 1)  # TrackType: video
        + uint(0x9C, 0)  # FlagLacing
        + string(0x86, "V_VP8")  # CodecID
        + video,
    )
    return ebml + element_id(SEGMENT) + _UNKNOWN_SIZE + info + element(TRACKS, track)


class WebmVp8Writer:
    """Writes VP8 frames with their RTP timestamps (90 kHz). Frames before the first key
    frame are dropped: nothing could decode them."""

    def __init__(self, sink: Sink, *, flush_every_ms: int = 500) -> None:
        self._sink = sink
        self._flush_every_ms = flush_every_ms
        self._origin: int | None = None
        self._cluster_ms: int | None = None
        self._last_ms = 0
        self._last_flush_ms = 0
        self._closed = False
        self.frames = 0
        self.dropped = 0

    @property
    def started(self) -> bool:
        return self._origin is not None

    @property
    def duration_s(self) -> float:
        return self._last_ms / 1000

    def write(self, frame: bytes, rtp_timestamp: int) -> bool:
        """Append one frame; False if dropped while waiting for the first key frame."""
        if self._closed:
            raise ValueError("the writer is closed")
        keyframe = vp8_is_keyframe(frame)
        origin = self._origin
        if origin is None:
            size = vp8_dimensions(frame)
            if size is None:
                self.dropped += 1
                return False
            origin = self._origin = rtp_timestamp
            self._sink.write(_header(*size))
        ms = max((rtp_timestamp - origin) * 1000 // VIDEO_RATE, self._last_ms)
        cluster_ms = self._cluster_ms
        if cluster_ms is None or self._needs_cluster(ms - cluster_ms, keyframe):
            self._sink.write(element_id(CLUSTER) + _UNKNOWN_SIZE + uint(0xE7, ms))
            cluster_ms = self._cluster_ms = ms
        block = (
            b"\x81"  # track number 1 as a vint
            + struct.pack(">hB", ms - cluster_ms, _KEYFRAME_FLAG if keyframe else 0)
            + frame
        )
        self._sink.write(element(0xA3, block))  # SimpleBlock
        self._last_ms = ms
        self.frames += 1
        if ms - self._last_flush_ms >= self._flush_every_ms:
            self._sink.flush()
            self._last_flush_ms = ms
        return True

    @staticmethod
    def _needs_cluster(age_ms: int, keyframe: bool) -> bool:
        return age_ms >= CLUSTER_MAX_MS or (keyframe and age_ms >= CLUSTER_MIN_MS)

    def close(self) -> None:
        """Close the sink; idempotent. Unknown-size elements need no trailer."""
        if self._closed:
            return
        self._closed = True
        self._sink.close()
