"""Recordings in S3-compatible object storage (AWS S3, MinIO, Ceph RGW, R2, ...).

The recorder still writes every file to the local folder (the spool) chunk by chunk, so a
killed process leaves whole chunks that crash recovery salvages exactly as with the local
store. Once a file is sealed (its span closed, or recovery re-sealed it) the ciphertext is
uploaded as one object under `prefix + relative path` (a multipart upload of 16 MiB parts
for large files, so memory stays at one part) and the spool copy is removed. Data keys never leave
callgate, so destroying a person's key still shreds their objects; erasure and retention
delete the objects too.

An object is the sealed file followed by a chunk index, so a read can fetch just the chunks
holding the plaintext range it wants (all integers big-endian):

    object  = file (header, chunks, the final one last) | index | footer
    index   = plaintext size of each chunk (4 each), in order
    footer  = file id (16) | chunk count (8) | INDEX_MAGIC (8)

The index is public layout, not a secret, and not trusted: a read checks that it accounts for
every byte of the object, and each chunk it points at must still authenticate under its
index (the AAD), with the final flag on the last one; a lying index only makes reads fail.
A read costs two GETs (the object's tail with the index, then the byte range of the chunks
wanted), streamed and decrypted chunk by chunk, so memory stays at one chunk. Objects without
an index (copied in from a local store) are read with one streaming GET from the start.
Until an upload succeeded the spool copy is read instead.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import io
import struct
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import boto3
import structlog
from botocore.config import Config
from botocore.exceptions import BotoCoreError, ClientError

from core.settings import Settings
from media.storage import (
    HEADER_BYTES,
    ChunkPosition,
    EncryptedWriter,
    IntegrityError,
    LocalStore,
    chunk_span,
    chunk_table,
    decrypt_stream,
)

if TYPE_CHECKING:
    from mypy_boto3_s3 import S3Client
    from mypy_boto3_s3.type_defs import CompletedPartTypeDef

log = structlog.get_logger(__name__)

DELETE_BATCH = 1000  # the most keys one DeleteObjects request takes
MIB = 1024 * 1024
CONTENT_TYPE = "application/octet-stream"  # ciphertext, whatever the recording's media type
INDEX_MAGIC = b"CGIDX\x00\x01\n"
FOOTER = struct.Struct(">16sQ8s")
SIZE = struct.Struct(">I")
TAIL_BYTES = 64 * 1024  # the first GET of a read: the index of files up to ~4 hours of chunks


@dataclass(frozen=True)
class Layout:
    """Where an indexed object's chunks are."""

    file_id: bytes
    sizes: list[int]

    @classmethod
    def of_index(cls, file_id: bytes, raw: bytes) -> Layout:
        return cls(file_id, [size for (size,) in SIZE.iter_unpack(raw)])

    def trailer(self) -> bytes:
        index = b"".join(SIZE.pack(size) for size in self.sizes)
        return index + FOOTER.pack(self.file_id, len(self.sizes), INDEX_MAGIC)

    @property
    def file_bytes(self) -> int:
        return HEADER_BYTES + sum(chunk_span(size) for size in self.sizes)

    def run(self, start: int, end: int | None) -> tuple[ChunkPosition, int, int] | None:
        """The chunks a read of plaintext [start, end) needs (those `decrypt_stream` would
        decrypt): where they start, and their bytes [first, last) in the object."""
        found: ChunkPosition | None = None
        offset, at, first, last = 0, HEADER_BYTES, 0, 0
        for index, size in enumerate(self.sizes):
            if (offset + size > start or size == 0) and (end is None or offset < end):
                if found is None:
                    found, first = ChunkPosition(self.file_id, index, offset), at
                last = at + chunk_span(size)
            elif found is not None:
                break
            offset += size
            at += chunk_span(size)
        return None if found is None else (found, first, last)


def parse_footer(footer: bytes) -> tuple[bytes, int] | None:
    """(file id, chunk count) of an index footer, None if these bytes are not one."""
    if len(footer) != FOOTER.size:
        return None
    file_id, count, magic = FOOTER.unpack(footer)
    if magic != INDEX_MAGIC:
        return None
    return file_id, count


class BodyReader:
    """A forward-only file-like over a streaming GET body: `seek` skips ahead by reading,
    which is all `decrypt_stream` asks of it."""

    def __init__(self, body: Any) -> None:
        self._body = body
        self._at = 0

    def read(self, size: int) -> bytes:
        parts: list[bytes] = []
        wanted = size
        while wanted > 0:
            part: bytes = self._body.read(wanted)
            if not part:
                break
            parts.append(part)
            wanted -= len(part)
        data = b"".join(parts)
        self._at += len(data)
        return data

    def tell(self) -> int:
        return self._at

    def seek(self, position: int) -> int:
        if position < self._at:
            raise ValueError("a streaming body only skips ahead")
        while self._at < position:
            if not self.read(min(position - self._at, MIB)):
                break
        return self._at

    def close(self) -> None:
        self._body.close()


