"""Recorded voice as the AI jobs receive it: the seam between media/ and summaries/.

media/ has the recordings and summaries/ needs their audio; neither imports the other. The
composition root (api/) hands summaries/ an `AudioSource` that media/ implements.
"""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol


@dataclass(frozen=True)
class AudioSpan:
    """A stretch of one person's recorded voice, inside a span they consented to record."""

    subject_id: uuid.UUID
    start_ms: int
    end_ms: int
    audio: bytes
    mime: str = "audio/ogg"


class AudioSource(Protocol):
    """Where consented recordings come from (media/ provides it; tests give generated audio)."""

    async def spans(self, booking_id: uuid.UUID) -> Sequence[AudioSpan]: ...
