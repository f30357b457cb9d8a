"""The export bundle as a ZIP stream, produced in constant memory.

The output is never seekable (it goes straight into the HTTP response), so every entry is
written with a data descriptor after its bytes (APPNOTE.TXT 4.3.9) and only the central
directory, one small record per file, is held until the end. JSON Lines are deflated,
recordings (already compressed media) are stored.
"""

from __future__ import annotations

import json
import zipfile
from collections.abc import AsyncIterator
from datetime import datetime
from typing import Any

from core.subjects import Blob, JsonLines, Part

FLUSH_AT = 64 * 1024


class _Sink:
    """A write-only file object whose bytes are taken out as they come."""

    def __init__(self) -> None:
        self._parts: list[bytes] = []
        self.buffered = 0
        self.total = 0

    def write(self, data: bytes) -> int:
        self._parts.append(bytes(data))
        self.buffered += len(data)
        self.total += len(data)
        return len(data)

    def flush(self) -> None:
        """Nothing to do: `take()` hands the bytes on."""

    def take(self) -> bytes:
        out = b"".join(self._parts)
        self._parts, self.buffered = [], 0
        return out


def json_line(row: dict[str, Any]) -> bytes:
    return json.dumps(row, ensure_ascii=False, sort_keys=True, default=str).encode() + b"\n"


def _info(name: str, at: datetime, compress: int) -> zipfile.ZipInfo:
    info = zipfile.ZipInfo(name, date_time=at.timetuple()[:6])
    info.compress_type = compress
    info.external_attr = 0o600 << 16
    return info


async def zip_stream(parts: AsyncIterator[Part], at: datetime) -> AsyncIterator[bytes]:
    """The ZIP bytes of `parts`, in pieces of about FLUSH_AT bytes."""
    sink = _Sink()
    with zipfile.ZipFile(sink, "w") as archive:  # type: ignore[call-overload]
        async for part in parts:
            if isinstance(part, JsonLines):
                info = _info(part.name, at, zipfile.ZIP_DEFLATED)
                with archive.open(info, "w") as entry:
                    async for row in part.rows:
                        entry.write(json_line(row))
                        if sink.buffered >= FLUSH_AT:
                            yield sink.take()
            elif isinstance(part, Blob):
                info = _info(part.name, at, zipfile.ZIP_STORED)
                with archive.open(info, "w", force_zip64=True) as entry:
                    async for chunk in part.chunks:
                        entry.write(chunk)
                        if sink.buffered >= FLUSH_AT:
                            yield sink.take()
            if sink.buffered:
                yield sink.take()
    yield sink.take()
