"""The stable purpose codes a booking can request and a person can consent to.

They live in core (not consent/) because a booking, which core owns, names them and must be
validated without importing the consent package; consent/ re-exports them.
"""

from __future__ import annotations

import enum


class Purpose(enum.StrEnum):
    RECORDING_AUDIO = "recording.audio"
    RECORDING_VIDEO = "recording.video"
    TRANSCRIPTION = "transcription"
    AI_SUMMARY = "ai.summary"
    AI_AGENDA = "ai.agenda"

    @property
    def is_recording(self) -> bool:
        return self in (Purpose.RECORDING_AUDIO, Purpose.RECORDING_VIDEO)

    @property
    def is_biometric(self) -> bool:
        """Voice and face: special-category data under GDPR art. 9."""
        return self.is_recording


class RecordingPolicy(enum.StrEnum):
    PER_PARTICIPANT = "per_participant"
    ALL_OR_NOTHING = "all_or_nothing"


class RecordingAccess(enum.StrEnum):
    """Who may read a booking's recordings, transcript and summary after the call."""

    ADMINS = "admins"  # admin keys only
    OWN = "own"  # each person their own files, transcript lines and the summaries they are in
    HOST = "host"  # the host everything, each client their own
    PARTICIPANTS = "participants"  # everyone in the booking everything


# A purpose that needs another one to make sense (a summary is made from a transcript).
REQUIRES: dict[Purpose, frozenset[Purpose]] = {
    Purpose.AI_SUMMARY: frozenset({Purpose.TRANSCRIPTION}),
    Purpose.TRANSCRIPTION: frozenset({Purpose.RECORDING_AUDIO}),
}


class Decision(enum.StrEnum):
    """What a person decided about one purpose (consent/ records it; events carry it)."""

    GRANTED = "granted"
    DENIED = "denied"
    WITHDRAWN = "withdrawn"


class Actor(enum.StrEnum):
    """Who decided: the person themselves, or a guardian for a minor."""

    SUBJECT = "subject"
    GUARDIAN = "guardian"
