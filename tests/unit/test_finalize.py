"""WebM files finished with Duration and Cues: whole, and cut by a crash."""

from __future__ import annotations

import functools
import hashlib
import io
import os
from pathlib import Path

import pytest

from media.finalize import SpillOutput, finalize_webm
from media.storage import EncryptedWriter, LocalStore, decrypt
from media.webm import WebmVp8Writer
from tests.support.media import encode_vp8
from tests.support.webm import (
    CUES,
    cue_times_ms,
    keyframe_times_ms,
    playback,
    segment_children,
)

INFO, TRACKS, CLUSTER = 0x1549A966, 0x1654AE6B, 0x1F43B675


@functools.cache
def frames() -> list[bytes]:
    return encode_vp8(150, keyframe_every=30)  # five seconds, a key frame every second


def record(store: LocalStore, key: bytes, *, cut_after: int | None = None) -> Path:
    """Five seconds written as the recorder writes them; or `cut_after` frames and the start
    of a block, and then the process dies (no final chunk)."""
    file = store.open_writer("b/v.webm.cgr", key)
    writer = WebmVp8Writer(file)
    for index, frame in enumerate(frames()):
        if index == cut_after:
            file.write(b"\xa3\x84\x81\x00")  # a SimpleBlock cut inside its header
            file.flush()
            file.abandon()
            return file.path
        writer.write(frame, index * 3000)
    writer.close()
    return file.path


def finished_file(path: Path, key: bytes, finished: tuple[int, str] | None) -> bytes:
    """The file sealed again, complete, whose size and hash `finalize_webm` returned."""
    data = b"".join(decrypt(path, key))  # reading to the end checks the final chunk
    assert finished == (len(data), hashlib.sha256(data).hexdigest())
    return data


def assert_plays(data: bytes, seconds: float, frames: int) -> None:
    """The declared duration is `seconds` (a frame's length either side), and each of the
    `frames` packets decodes to a frame."""
    duration, packets, decoded = playback(data)
    assert duration is not None
    assert abs(duration - seconds) <= 0.034
    assert packets == decoded == frames


def test_a_closed_file_gets_its_duration_and_cues(tmp_path: Path) -> None:
    key = os.urandom(32)
    store = LocalStore(tmp_path)
    path = record(store, key)
    before = b"".join(decrypt(path, key))
    assert segment_children(before)[0] is False  # as written live: no size, no index
    assert CUES not in segment_children(before)[1]

    finished = finalize_webm(path, key)

    data = finished_file(path, key, finished)
    assert [p.name for p in path.parent.iterdir()] == [path.name]  # no spill file left
    known, children = segment_children(data)
    assert known
    assert children.index(CUES) < children.index(CLUSTER)  # the index before the media
    assert {INFO, TRACKS} <= set(children)
    assert cue_times_ms(data) == keyframe_times_ms(data) == [0, 1000, 2000, 3000, 4000]
    assert_plays(data, 5.0, 150)


def test_a_file_cut_by_a_crash_keeps_every_whole_frame(tmp_path: Path) -> None:
    key = os.urandom(32)
    store = LocalStore(tmp_path)
    path = record(store, key, cut_after=100)

    finished = finalize_webm(path, key, salvage=True)

    data = finished_file(path, key, finished)
    assert segment_children(data)[0]
    assert cue_times_ms(data) == [0, 1000, 2000, 3000]
    assert_plays(data, 3.3, 100)  # the block cut in its header is gone


def test_a_file_without_a_whole_frame_is_left_as_it_is(tmp_path: Path) -> None:
    key = os.urandom(32)
    store = LocalStore(tmp_path)
    path = record(store, key, cut_after=0)  # the process died before the first frame
    sealed = path.read_bytes()

    assert finalize_webm(path, key, salvage=True) is None
    assert path.read_bytes() == sealed


def test_a_file_damaged_before_its_end_is_left_as_it_is(tmp_path: Path) -> None:
    """Finishing never drops media: libavformat skips a cluster that does not parse in the
    middle of a file, so a result short of the frames the writer wrote is not kept."""
    key = os.urandom(32)
    store = LocalStore(tmp_path)
    path = record(store, key)
    plaintext = bytearray(b"".join(decrypt(path, key)))
    middle = plaintext.index(b"\x1f\x43\xb6\x75", len(plaintext) // 2)  # a Cluster
    plaintext[middle : middle + 12] = b"\xff" * 12  # its id and size: not EBML any more
    damaged = store.open_writer("b/damaged.webm.cgr", key)
    damaged.write(bytes(plaintext))
    damaged.close()
    sealed = damaged.path.read_bytes()

    assert finalize_webm(damaged.path, key, frames=150) is None
    assert damaged.path.read_bytes() == sealed


def test_the_spilled_part_of_the_output_is_written_once_in_order(tmp_path: Path) -> None:
    """Only the head is held in memory and may be written over; past it, bytes go to the
    sealed spill in order, and a write back there fails (the file is then left as it was)."""
    key = os.urandom(32)
    tail = EncryptedWriter(tmp_path / "spill.cgr", key)
    output = SpillOutput(8, tail)
    output.write(b"headHEAD" + b"tail")
    output.seek(4)
    output.write(b"head")  # patched in memory
    assert output.seek(0, io.SEEK_END) == 12
    output.write(b"more")
    assert bytes(output.head) == b"headhead"
    output.seek(9)
    with pytest.raises(OSError, match="behind"):
        output.write(b"x")
    tail.close()
    assert b"".join(decrypt(tail.path, key)) == b"tailmore"
