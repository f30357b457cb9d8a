"""Recording files at rest: streaming, chunked AES-256-GCM under the person's data key.

Layout of one file (all integers big-endian):

    header  = MAGIC (8) | file id (16)
    chunk*  = ciphertext length (4) | nonce (12) | AES-GCM(plaintext) with 16-byte tag

Each chunk's associated data is MAGIC | file id | chunk index (8) | final flag (1) (the
STREAM construction of Hoang, Reyhanitabar, Rogaway and Vizár): reordering, dropping or
splicing chunks between files fails authentication, and a file whose last chunk is not marked
final was truncated. A writer emits a chunk at every `flush()` (the media writers flush at
least every second), so a killed process leaves whole chunks that `recover()` can salvage.

Where files live is a `Storage` (`media.backends.open_store` picks one): `LocalStore` keeps
them in `settings.data_dir/recordings` (the default); `media.objectstore.ObjectStore`
(CALLGATE_STORAGE_BACKEND=s3) spools them there while they are written and moves each sealed
file to an S3-compatible bucket, ciphertext only. Callers name a file by its relative path
(the row's `path`) and never branch on the backend.
"""

from __future__ import annotations

import hashlib
import os
import secrets
import struct
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO, Protocol

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

MAGIC = b"CGREC\x00\x01\n"
FILE_ID_BYTES = 16
NONCE_BYTES = 12
TAG_BYTES = 16
HEADER_BYTES = len(MAGIC) + FILE_ID_BYTES
CHUNK_HEAD = struct.Struct(">I")
MAX_CHUNK = 1 << 20  # plaintext bytes buffered before a chunk is emitted anyway


class IntegrityError(Exception):
    """The file was altered, truncated, reordered, or the key is not its key."""


def _aad(file_id: bytes, index: int, final: bool) -> bytes:
    return MAGIC + file_id + struct.pack(">QB", index, 1 if final else 0)


class EncryptedWriter:
    """A write-only sink encrypting as it goes; counts and hashes the plaintext."""

    def __init__(self, path: Path, key: bytes) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        self.path = path
        self._aead = AESGCM(key)
        self._file_id = secrets.token_bytes(FILE_ID_BYTES)
        self._file: BinaryIO = path.open("xb")
        self._file.write(MAGIC + self._file_id)
        self._buffer: list[bytes] = []
        self._buffered = 0
        self._index = 0
        self._hash = hashlib.sha256()
        self.size = 0
        self.closed = False

    @property
    def sha256(self) -> str:
        return self._hash.hexdigest()

    def write(self, data: bytes) -> None:
        if self.closed:
            raise ValueError("the writer is closed")
        self._buffer.append(data)
        self._buffered += len(data)
        self._hash.update(data)
        self.size += len(data)
        if self._buffered >= MAX_CHUNK:
            self.flush()

    def flush(self) -> None:
        """Emit what is buffered as one chunk and hand it to the OS (survives kill -9)."""
        if self._buffered and not self.closed:
            self._emit(final=False)

    def close(self) -> None:
        """Emit the final chunk (possibly empty) and close; idempotent."""
        if self.closed:
            return
        self._emit(final=True)
        self.closed = True
        self._file.close()

    def abandon(self) -> None:
        """Close without a final chunk (the file then reads as truncated)."""
        if not self.closed:
            self.closed = True
            self._file.close()

    def _emit(self, *, final: bool) -> None:
        plaintext = b"".join(self._buffer)
        nonce = secrets.token_bytes(NONCE_BYTES)
        sealed = self._aead.encrypt(nonce, plaintext, _aad(self._file_id, self._index, final))
        self._file.write(CHUNK_HEAD.pack(len(sealed)) + nonce + sealed)
        self._file.flush()
        self._index += 1
        self._buffer = []
        self._buffered = 0


def reseal(path: Path, key: bytes, pieces: Iterable[bytes]) -> tuple[int, str]:
    """Seal `pieces` (plaintext, each at most `MAX_CHUNK`) in place of the file at `path`,
    which they may be read from as they come: a new file beside it, renamed over it once
    complete, so a reader or a crash sees the old file or the new one, never a mix (two
    processes re-sealing one file each write their own; the last rename wins). The new
    plaintext's (size, sha256)."""
    temporary = path.with_name(f"{path.name}.{secrets.token_hex(4)}.recovering")
    writer = EncryptedWriter(temporary, key)
    try:
        for piece in pieces:
            writer.write(piece)
        writer.close()
    except BaseException:
        writer.abandon()
        temporary.unlink(missing_ok=True)
        raise
    os.replace(temporary, path)
    return writer.size, writer.sha256


