"""Finishing a WebM recording: its Duration and Cues, written once the span is over.

The recorder writes WebM live into an encrypted, append-only stream (`media.webm`: a Segment
and Clusters of unknown size), so the file has no Duration and no Cues (the index of key
frames): a player shows no length and cannot seek until it has read the whole file. When a
span closes, and when crash recovery salvages a file, the file is remuxed once with
libavformat's Matroska muxer (PyAV), packets copied as they are (nothing decoded or encoded),
into a seekable output, which lets the muxer write the Duration in the Info and the Cues
right after the header (space reserved for them from a first pass counting key frames), so a
player learns both from the first bytes. The result is sealed under the same data key in
place of the original (`media.storage.reseal`: a temporary file, then an atomic rename).

Plaintext never touches the disk, and memory stays small whatever the file's length: the
sealed file is decrypted as it is read (twice: once to count key frames, once to copy); of the
output only the header and the reserved Cues are held in memory (the muxer goes back there at
the end), while the clusters after them are sealed into a spill file as they come, read back
once when the finished file is sealed. A file whose plaintext ends mid-block (cut by a crash)
keeps every whole block.
"""

from __future__ import annotations

import io
import itertools
import secrets
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path

import av
import structlog

from media.storage import MAX_CHUNK, EncryptedWriter, IntegrityError, decrypt, reseal

log = structlog.get_logger(__name__)

CUES_BASE_BYTES = 1024  # room for the Cues element itself
CUE_POINT_BYTES = 48  # a CuePoint takes about 20: this leaves a wide margin
HEAD_MARGIN_BYTES = 256 * 1024  # held in memory beyond the reserved Cues (the header is ~1 KiB)

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


class SpillOutput:
    """A seekable output for the muxer that holds only its first `head_limit` bytes in
    memory: the header, where the muxer goes back to write the Segment's size, the Duration
    and the Cues (into the space reserved for them). What comes after (the clusters, written
    once and in order) is sealed as it comes into `tail`, under the same key. A write behind
    the end of what was sealed cannot be honoured: it raises, and the file is left as it was."""

    def __init__(self, head_limit: int, tail: EncryptedWriter) -> None:
        self.head = bytearray()
        self._limit = head_limit
        self._tail = tail
        self._end = head_limit  # the end of what was sealed into `tail`
        self._at = 0

    def write(self, data: bytes) -> int:
        written, at = len(data), self._at
        if at < self._limit:
            if at > len(self.head):
                self.head.extend(bytes(at - len(self.head)))
            part = data[: self._limit - at]
            self.head[at : at + len(part)] = part
            data, at = data[len(part) :], at + len(part)
        if data:
            if at != self._end or len(self.head) < self._limit:
                raise OSError("the muxer wrote behind what was already sealed")
            self._tail.write(data)
            self._end = at = at + len(data)
        self._at = at
        return written

    def seek(self, offset: int, whence: int = io.SEEK_SET) -> int:
        end = self._end if self._end > self._limit else len(self.head)
        self._at = {io.SEEK_SET: 0, io.SEEK_CUR: self._at, io.SEEK_END: end}[whence] + offset
        return self._at

    def tell(self) -> int:
        return self._at


def _remux(plaintext: Plaintext, output: SpillOutput, reserve: int) -> int:
    """Copy every whole frame of `plaintext()` into `output` with Cues reserved at the front;
    the frames copied."""
    frames = 0
    options = {"reserve_index_space": str(reserve)}
    with av.open(output, "w", format="webm", options=options) as target:
        copied = None
        for source, packet in _demux(plaintext):
            if copied is None:
                copied = target.add_stream_from_template(source.streams.video[0])
            packet.stream = copied
            target.mux(packet)
            frames += 1
    return frames


def _rechunk(pieces: Iterable[bytes | bytearray]) -> Iterator[bytes]:
    """The same bytes in pieces of exactly `MAX_CHUNK` (the last shorter): one chunk each."""
    buffer = bytearray()
    for piece in pieces:
        buffer += piece
        while len(buffer) >= MAX_CHUNK:
            yield bytes(buffer[:MAX_CHUNK])
            del buffer[:MAX_CHUNK]
    if buffer:
        yield bytes(buffer)


def finalize_webm(
    path: Path, key: bytes, *, salvage: bool = False, frames: int | None = None
) -> tuple[int, str] | None:
    """Give the sealed WebM file at `path` its Duration and Cues, sealed again in its place;
    the new plaintext's (size, sha256), or None if the file was left as it was (nothing to
    finish, it could not be read, or it would not keep the `frames` the writer wrote:
    libavformat skips what it cannot parse, and finishing must never drop media). `salvage`
    reads a file a crash left without its final chunk (its whole chunks, then its whole
    blocks), and the result is sealed complete."""

    def plaintext() -> Iterator[bytes]:
        return decrypt(path, key, salvage=salvage)

    spill = path.with_name(f"{path.name}.{secrets.token_hex(4)}.finishing")
    tail = EncryptedWriter(spill, key)
    try:
        try:
            keyframes = sum(1 for _, packet in _demux(plaintext) if packet.is_keyframe)
        except av.error.FFmpegError:  # not even a header: nothing a player could open
            return None
        if keyframes == 0:
            return None
        reserve = CUES_BASE_BYTES + CUE_POINT_BYTES * keyframes
        output = SpillOutput(reserve + HEAD_MARGIN_BYTES, tail)
        kept = _remux(plaintext, output, reserve)
        tail.close()
        if frames is not None and kept != frames:
            log.warning("recording.finalize_lost_frames", path=path.name, frames=frames,
                        kept=kept)
            return None
        return reseal(path, key, _rechunk(itertools.chain([output.head], decrypt(spill, key))))
    except (av.error.FFmpegError, IntegrityError, OSError):
        log.warning("recording.finalize_failed", path=path.name, exc_info=True)
        return None
    finally:
        tail.abandon()
        spill.unlink(missing_ok=True)
