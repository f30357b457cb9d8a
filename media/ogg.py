"""Ogg Opus writer: Opus packets (RTP payloads, RFC 7587) into an Ogg stream, no transcoding.

Follows RFC 7845 (Ogg encapsulation of Opus) over RFC 3533 (Ogg pages): an `OpusHead` page
(BOS), an `OpusTags` page, then audio pages whose granule position counts 48 kHz samples up
to the end of the last packet completed on the page. A page is flushed at least every
`flush_every` samples, so a process killed mid-recording leaves a playable prefix.
"""

from __future__ import annotations

import secrets
import struct
import zlib
from typing import Protocol

OPUS_RATE = 48_000
PRE_SKIP = 312  # libopus' encoder lookahead at 48 kHz (RFC 7845 §4.2)
VENDOR = b"callgate"

_HEADER_TYPE_CONTINUED = 0x01
_HEADER_TYPE_BOS = 0x02
_HEADER_TYPE_EOS = 0x04
_MAX_SEGMENTS = 255

# Ogg's CRC is the non-reflected CRC-32 (poly 0x04C11DB7, init 0, no final xor; RFC 3533 §6).
# zlib's is the reflected one with init/xorout 0xFFFFFFFF: feeding it bit-reversed bytes and
# removing the init/xorout contribution (CRC is affine, the zero run cancels it) gives the
# bit-reversed Ogg CRC, all at C speed.
_BITREV = bytes(int(f"{i:08b}"[::-1], 2) for i in range(256))


def _reverse32(value: int) -> int:
    return int(f"{value:032b}"[::-1], 2)


def ogg_crc(data: bytes) -> int:
    raw = zlib.crc32(data.translate(_BITREV)) ^ zlib.crc32(bytes(len(data)))
    return _reverse32(raw)


class Sink(Protocol):
    """Where a writer puts bytes: a file or the encrypting storage writer."""

    def write(self, data: bytes) -> None: ...

    def flush(self) -> None: ...

    def close(self) -> None: ...


def opus_packet_samples(packet: bytes) -> int:
    """Samples (at 48 kHz) in one Opus packet, from its TOC byte (RFC 6716 §3.1)."""
    if not packet:
        return 0
    toc = packet[0]
    config = toc >> 3
    if config < 12:  # SILK: 10, 20, 40, 60 ms
        frame = (480, 960, 1920, 2880)[config & 3]
    elif config < 16:  # hybrid: 10, 20 ms
        frame = (480, 960)[config & 1]
    else:  # CELT: 2.5, 5, 10, 20 ms
        frame = (120, 240, 480, 960)[config & 3]
    code = toc & 3
    if code == 0:
        count = 1
    elif code in (1, 2):
        count = 2
    else:
        count = packet[1] & 0x3F if len(packet) > 1 else 0
    return frame * count


def opus_head(channels: int = 2, pre_skip: int = PRE_SKIP) -> bytes:
    """The identification header (RFC 7845 §5.1), channel mapping family 0."""
    return b"OpusHead" + struct.pack("<BBHIhB", 1, channels, pre_skip, OPUS_RATE, 0, 0)


def opus_tags() -> bytes:
    """The comment header (RFC 7845 §5.2): vendor string, no user comments."""
    return b"OpusTags" + struct.pack("<I", len(VENDOR)) + VENDOR + struct.pack("<I", 0)


class OggPager:
    """Packs packets into Ogg pages of one logical stream (RFC 3533 §6)."""

    def __init__(self, sink: Sink, serial: int) -> None:
        self._sink = sink
        self._serial = serial
        self._sequence = 0
        self._segments: list[int] = []
        self._body: list[bytes] = []
        self._continued = False
        self._granule = -1  # no packet finishes on the page yet (RFC 3533 §6)
        self._bos = True

    @property
    def pending(self) -> bool:
        return bool(self._segments)

    def add(self, packet: bytes, granule: int) -> None:
        """Queue one packet ending at `granule`; full pages are written as they fill."""
        lacing = [255] * (len(packet) // 255) + [len(packet) % 255]
        offset = 0
        for i, value in enumerate(lacing):
            if len(self._segments) == _MAX_SEGMENTS:
                self.page()
                self._continued = True
            self._segments.append(value)
            self._body.append(packet[offset : offset + value])
            offset += value
            if i == len(lacing) - 1:
                self._granule = granule

    def page(self, *, eos: bool = False) -> None:
        """Write the queued segments as one page (a lone EOS page may be empty)."""
        if not self._segments and not eos:
            return
        flags = 0
        if self._continued:
            flags |= _HEADER_TYPE_CONTINUED
        if self._bos:
            flags |= _HEADER_TYPE_BOS
        if eos:
            flags |= _HEADER_TYPE_EOS
        header = struct.pack(
            "<4sBBqIIIB",
            b"OggS",
            0,
            flags,
            self._granule,
            self._serial,
            self._sequence,
            0,
            len(self._segments),
        ) + bytes(self._segments)
        page = header + b"".join(self._body)
        crc = ogg_crc(page)
        page = page[:22] + struct.pack("<I", crc) + page[26:]
        self._sink.write(page)
        self._sequence += 1
        self._segments = []
        self._body = []
        self._continued = False
        self._bos = False


class OggOpusWriter:
    """Writes Opus packets with their RTP timestamps (48 kHz clock, RFC 7587 §4.1)."""

    def __init__(
        self, sink: Sink, *, channels: int = 2, flush_every: int = OPUS_RATE // 2
    ) -> None:
        self._sink = sink
        self._pager = OggPager(sink, secrets.randbits(32))
        self._flush_every = flush_every
        self._origin: int | None = None
        self._last_flushed = 0
        self._granule = 0
        self._closed = False
        self.packets = 0
        # RFC 7845 §3: each header sits alone on its own page, flushed at once.
        self._pager.add(opus_head(channels), 0)
        self._pager.page()
        self._pager.add(opus_tags(), 0)
        self._pager.page()
        self._sink.flush()

    @property
    def duration_s(self) -> float:
        return self._granule / OPUS_RATE

    def write(self, packet: bytes, rtp_timestamp: int) -> None:
        """Append one packet; `rtp_timestamp` is the (unwrapped) RTP timestamp of its start."""
        if self._closed:
            raise ValueError("the writer is closed")
        if self._origin is None:
            self._origin = rtp_timestamp
        start = max(rtp_timestamp - self._origin, self._granule)
        self._granule = start + opus_packet_samples(packet)
        # The granule of a page is where its last packet ends, counted from the stream's
        # start plus the pre-skip the decoder drops (RFC 7845 §4).
        self._pager.add(packet, self._granule + PRE_SKIP)
        self.packets += 1
        if self._granule - self._last_flushed >= self._flush_every:
            self.flush()

    def flush(self) -> None:
        self._pager.page()
        self._last_flushed = self._granule
        self._sink.flush()

    def close(self) -> None:
        """Write the last page with EOS and close the sink; idempotent."""
        if self._closed:
            return
        self._closed = True
        self._pager.page(eos=True)
        self._sink.close()