class ObjectStore:
    """Sealed recordings in a bucket; `spool` holds the files being written."""

    def __init__(
        self,
        spool: LocalStore,
        client: S3Client,
        bucket: str,
        prefix: str = "",
        part_bytes: int = 16 * MIB,
    ) -> None:
        self.spool = spool
        self.root = spool.root
        self._client = client
        self.bucket = bucket
        self.prefix = prefix
        if part_bytes < 5 * MIB:
            raise ValueError("S3 parts (but the last) are at least 5 MiB")
        self._part_bytes = part_bytes

    @classmethod
    def from_settings(cls, settings: Settings, spool: LocalStore) -> ObjectStore:
        if not settings.s3_bucket:
            raise ValueError("the s3 storage backend needs a bucket")
        secret = settings.s3_secret_access_key
        config = Config(
            retries={"max_attempts": 5, "mode": "standard"},
            connect_timeout=10,
            read_timeout=60,
            # Custom endpoints (MinIO and most others) want path-style addressing.
            s3={"addressing_style": "path" if settings.s3_endpoint_url else "auto"},
        )
        client = boto3.session.Session().client(
            "s3",
            endpoint_url=settings.s3_endpoint_url,
            region_name=settings.s3_region,
            aws_access_key_id=settings.s3_access_key_id,
            aws_secret_access_key=secret.get_secret_value() if secret else None,
            config=config,
        )
        return cls(spool, client, settings.s3_bucket, settings.s3_prefix)

    def key(self, relative: str) -> str:
        self.spool.path(relative)  # the same check: no path may leave the store
        return self.prefix + relative

    # writing

    def path(self, relative: str) -> Path:
        return self.spool.path(relative)

    def open_writer(self, relative: str, key: bytes) -> EncryptedWriter:
        return self.spool.open_writer(relative, key)

    def seal(self, relative: str) -> bool:
        """Upload the sealed spool file, then remove it. On failure the spool copy stays (and
        is read from) until `unpublished` hands it back for another try."""
        path = self.spool.path(relative)
        try:
            self._upload(path, self.key(relative))
        except (BotoCoreError, ClientError, OSError):
            log.warning("storage.upload_failed", path=relative, exc_info=True)
            return False
        path.unlink(missing_ok=True)
        return True

    def _upload(self, path: Path, name: str) -> None:
        """The file's whole chunks and then their index, as one object. The spool file is
        only read (another node sharing the spool may be uploading it too: same bytes)."""
        layout = Layout(*chunk_table(path))
        trailer = layout.trailer()
        remaining = layout.file_bytes
        with path.open("rb") as handle:
            if remaining + len(trailer) <= self._part_bytes:
                body = handle.read(remaining) + trailer
                self._client.put_object(Bucket=self.bucket, Key=name, Body=body,
                                        ContentType=CONTENT_TYPE)
                return
            started = self._client.create_multipart_upload(
                Bucket=self.bucket, Key=name, ContentType=CONTENT_TYPE
            )
            upload_id = started["UploadId"]
            try:
                parts: list[CompletedPartTypeDef] = []
                while remaining > 0:
                    data = handle.read(min(self._part_bytes, remaining))
                    if not data:
                        raise OSError(f"{path} shrank while it was uploaded")
                    remaining -= len(data)
                    number = len(parts) + 1
                    answer = self._client.upload_part(
                        Bucket=self.bucket, Key=name, UploadId=upload_id, PartNumber=number,
                        Body=data + trailer if remaining == 0 else data,
                    )
                    parts.append({"ETag": answer["ETag"], "PartNumber": number})
                self._client.complete_multipart_upload(
                    Bucket=self.bucket, Key=name, UploadId=upload_id,
                    MultipartUpload={"Parts": parts},
                )
            except BaseException:
                with contextlib.suppress(BotoCoreError, ClientError):
                    self._client.abort_multipart_upload(
                        Bucket=self.bucket, Key=name, UploadId=upload_id
                    )
                raise

    def recover(self, relative: str, key: bytes) -> tuple[int, str]:
        outcome = self.spool.recover(relative, key)
        self.seal(relative)
        return outcome

    # reading

    def read(
        self, relative: str, key: bytes, start: int = 0, end: int | None = None
    ) -> Iterator[bytes]:
        try:
            handle = self.spool.path(relative).open("rb")
        except FileNotFoundError:  # the usual case: sealed and uploaded
            yield from self._read_object(relative, key, start, end)
            return
        # Not uploaded yet (or the upload failed). An upload finishing meanwhile unlinks the
        # file, which leaves this open handle readable.
        with handle:
            yield from decrypt_stream(handle, key, start=start, end=end)

    def _read_object(
        self, relative: str, key: bytes, start: int, end: int | None
    ) -> Iterator[bytes]:
        name = self.key(relative)
        tail, total = self._get_tail(name)
        layout = self._layout(name, tail, total)
        if layout is None:  # no index: stream the whole file from its header
            yield from self._decrypt_range(name, key, 0, total, start, end, None, tail, total)
            return
        run = layout.run(start, end)
        if run is None:
            return
        position, first, last = run
        plain = sum(layout.sizes)
        expected = max(0, (plain if end is None else min(end, plain)) - start)
        produced = 0
        for piece in self._decrypt_range(
            name, key, first, last, start, end, position, tail, total
        ):
            produced += len(piece)
            yield piece
        # Every chunk read authenticated under its own index; a range still coming out short
        # means the index pointed the read at the wrong bytes.
        if produced != expected:
            raise IntegrityError("the object's chunk index does not match its chunks")

    def _decrypt_range(
        self,
        name: str,
        key: bytes,
        first: int,
        last: int,
        start: int,
        end: int | None,
        position: ChunkPosition | None,
        tail: bytes,
        total: int,
    ) -> Iterator[bytes]:
        """Decrypt the object's bytes [first, last), from the tail already fetched if it
        holds them, else from a ranged GET of exactly those bytes."""
        if first >= total - len(tail):
            at = first - (total - len(tail))
            source = io.BytesIO(tail[at : at + last - first])
            yield from decrypt_stream(source, key, start=start, end=end, resume=position)
            return
        found = self._get(name, f"bytes={first}-{last - 1}")
        body = BodyReader(found["Body"])
        with contextlib.closing(body):  # also when the reader stops early: drop the connection
            yield from decrypt_stream(body, key, start=start, end=end, resume=position)

    def _get(self, name: str, byte_range: str) -> Any:
        try:
            return self._client.get_object(Bucket=self.bucket, Key=name, Range=byte_range)
        except ClientError as exc:
            if exc.response.get("Error", {}).get("Code") in ("NoSuchKey", "404"):
                raise FileNotFoundError(name) from exc
            raise

    def _get_tail(self, name: str) -> tuple[bytes, int]:
        """The object's last TAIL_BYTES (or all of it) and its size."""
        found = self._get(name, f"bytes=-{TAIL_BYTES}")
        with contextlib.closing(found["Body"]):
            tail: bytes = found["Body"].read()
        content_range = found.get("ContentRange")  # "bytes first-last/total" (RFC 9110 14.4)
        total = int(content_range.rsplit("/", 1)[1]) if content_range else len(tail)
        return tail, total

    def _layout(self, name: str, tail: bytes, total: int) -> Layout | None:
        footer = parse_footer(tail[-FOOTER.size :])
        if footer is None:
            return None
        file_id, count = footer
        length = SIZE.size * count
        if length + FOOTER.size > total:
            raise IntegrityError("the object's chunk index is larger than the object")
        if length + FOOTER.size <= len(tail):
            raw = tail[len(tail) - FOOTER.size - length : len(tail) - FOOTER.size]
        else:
            at = total - FOOTER.size - length
            found = self._get(name, f"bytes={at}-{total - FOOTER.size - 1}")
            with contextlib.closing(found["Body"]):
                raw = found["Body"].read()
        layout = Layout.of_index(file_id, raw)
        if len(layout.sizes) != count or layout.file_bytes + len(layout.trailer()) != total:
            raise IntegrityError("the object's chunk index does not match the object")
        return layout

    # removing

    def delete(self, relative: str) -> None:
        self.spool.delete(relative)  # never sealed, so never uploaded

    def delete_published(self, relatives: Sequence[str]) -> None:
        keys = [self.key(relative) for relative in relatives]
        for at in range(0, len(keys), DELETE_BATCH):
            batch = keys[at : at + DELETE_BATCH]
            answer = self._client.delete_objects(
                Bucket=self.bucket,
                Delete={"Objects": [{"Key": key} for key in batch], "Quiet": True},
            )
            failed = answer.get("Errors", [])
            if failed:
                raise OSError(f"the bucket kept {len(failed)} recording objects: {failed[0]}")

    def unpublished(self) -> list[str]:
        return [r for r in self.spool.files() if r.endswith(".cgr")]

    def sweep(self, known: set[str], before: float, *, dry_run: bool) -> int:
        found = self.spool.sweep(known, before, dry_run=dry_run)
        cutoff = dt.datetime.fromtimestamp(before, dt.UTC)
        orphans: list[str] = []
        pages = self._client.get_paginator("list_objects_v2")
        for page in pages.paginate(Bucket=self.bucket, Prefix=self.prefix):
            for item in page.get("Contents", []):
                relative = item["Key"][len(self.prefix) :]
                if relative not in known and item["LastModified"] <= cutoff:
                    orphans.append(relative)
        if orphans and not dry_run:
            self.delete_published(orphans)
        return found + len(orphans)
