"""The passthrough writers: files PyAV opens, with the durations of what went in."""

from __future__ import annotations

import functools
import io
from pathlib import Path

import av
import pytest

from media.ogg import OggOpusWriter, ogg_crc, opus_packet_samples
from media.webm import WebmVp8Writer, vp8_dimensions, vp8_is_keyframe
from tests.support.media import encode_opus, encode_vp8

# A small picture: the writers do not look past the frame header, and encoding 640x480 would
# make this file most of the unit suite's time.
WIDTH, HEIGHT = 320, 240


@functools.cache
def vp8_frames() -> tuple[bytes, ...]:
    """3 s at 30 fps, key frames at 0, 30, 60 (encoded once for the whole module)."""
    return tuple(encode_vp8(90, width=WIDTH, height=HEIGHT))


class FileSink:
    def __init__(self, path: Path) -> None:
        self.handle = path.open("wb")
        self.flushes = 0

    def write(self, data: bytes) -> None:
        self.handle.write(data)

    def flush(self) -> None:
        self.flushes += 1
        self.handle.flush()

    def close(self) -> None:
        self.handle.close()


def reference_crc(data: bytes) -> int:
    """Bit-by-bit CRC-32, polynomial 0x04C11DB7, init 0, no reflection (RFC 3533 §6)."""
    crc = 0
    for byte in data:
        crc ^= byte << 24
        for _ in range(8):
            crc = ((crc << 1) ^ 0x04C11DB7) if crc & 0x80000000 else crc << 1
            crc &= 0xFFFFFFFF
    return crc


@pytest.mark.parametrize("data", [b"", b"OggS", bytes(range(256)) * 3])
def test_ogg_crc_matches_the_bitwise_definition(data: bytes) -> None:
    assert ogg_crc(data) == reference_crc(data)


def test_opus_packet_samples_reads_the_toc() -> None:
    assert opus_packet_samples(bytes([0xFC, 0])) == 960  # CELT 20 ms, one frame
    assert opus_packet_samples(bytes([0x08 | 1])) == 2 * 960  # SILK 20 ms, two frames
    assert opus_packet_samples(bytes([0xF3, 3])) == 3 * 480  # CELT 10 ms, code 3, 3 frames


def audio_duration(path: Path) -> tuple[float, int]:
    with av.open(str(path)) as container:
        stream = container.streams.audio[0]
        samples = sum(frame.samples for frame in container.decode(stream))
        return samples / 48_000, stream.channels


def video_frames(path: Path) -> tuple[int, float, int, int]:
    with av.open(str(path)) as container:
        stream = container.streams.video[0]
        frames = list(container.decode(stream))
        width, height = frames[0].width, frames[0].height
        span = float((frames[-1].pts - frames[0].pts) * stream.time_base)
        return len(frames), span, width, height


def test_ogg_opus_file_holds_every_packet(tmp_path: Path) -> None:
    packets = encode_opus(150)  # 3 s
    path = tmp_path / "a.ogg"
    sink = FileSink(path)
    writer = OggOpusWriter(sink)
    for i, packet in enumerate(packets):
        writer.write(packet, 1_000_000 + i * 960)
    writer.close()
    seconds, channels = audio_duration(path)
    assert channels == 2
    assert seconds == pytest.approx(3.0 - 312 / 48_000, abs=0.021)
    assert sink.flushes >= 6  # a page at least every half second


def test_ogg_opus_keeps_gaps_in_the_timeline(tmp_path: Path) -> None:
    packets = encode_opus(100)
    path = tmp_path / "gap.ogg"
    writer = OggOpusWriter(FileSink(path))
    for i, packet in enumerate(packets):
        gap = 48_000 if i >= 50 else 0  # one second missing in the middle (e.g. loss)
        writer.write(packet, i * 960 + gap)
    writer.close()
    with av.open(str(path)) as container:
        assert float(container.duration or 0) / 1e6 == pytest.approx(3.0, abs=0.05)


def test_webm_vp8_file_plays_from_the_first_keyframe(tmp_path: Path) -> None:
    frames = vp8_frames()
    assert vp8_is_keyframe(frames[0])
    assert vp8_dimensions(frames[0]) == (WIDTH, HEIGHT)
    path = tmp_path / "v.webm"
    writer = WebmVp8Writer(FileSink(path))
    written = [writer.write(frame, 5_000 + i * 3000) for i, frame in enumerate(frames[5:])]
    writer.close()
    # Frames before the key frame at 30 cannot be decoded and are not written.
    assert written.count(False) == 25
    count, span, width, height = video_frames(path)
    assert (width, height) == (WIDTH, HEIGHT)
    assert count == 60
    assert span == pytest.approx(59 / 30, abs=0.002)


def test_webm_prefix_cut_anywhere_still_opens(tmp_path: Path) -> None:
    frames = vp8_frames()[:60]
    buffer = io.BytesIO()

    class MemorySink:
        def write(self, data: bytes) -> None:
            buffer.write(data)

        def flush(self) -> None:
            pass

        def close(self) -> None:
            pass

    writer = WebmVp8Writer(MemorySink())
    for i, frame in enumerate(frames):
        writer.write(frame, i * 3000)
    whole = buffer.getvalue()
    cut = tmp_path / "cut.webm"
    cut.write_bytes(whole[: len(whole) * 3 // 4 + 17])  # torn in the middle of a block
    count, span, _, _ = video_frames(cut)
    assert 40 <= count < 60
    assert span > 1.3


def test_ogg_prefix_cut_mid_page_still_opens(tmp_path: Path) -> None:
    packets = encode_opus(200)
    whole_path = tmp_path / "whole.ogg"
    sink = FileSink(whole_path)
    writer = OggOpusWriter(sink)
    for i, packet in enumerate(packets):
        writer.write(packet, i * 960)
    writer.flush()  # as a running recorder would have, then the process dies
    sink.handle.close()
    data = whole_path.read_bytes()
    cut = tmp_path / "cut.ogg"
    cut.write_bytes(data + b"OggS\x00\x00garbage-of-a-torn-page")
    seconds, _ = audio_duration(cut)
    assert seconds == pytest.approx(4.0 - 312 / 48_000, abs=0.021)
