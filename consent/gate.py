"""The gate as a pure function: may this person's data be used for this purpose at this time?

`may(subject, booking, purpose, at)` reads only what it is given: the booking's requested
purposes, its recording policy, the decisions known so far (each with its time and ledger
seq), who is present, who is a minor and whose processing is restricted. No I/O, so the
recorder, the AI jobs and the property tests ask the same question the same way. Everything
not positively granted is a no, with a reason.
"""

from __future__ import annotations

import enum
import uuid
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import datetime

from consent.purposes import REQUIRES, Actor, Decision, Purpose, RecordingPolicy


class Reason(enum.StrEnum):
    GRANTED = "granted"
    NOT_REQUESTED = "not_requested"
    NO_DECISION = "no_decision"
    DENIED = "denied"
    WITHDRAWN = "withdrawn"
    CANCELLED = "booking_cancelled"
    REQUIRES = "requires_other_purpose"
    OTHERS_PRESENT = "someone_present_has_not_granted"
    NOT_LOADED = "booking_not_loaded"
    UNHEALTHY = "consent_state_unconfirmed"
    TAMPERED = "consent_ledger_tampered"
    RECONSENT = "notice_changed_materially"
    RESTRICTED = "processing_restricted"
    GUARDIAN = "guardian_has_not_granted"


@dataclass(frozen=True)
class Verdict:
    allowed: bool
    reason: Reason
    detail: str = ""

    def __bool__(self) -> bool:
        return self.allowed


@dataclass(frozen=True)
class Recorded:
    """One decision as the ledger holds it (only what the gate needs)."""

    seq: int
    subject_id: uuid.UUID
    purpose: Purpose
    decision: Decision
    at: datetime
    actor: Actor = Actor.SUBJECT
    notice_id: uuid.UUID | None = None


def needs_guardian(purpose: Purpose) -> bool:
    """Biometric capture and AI processing of a minor need their guardian's grant too."""
    return purpose.is_recording or purpose in (
        Purpose.TRANSCRIPTION, Purpose.AI_SUMMARY, Purpose.AI_AGENDA
    )


@dataclass
class BookingConsent:
    """Everything the gate knows about one booking."""

    booking_id: uuid.UUID
    requested: frozenset[Purpose]
    policy: RecordingPolicy = RecordingPolicy.PER_PARTICIPANT
    cancelled: bool = False
    present: set[uuid.UUID] = field(default_factory=set)
    history: dict[tuple[uuid.UUID, Purpose], list[Recorded]] = field(default_factory=dict)
    minors: frozenset[uuid.UUID] = frozenset()
    restricted: frozenset[uuid.UUID] = frozenset()
    # notice id -> when a material change of it takes effect (grants under it stop counting)
    superseded: dict[uuid.UUID, datetime] = field(default_factory=dict)

    def outdated(self, item: Recorded, at: datetime) -> bool:
        """Was `item` made under a notice a material change replaced by `at`?"""
        if item.notice_id is None:
            return False
        since = self.superseded.get(item.notice_id)
        return since is not None and since <= at

    def record(self, item: Recorded) -> bool:
        """Add a decision (idempotent, any arrival order); False when already known."""
        items = self.history.setdefault((item.subject_id, item.purpose), [])
        if any(known.seq == item.seq for known in items):
            return False
        items.append(item)
        items.sort(key=lambda known: known.seq)
        return True

    def record_all(self, items: Iterable[Recorded]) -> None:
        for item in items:
            self.record(item)

    def decision_at(
        self, subject: uuid.UUID, purpose: Purpose, at: datetime, actor: Actor = Actor.SUBJECT
    ) -> Recorded | None:
        """The newest decision on `purpose` about the person, made by `actor` (the person,
        or their guardian) no later than `at`."""
        latest = None
        for item in self.history.get((subject, purpose), ()):
            if item.at <= at and item.actor is actor:
                latest = item
        return latest


def may(
    subject: uuid.UUID, booking: BookingConsent, purpose: Purpose, at: datetime
) -> Verdict:
    """May `subject`'s data be captured/processed for `purpose` at `at`?"""
    if booking.cancelled:
        return Verdict(False, Reason.CANCELLED, "the booking is cancelled")
    if subject in booking.restricted:
        return Verdict(False, Reason.RESTRICTED, "an admin restricted this person's processing")
    own = _own(subject, booking, purpose, at)
    if not own.allowed:
        return own
    for needed in sorted(REQUIRES.get(purpose, ())):
        # Transitive (a summary needs a transcript, which needs recorded audio); acyclic.
        if not may(subject, booking, needed, at).allowed:
            return Verdict(False, Reason.REQUIRES, f"{purpose.value} needs {needed.value}")
    if purpose.is_recording and booking.policy is RecordingPolicy.ALL_OR_NOTHING:
        for other in sorted(booking.present - {subject}):
            if not _own(other, booking, purpose, at).allowed:
                return Verdict(
                    False,
                    Reason.OTHERS_PRESENT,
                    "all_or_nothing: someone present has not granted " + purpose.value,
                )
    return own


def _own(subject: uuid.UUID, booking: BookingConsent, purpose: Purpose, at: datetime) -> Verdict:
    if purpose not in booking.requested:
        return Verdict(False, Reason.NOT_REQUESTED, f"the booking did not request {purpose.value}")
    latest = booking.decision_at(subject, purpose, at)
    if latest is None:
        return Verdict(False, Reason.NO_DECISION, f"no decision on {purpose.value} yet")
    if latest.decision is Decision.GRANTED:
        if booking.outdated(latest, at):
            return Verdict(False, Reason.RECONSENT, f"the {purpose.value} notice changed")
        if subject in booking.minors and needs_guardian(purpose):
            return _guardian(subject, booking, purpose, at)
        return Verdict(True, Reason.GRANTED, f"granted at {latest.at.isoformat()}")
    if latest.decision is Decision.WITHDRAWN:
        return Verdict(False, Reason.WITHDRAWN, f"withdrawn at {latest.at.isoformat()}")
    return Verdict(False, Reason.DENIED, f"denied at {latest.at.isoformat()}")


def _guardian(
    subject: uuid.UUID, booking: BookingConsent, purpose: Purpose, at: datetime
) -> Verdict:
    """A minor granted; their guardian must have granted too (and not withdrawn since)."""
    guardian = booking.decision_at(subject, purpose, at, Actor.GUARDIAN)
    if guardian is None or guardian.decision is not Decision.GRANTED:
        return Verdict(False, Reason.GUARDIAN, f"{purpose.value} needs the guardian's grant")
    if booking.outdated(guardian, at):
        return Verdict(False, Reason.RECONSENT, f"the {purpose.value} notice changed")
    return Verdict(True, Reason.GRANTED, f"granted with the guardian at {guardian.at.isoformat()}")