class ForwardReader(Protocol):
    """What reading a file needs: a file, or a streaming body that `seek`s only ahead."""

    def read(self, size: int, /) -> bytes: ...

    def tell(self) -> int: ...

    def seek(self, position: int, /) -> int: ...


def _read_header(handle: ForwardReader) -> bytes:
    header = handle.read(HEADER_BYTES)
    if len(header) != HEADER_BYTES or not header.startswith(MAGIC):
        raise IntegrityError("not a callgate recording file")
    return header[len(MAGIC) :]


def _chunks(handle: ForwardReader, index: int = 0) -> Iterator[tuple[int, int]]:
    """(index, sealed length) per chunk, the handle positioned at its nonce; the caller
    reads the body or skips past it. Stops at a torn length field (a crash mid-write)."""
    while True:
        head = handle.read(CHUNK_HEAD.size)
        if len(head) < CHUNK_HEAD.size:
            return
        (length,) = CHUNK_HEAD.unpack(head)
        if length < TAG_BYTES:
            raise IntegrityError(f"chunk {index} is malformed")
        yield index, length
        index += 1


def decrypt(
    path: Path, key: bytes, *, start: int = 0, end: int | None = None, salvage: bool = False
) -> Iterator[bytes]:
    """The plaintext bytes [start, end) of a file (end exclusive; None = to the end).

    Reading to the end checks the final chunk is there; `salvage=True` instead stops quietly
    at the last whole, authentic chunk (recovery after a crash).
    """
    with path.open("rb") as handle:
        yield from decrypt_stream(handle, key, start=start, end=end, salvage=salvage)


def decrypt_stream(
    handle: ForwardReader,
    key: bytes,
    *,
    start: int = 0,
    end: int | None = None,
    salvage: bool = False,
    resume: ChunkPosition | None = None,
) -> Iterator[bytes]:
    """`decrypt` over an open file-like positioned at the header, or at the chunk `resume`
    names. It is only read forward (`seek` only ever skips ahead), so a streaming HTTP body
    (a ranged GET starting at a chunk) can stand in for a file."""
    aead = AESGCM(key)
    if resume is None:
        file_id, first, offset = _read_header(handle), 0, 0
    else:
        file_id, first, offset = resume.file_id, resume.index, resume.offset
    saw_final = False
    for index, length in _chunks(handle, first):
        size = length - TAG_BYTES
        body_at = handle.tell()
        wanted = (offset + size > start or size == 0) and (end is None or offset < end)
        if not wanted and end is not None and offset >= end:
            return
        if not wanted:
            handle.seek(body_at + NONCE_BYTES + length)
            offset += size
            continue
        nonce = handle.read(NONCE_BYTES)
        sealed = handle.read(length)
        if len(sealed) < length:
            break
        plaintext = _open(aead, nonce, sealed, file_id, index)
        if plaintext is None:
            raise IntegrityError(f"chunk {index} failed authentication")
        saw_final = plaintext[1]
        piece = plaintext[0]
        lo = max(0, start - offset)
        hi = size if end is None else min(size, end - offset)
        if lo < hi:
            yield piece[lo:hi]
        offset += size
        if saw_final:
            break
    if end is None and not saw_final and not salvage:
        raise IntegrityError("the file is truncated (no final chunk)")


def _open(
    aead: AESGCM, nonce: bytes, sealed: bytes, file_id: bytes, index: int
) -> tuple[bytes, bool] | None:
    """Decrypt a chunk, learning from the AAD whether it is the final one."""
    for final in (False, True):
        try:
            return aead.decrypt(nonce, sealed, _aad(file_id, index, final)), final
        except InvalidTag:
            continue
    return None


def plaintext_size(path: Path) -> int:
    """Size of the plaintext, from the chunk headers alone (nothing decrypted)."""
    return sum(chunk_table(path)[1])


