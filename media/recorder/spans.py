"""Consent spans: one file per person, per kind, per stretch of consent.

A withdrawal (or a host stop, or the gate going dark) closes the span's file, a new grant opens
a new one, and a video span starts at a key frame (its writer drops frames until one comes).
"""

from __future__ import annotations

import uuid
from collections import deque
from dataclasses import dataclass, field

from media.ogg import OggOpusWriter
from media.recordings import TrackKind
from media.storage import EncryptedWriter
from media.webm import WebmVp8Writer


@dataclass
class SpanSummary:
    """What a closed span wrote, kept in memory for tests and the benchmark."""

    recording_id: uuid.UUID
    subject_id: uuid.UUID
    kind: TrackKind
    frames: int
    first_arrival: float | None
    last_arrival: float | None
    closed_at: float
    arrivals: tuple[float, ...]


@dataclass
class Span:
    recording_id: uuid.UUID
    kind: TrackKind
    relative_path: str
    file: EncryptedWriter
    writer: OggOpusWriter | WebmVp8Writer
    frames: int = 0
    first_arrival: float | None = None
    last_arrival: float | None = None
    arrivals: deque[float] = field(default_factory=lambda: deque(maxlen=64))

    @classmethod
    def open(cls, file: EncryptedWriter, relative: str, recording_id: uuid.UUID,
             kind: TrackKind) -> Span:
        writer: OggOpusWriter | WebmVp8Writer = (
            OggOpusWriter(file) if kind is TrackKind.AUDIO else WebmVp8Writer(file)
        )
        return cls(recording_id, kind, relative, file, writer)

    def write(self, data: bytes, timestamp: int, arrival: float) -> bool:
        """Write one frame; False while a video span still waits for its key frame."""
        if isinstance(self.writer, WebmVp8Writer):
            if not self.writer.write(data, timestamp):
                return False
        else:
            self.writer.write(data, timestamp)
        self.frames += 1
        if self.first_arrival is None:
            self.first_arrival = arrival
        self.last_arrival = arrival
        self.arrivals.append(arrival)
        return True

    @property
    def waiting_for_keyframe(self) -> bool:
        return isinstance(self.writer, WebmVp8Writer) and not self.writer.started
