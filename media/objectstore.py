"""Recordings in S3-compatible object storage (AWS S3, MinIO, Ceph RGW, R2, ...).

The recorder still writes every file to the local folder (the spool) chunk by chunk, so a
killed process leaves whole chunks that crash recovery salvages exactly as with the local
store. Once a file is sealed (its span closed, or recovery re-sealed it) the ciphertext is
uploaded as one object under `prefix + relative path` (boto3's managed transfer switches to a
multipart upload for large files) and the spool copy is removed. Objects hold only what the
file held: the encrypted chunk stream. Data keys never leave callgate, so destroying a
person's key still shreds their objects; erasure and retention delete the objects too.

Reads stream the object with one GET and decrypt chunk by chunk (`storage.decrypt_stream`),
skipping the chunks before the requested range and closing the connection after its last
one; memory stays at one chunk. Until an upload succeeded the spool copy is read instead.
"""

from __future__ import annotations

import contextlib
import datetime as dt
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import boto3
import structlog
from boto3.exceptions import Boto3Error
from boto3.s3.transfer import TransferConfig
from botocore.config import Config
from botocore.exceptions import BotoCoreError, ClientError

from core.settings import Settings
from media.storage import EncryptedWriter, LocalStore, decrypt_stream

if TYPE_CHECKING:
    from mypy_boto3_s3 import S3Client

log = structlog.get_logger(__name__)

DELETE_BATCH = 1000  # the most keys one DeleteObjects request takes
MIB = 1024 * 1024


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
        transfer: TransferConfig | None = None,
    ) -> None:
        self.spool = spool
        self.root = spool.root
        self._client = client
        self.bucket = bucket
        self.prefix = prefix
        self._transfer = transfer or TransferConfig(
            multipart_threshold=16 * MIB, multipart_chunksize=16 * MIB, max_concurrency=4
        )

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
            self._client.upload_file(
                str(path),
                self.bucket,
                self.key(relative),
                ExtraArgs={"ContentType": "application/octet-stream"},
                Config=self._transfer,
            )
        except (Boto3Error, BotoCoreError, ClientError, OSError):
            log.warning("storage.upload_failed", path=relative, exc_info=True)
            return False
        path.unlink(missing_ok=True)
        return True

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
        try:
            found = self._client.get_object(Bucket=self.bucket, Key=self.key(relative))
        except ClientError as exc:
            if exc.response.get("Error", {}).get("Code") in ("NoSuchKey", "404"):
                raise FileNotFoundError(relative) from exc
            raise
        body = BodyReader(found["Body"])
        with contextlib.closing(body):  # also when the reader stops early: drop the connection
            yield from decrypt_stream(body, key, start=start, end=end)

    def exists(self, relative: str) -> bool:
        """Whether the object is in the bucket (not the spool)."""
        try:
            self._client.head_object(Bucket=self.bucket, Key=self.key(relative))
        except ClientError as exc:
            if exc.response.get("Error", {}).get("Code") in ("NoSuchKey", "404", "NotFound"):
                return False
            raise
        return True

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