def chunk_table(path: Path) -> tuple[bytes, list[int]]:
    """The file id and each whole chunk's plaintext size, from the chunk headers alone."""
    sizes: list[int] = []
    with path.open("rb") as handle:
        file_id = _read_header(handle)
        end = handle.seek(0, os.SEEK_END)
        handle.seek(HEADER_BYTES)
        for _, length in _chunks(handle):
            here = handle.tell()
            if end < here + NONCE_BYTES + length:
                break
            handle.seek(here + NONCE_BYTES + length)
            sizes.append(length - TAG_BYTES)
    return file_id, sizes


def chunk_span(size: int) -> int:
    """Bytes on disk of a chunk holding `size` plaintext bytes."""
    return CHUNK_HEAD.size + NONCE_BYTES + size + TAG_BYTES


@dataclass(frozen=True)
class ChunkPosition:
    """Where a read starts when it does not start at the header: chunk `index` of file
    `file_id`, whose plaintext starts at byte `offset`."""

    file_id: bytes
    index: int
    offset: int


class Storage(Protocol):
    """Where recording files live. A file is written locally (`open_writer`, crash-safe
    chunks), then `seal`ed once its writer closed; reads, recovery and removal name it by its
    relative path wherever it is by then."""

    def path(self, relative: str) -> Path:
        """The local file while it is written (for a local store, for good)."""
        ...

    def open_writer(self, relative: str, key: bytes) -> EncryptedWriter: ...

    def seal(self, relative: str) -> bool:
        """Publish a closed file; False if it could not be (it stays readable locally)."""
        ...

    def read(
        self, relative: str, key: bytes, start: int = 0, end: int | None = None
    ) -> Iterator[bytes]:
        """Plaintext bytes [start, end), decrypted as they are read (constant memory)."""
        ...

    def recover(self, relative: str, key: bytes) -> tuple[int, str]:
        """Re-seal the authentic prefix of a file a crash left open, and publish it."""
        ...

    def delete(self, relative: str) -> None:
        """Drop a file that was never sealed (a span that wrote nothing)."""
        ...

    def delete_published(self, relatives: Sequence[str]) -> None:
        """Drop published copies of files whose rows are gone (the local ones are `path`s,
        removed by the caller's cleanup)."""
        ...

    def unpublished(self) -> list[str]:
        """Relative paths of local files that a sealed file would have left (a failed or
        interrupted upload): `seal` them again once their rows say they are complete."""
        ...

    def sweep(self, known: set[str], before: float, *, dry_run: bool) -> int:
        """Remove files no row names, untouched since `before` (a POSIX time)."""
        ...


class LocalStore:
    """The local folder recordings live in; paths in rows are relative to it."""

    def __init__(self, root: Path) -> None:
        self.root = root

    def path(self, relative: str) -> Path:
        resolved = (self.root / relative).resolve()
        if not resolved.is_relative_to(self.root.resolve()):
            raise ValueError("recording path escapes the store")
        return resolved

    def open_writer(self, relative: str, key: bytes) -> EncryptedWriter:
        return EncryptedWriter(self.path(relative), key)

    def seal(self, relative: str) -> bool:
        return True  # the closed file already is where it stays

    def read(
        self, relative: str, key: bytes, start: int = 0, end: int | None = None
    ) -> Iterator[bytes]:
        return decrypt(self.path(relative), key, start=start, end=end)

    def recover(self, relative: str, key: bytes) -> tuple[int, str]:
        """Re-seal the authentic prefix of a file a crash left open; (size, sha256)."""
        source = self.path(relative)
        return reseal(source, key, decrypt(source, key, salvage=True))

    def delete(self, relative: str) -> None:
        self.path(relative).unlink(missing_ok=True)

    def delete_published(self, relatives: Sequence[str]) -> None:
        return None  # nothing beyond the local files

    def unpublished(self) -> list[str]:
        return []

    def files(self) -> list[str]:
        """Relative paths of every recording file here (including `.recovering` leftovers)."""
        if not self.root.is_dir():
            return []
        return [path.relative_to(self.root).as_posix() for path in self.root.rglob("*.cgr*")]

    def sweep(self, known: set[str], before: float, *, dry_run: bool) -> int:
        found = 0
        for relative in self.files():
            path = self.root / relative
            try:
                if relative in known or path.stat().st_mtime > before:
                    continue
            except FileNotFoundError:
                continue
            found += 1
            if not dry_run:
                path.unlink(missing_ok=True)
        return found


# The name the local store had before storage became configurable.
RecordingStore = LocalStore
