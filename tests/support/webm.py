"""Reading what a finished WebM file declares: its Segment's top-level elements and its Cues.

A small EBML walker (RFC 8794, RFC 9559), independent of the muxer that wrote the file, so a
test sees the index a player would read rather than what libavformat would rebuild by scanning.
"""

from __future__ import annotations

import io

import av

SEGMENT = 0x18538067
CUES = 0x1C53BB6B
CUE_POINT = 0xBB
CUE_TIME = 0xB3
UNKNOWN = -1


def _vint(data: bytes, at: int, *, keep_marker: bool) -> tuple[int, int]:
    first = data[at]
    length = 9 - first.bit_length()
    if not 1 <= length <= 8:
        raise ValueError(f"not an EBML number at {at}")
    raw = int.from_bytes(data[at : at + length], "big")
    if keep_marker:
        return raw, length
    value = raw & ((1 << (7 * length)) - 1)
    return (UNKNOWN if value == (1 << (7 * length)) - 1 else value), length


def elements(data: bytes, start: int, end: int) -> list[tuple[int, int, int]]:
    """(id, data offset, data size) of each element in data[start:end]; an unknown size
    runs to `end`."""
    found = []
    at = start
    while at < end:
        eid, id_len = _vint(data, at, keep_marker=True)
        size, size_len = _vint(data, at + id_len, keep_marker=False)
        body = at + id_len + size_len
        size = end - body if size == UNKNOWN else size
        found.append((eid, body, size))
        at = body + size
    return found


def segment_children(data: bytes) -> tuple[bool, list[int]]:
    """Whether the Segment declares its size, and the ids of its top-level elements."""
    at = data.index(SEGMENT.to_bytes(4, "big")) + 4
    size, size_len = _vint(data, at, keep_marker=False)
    body = at + size_len
    end = len(data) if size == UNKNOWN else body + size
    return size != UNKNOWN, [eid for eid, _, _ in elements(data, body, end)]


def cue_times_ms(data: bytes) -> list[int]:
    """The CueTime of every CuePoint in the Segment's Cues (empty without Cues)."""
    top = elements(data, 0, len(data))
    (body, size) = next((b, s) for eid, b, s in top if eid == SEGMENT)
    times = []
    for eid, cues_at, cues_size in elements(data, body, body + size):
        if eid != CUES:
            continue
        for point_id, point_at, point_size in elements(data, cues_at, cues_at + cues_size):
            assert point_id == CUE_POINT
            for child, child_at, child_size in elements(data, point_at, point_at + point_size):
                if child == CUE_TIME:
                    times.append(int.from_bytes(data[child_at : child_at + child_size], "big"))
    return times


def keyframe_times_ms(data: bytes) -> list[int]:
    """The time of every key frame, as demuxed."""
    with av.open(io.BytesIO(data)) as container:
        stream = container.streams.video[0]
        return [
            round(float(packet.pts * packet.time_base) * 1000)
            for packet in container.demux(stream)
            if packet.pts is not None and packet.is_keyframe
        ]


def playback(data: bytes) -> tuple[float | None, int, int]:
    """What a player gets from the file through libavformat: its declared duration (seconds,
    None if it declares none), the video packets with a timestamp, and how many of them
    decoded to a frame (decoding a frame cut in half raises)."""
    with av.open(io.BytesIO(data)) as container:
        duration = None if container.duration is None else container.duration / av.time_base
        stream = container.streams.video[0]
        packets = decoded = 0
        for packet in container.demux(stream):
            if packet.pts is None:
                continue
            packets += 1
            decoded += len(packet.decode())
    return duration, packets, decoded
