"""Encrypted recording files: what goes in comes out, and any tampering is caught."""

from __future__ import annotations

import os
import struct
from pathlib import Path

import pytest

from core.crypto import Keyring
from media.storage import (
    CHUNK_HEAD,
    HEADER_BYTES,
    NONCE_BYTES,
    IntegrityError,
    RecordingStore,
    decrypt,
    plaintext_size,
)


def write_file(store: RecordingStore, key: bytes, pieces: list[bytes]) -> Path:
    writer = store.open_writer("b/one.ogg.cgr", key)
    for piece in pieces:
        writer.write(piece)
        writer.flush()  # one chunk per piece
    writer.close()
    return writer.path


def chunk_spans(path: Path) -> list[tuple[int, int]]:
    """(offset, total length) of each chunk on disk."""
    data = path.read_bytes()
    spans, at = [], HEADER_BYTES
    while at < len(data):
        (length,) = CHUNK_HEAD.unpack_from(data, at)
        total = CHUNK_HEAD.size + NONCE_BYTES + length
        spans.append((at, total))
        at += total
    return spans


@pytest.fixture
def store(tmp_path: Path) -> RecordingStore:
    return RecordingStore(tmp_path / "recordings")


@pytest.fixture
def key() -> bytes:
    return Keyring.new_data_key()


PIECES = [os.urandom(1000), os.urandom(5), os.urandom(70_000), b"tail"]
PLAIN = b"".join(PIECES)


def test_round_trip_and_size(store: RecordingStore, key: bytes) -> None:
    path = write_file(store, key, PIECES)
    assert PLAIN not in path.read_bytes()
    assert b"".join(decrypt(path, key)) == PLAIN
    assert plaintext_size(path) == len(PLAIN)


@pytest.mark.parametrize(("start", "end"), [(0, 1), (999, 1006), (1003, 60_000), (500, None)])
def test_ranges_decrypt_only_what_is_asked(
    store: RecordingStore, key: bytes, start: int, end: int | None
) -> None:
    path = write_file(store, key, PIECES)
    assert b"".join(decrypt(path, key, start=start, end=end)) == PLAIN[start:end]


def test_wrong_key_fails(store: RecordingStore, key: bytes) -> None:
    path = write_file(store, key, PIECES)
    with pytest.raises(IntegrityError):
        b"".join(decrypt(path, Keyring.new_data_key()))


def test_flipped_bit_is_detected(store: RecordingStore, key: bytes) -> None:
    path = write_file(store, key, PIECES)
    data = bytearray(path.read_bytes())
    data[HEADER_BYTES + 40] ^= 0x01
    path.write_bytes(bytes(data))
    with pytest.raises(IntegrityError):
        b"".join(decrypt(path, key))


def test_reordered_chunks_are_detected(store: RecordingStore, key: bytes) -> None:
    path = write_file(store, key, PIECES)
    data = path.read_bytes()
    (a0, al), (b0, bl) = chunk_spans(path)[:2]
    swapped = data[:a0] + data[b0 : b0 + bl] + data[a0 : a0 + al] + data[b0 + bl :]
    path.write_bytes(swapped)
    with pytest.raises(IntegrityError):
        b"".join(decrypt(path, key))


def test_truncation_at_a_chunk_boundary_is_detected(store: RecordingStore, key: bytes) -> None:
    path = write_file(store, key, PIECES)
    last_at, _ = chunk_spans(path)[-1]
    path.write_bytes(path.read_bytes()[:last_at])
    with pytest.raises(IntegrityError, match="truncated"):
        b"".join(decrypt(path, key))


def test_chunk_from_another_file_is_detected(store: RecordingStore, key: bytes) -> None:
    path = write_file(store, key, PIECES)
    other = store.open_writer("b/two.ogg.cgr", key)
    other.write(b"x" * 1000)
    other.close()
    first_at, first_len = chunk_spans(path)[0]
    foreign_at, foreign_len = chunk_spans(other.path)[0]
    foreign = other.path.read_bytes()[foreign_at : foreign_at + foreign_len]
    data = path.read_bytes()
    path.write_bytes(data[:first_at] + foreign + data[first_at + first_len :])
    with pytest.raises(IntegrityError):
        b"".join(decrypt(path, key))


def test_recover_keeps_the_whole_chunks_of_a_crashed_writer(
    store: RecordingStore, key: bytes
) -> None:
    writer = store.open_writer("b/crashed.webm.cgr", key)
    for piece in PIECES[:3]:
        writer.write(piece)
        writer.flush()
    writer.write(b"never flushed")
    writer.abandon()  # as kill -9 leaves it: no final chunk
    with writer.path.open("ab") as handle:  # and a torn chunk header at the end
        handle.write(struct.pack(">I", 999))
    with pytest.raises(IntegrityError):
        b"".join(decrypt(writer.path, key))
    size, _ = store.recover("b/crashed.webm.cgr", key)
    expected = b"".join(PIECES[:3])
    assert size == len(expected)
    assert b"".join(store.read("b/crashed.webm.cgr", key)) == expected


def test_paths_cannot_escape_the_store(store: RecordingStore, key: bytes) -> None:
    with pytest.raises(ValueError, match="escapes"):
        store.open_writer("../outside.cgr", key)
