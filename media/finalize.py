"""Finishing a WebM recording: its Duration and Cues, written once the span is over.

The recorder writes WebM live into an encrypted, append-only stream (`media.webm`: a Segment
and Clusters of unknown size), so the file has no Duration and no Cues (the index of key
frames): a player shows no length and cannot seek until it has read the whole file. When a
span closes, and when crash recovery salvages a file, the file is remuxed once with
libavformat's Matroska muxer (PyAV), packets copied as they are (nothing decoded or encoded),
into a seekable output in memory, which lets the muxer write the Duration in the Info and the
Cues right after the header (space reserved for them from a first pass counting key frames),
so a player learns both from the first bytes. The result is sealed under the same data key in
place of the original (`media.storage.reseal`: a temporary file, then an atomic rename).

Plaintext never touches the disk: the sealed file is decrypted as it is read (twice: once to
count key frames, once to copy), and only the finished file is held in memory until it is
sealed. A file whose plaintext ends mid-block (cut by a crash) keeps every whole block.
"""

from __future__ import annotations

import io
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path

import av
import structlog

from media.storage import MAX_CHUNK, IntegrityError, decrypt, reseal

log = structlog.get_logger(__name__)

CUES_BASE_BYTES = 1024  # room for the Cues element itself
CUE_POINT_BYTES = 48  # a CuePoint takes about 20: this leaves a wide margin

Plaintext = Callable[[], Iterable[bytes]]


class _Forward:
    """A read-only, non-seekable file over plaintext pieces (libavformat then reads it as a
    stream, front to back, as the file was written)."""

    def __init__(self, pieces: Iterable[bytes]) -> None:
        self._pieces: Iterator[bytes] = iter(pieces)
        self._piece = b""
        self._at = 0
        self.exhausted = False

    def read(self, size: int) -> bytes:
        parts: list[bytes] = []
        while size > 0:
            if self._at >= len(self._piece):
                piece = next(self._pieces, None)
                if piece is None:
                    self.exhausted = True
                    break
                self._piece, self._at = piece, 0
            part = self._piece[self._at : self._at + size]
            self._at += len(part)
            size -= len(part)
            parts.append(part)
        return b"".join(parts)


def _demux(
    plaintext: Plaintext,
) -> Iterator[tuple[av.container.InputContainer, av.Packet[av.VideoStream]]]:
    """(container, packet) of every whole video packet; a block cut at the very end (by a
    crash) just ends it, an error before the end is raised (nothing would be dropped)."""
    reader = _Forward(plaintext())
    with av.open(reader, "r", format="matroska") as source:
        stream = source.streams.video[0]
        packets = source.demux(stream)
        while True:
            try:
                packet = next(packets)
            except StopIteration:
                return
            except av.error.FFmpegError:
                if reader.exhausted:  # a block cut by a crash: keep what came before
                    return
                raise
            if packet.dts is not None and packet.size:
                yield source, packet


def remux_webm(plaintext: Plaintext) -> tuple[bytes, int] | None:
    """The WebM file `plaintext()` yields, with Duration and Cues, and the frames it holds;
    None if it holds no whole frame (nothing to finish). `plaintext` is called twice."""
    try:
        keyframes = sum(1 for _, packet in _demux(plaintext) if packet.is_keyframe)
    except av.error.FFmpegError:  # not even a header: nothing a player could open
        return None
    if keyframes == 0:
        return None
    reserve = CUES_BASE_BYTES + CUE_POINT_BYTES * keyframes
    out = io.BytesIO()
    options = {"reserve_index_space": str(reserve)}
    with av.open(out, "w", format="webm", options=options) as target:
        copied = None
        frames = 0
        for source, packet in _demux(plaintext):
            if copied is None:
                copied = target.add_stream_from_template(source.streams.video[0])
            packet.stream = copied
            target.mux(packet)
            frames += 1
    return out.getvalue(), frames


def finalize_webm(
    path: Path, key: bytes, *, salvage: bool = False, frames: int | None = None
) -> tuple[int, str] | None:
    """Give the sealed WebM file at `path` its Duration and Cues, sealed again in its place;
    the new plaintext's (size, sha256), or None if the file was left as it was (nothing to
    finish, it could not be read, or it would not keep the `frames` the writer wrote:
    libavformat skips what it cannot parse, and finishing must never drop media). `salvage`
    reads a file a crash left without its final chunk (its whole chunks, then its whole
    blocks), and the result is sealed complete."""
    try:
        finished = remux_webm(lambda: decrypt(path, key, salvage=salvage))
    except (av.error.FFmpegError, IntegrityError, OSError):
        log.warning("recording.finalize_failed", path=path.name, exc_info=True)
        return None
    if finished is None:
        return None
    data, kept = finished
    if frames is not None and kept != frames:
        log.warning("recording.finalize_lost_frames", path=path.name, frames=frames, kept=kept)
        return None
    view = memoryview(data)
    pieces = (bytes(view[at : at + MAX_CHUNK]) for at in range(0, len(view), MAX_CHUNK))
    return reseal(path, key, pieces)
