"""Test-pattern media for tests, the benchmark and demos: a 640x480 moving pattern and a tone.

Two shapes: raw aiortc tracks (`PatternVideoTrack`, `ToneAudioTrack`), which aiortc encodes
like a browser would, and pre-encoded VP8/Opus packets (`encode_vp8`, `encode_opus`) replayed
by `EncodedTrack`, so a load test spends its CPU on the recorder and not on encoders.
"""

from __future__ import annotations

import asyncio
import fractions
import math
import os
import struct
import time
from collections.abc import Sequence
from typing import Any

import av
from aiortc.mediastreams import AudioStreamTrack, MediaStreamTrack, VideoStreamTrack

WIDTH, HEIGHT, FPS = 640, 480, 30
AUDIO_RATE = 48_000
AUDIO_PTIME = 0.020


def pattern_frame(index: int, width: int = WIDTH, height: int = HEIGHT) -> av.VideoFrame:
    """A moving diagonal gradient with a noisy band (so the encoder has real work)."""
    frame = av.VideoFrame(width, height, "yuv420p")
    luma = frame.planes[0]
    shift = (index * 4) % 256
    base = bytes((x + shift) % 256 for x in range(luma.line_size))
    rows = [base[(y % 64) :] + base[: (y % 64)] for y in range(luma.height)]
    noise = os.urandom(luma.line_size * 48)
    band = (index * 6) % max(1, luma.height - 48)
    data = bytearray(b"".join(rows))
    data[band * luma.line_size : (band + 48) * luma.line_size] = noise
    luma.update(bytes(data))
    for plane in frame.planes[1:]:
        plane.update(bytes([128 + (index % 32)]) * (plane.line_size * plane.height))
    return frame


def tone_samples(start: int, count: int, freq: float = 440.0) -> bytes:
    """Stereo s16 samples of a sine tone from sample `start`."""
    out = bytearray()
    for n in range(start, start + count):
        value = int(8000 * math.sin(2 * math.pi * freq * n / AUDIO_RATE))
        out += struct.pack("<hh", value, value)
    return bytes(out)


def encode_vp8(
    frames: int,
    *,
    keyframe_every: int = FPS,
    width: int = WIDTH,
    height: int = HEIGHT,
    bit_rate: int = 1_000_000,
) -> list[bytes]:
    """`frames` VP8 frames of the pattern at 30 fps, a key frame every `keyframe_every`."""
    ctx = av.CodecContext.create("libvpx", "w")
    ctx.width, ctx.height, ctx.pix_fmt = width, height, "yuv420p"
    ctx.time_base = fractions.Fraction(1, FPS)
    ctx.framerate = fractions.Fraction(FPS)
    ctx.bit_rate = bit_rate
    ctx.options = {"deadline": "realtime", "cpu-used": "8", "lag-in-frames": "0"}
    out: list[bytes] = []
    for i in range(frames):
        frame = pattern_frame(i, width, height)
        frame.pts = i
        if i % keyframe_every == 0:
            frame.pict_type = av.video.frame.PictureType.I
        out.extend(bytes(p) for p in ctx.encode(frame))
    out.extend(bytes(p) for p in ctx.encode(None))
    return out


def encode_opus(packets: int) -> list[bytes]:
    """`packets` Opus packets of 20 ms of a 440 Hz tone."""
    ctx = av.CodecContext.create("libopus", "w")
    ctx.sample_rate, ctx.layout, ctx.format = AUDIO_RATE, "stereo", "s16"
    ctx.time_base = fractions.Fraction(1, AUDIO_RATE)
    ctx.bit_rate = 64_000
    per = int(AUDIO_RATE * AUDIO_PTIME)
    out: list[bytes] = []
    for i in range(packets + 4):
        frame = av.AudioFrame(format="s16", layout="stereo", samples=per)
        frame.planes[0].update(tone_samples(i * per, per))
        frame.sample_rate = AUDIO_RATE
        frame.pts = i * per
        out.extend(bytes(p) for p in ctx.encode(frame))
    return out[:packets]


class PatternVideoTrack(VideoStreamTrack):
    """A raw 640x480 30 fps moving pattern; aiortc encodes it to VP8 as a browser would."""

    def __init__(self) -> None:
        super().__init__()
        self.index = 0

    async def recv(self) -> av.VideoFrame:
        pts, time_base = await self.next_timestamp()
        frame = pattern_frame(self.index)
        self.index += 1
        frame.pts, frame.time_base = pts, time_base
        return frame


class ToneAudioTrack(AudioStreamTrack):
    """A raw 440 Hz stereo tone in 20 ms frames, paced in real time."""

    def __init__(self) -> None:
        super().__init__()
        self._sent = 0
        self._began: float | None = None

    async def recv(self) -> av.AudioFrame:
        per = int(AUDIO_RATE * AUDIO_PTIME)
        if self._began is None:
            self._began = time.monotonic()
        wait = self._began + self._sent / AUDIO_RATE - time.monotonic()
        if wait > 0:
            await asyncio.sleep(wait)
        frame = av.AudioFrame(format="s16", layout="stereo", samples=per)
        frame.planes[0].update(tone_samples(self._sent, per))
        frame.sample_rate = AUDIO_RATE
        frame.pts = self._sent
        frame.time_base = fractions.Fraction(1, AUDIO_RATE)
        self._sent += per
        return frame


class EncodedTrack(MediaStreamTrack):
    """Replays pre-encoded packets in a loop, paced in real time; aiortc only packetizes them
    (`RTCRtpSender` passes `av.Packet` through without encoding)."""

    def __init__(self, kind: str, packets: Sequence[bytes]) -> None:
        super().__init__()
        self.kind = kind
        self._packets = packets
        self._index = 0
        self._began: float | None = None
        self._held = asyncio.Event()
        if kind == "video":
            self._step, self._rate = 1 / FPS, 90_000
        else:
            self._step, self._rate = AUDIO_PTIME, AUDIO_RATE

    @property
    def sent(self) -> int:
        """Frames handed to the sender so far."""
        return self._index

    def hold(self) -> int:
        """Hand the sender no further frame (the connection stays up); how many were sent,
        which is final from now on."""
        self._held.set()
        return self._index

    async def recv(self) -> av.Packet[Any]:
        if self._began is None:
            self._began = time.monotonic()
        wait = self._began + self._index * self._step - time.monotonic()
        if wait > 0:
            await asyncio.sleep(wait)
        if self._held.is_set():
            await asyncio.Future()  # until the connection closes and cancels this
        packet = av.Packet(self._packets[self._index % len(self._packets)])
        packet.pts = round(self._index * self._step * self._rate)
        packet.time_base = fractions.Fraction(1, self._rate)
        self._index += 1
        return packet
