"""The pure gate under random sequences of joins, leaves, grants, denials and withdrawals.

A hypothesis state machine drives one booking and checks, after every step, the three promises
of the gate: never yes after a withdrawal, never yes for a purpose the booking did not request,
and under all_or_nothing never yes for recording while someone present has not granted.
"""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta

from hypothesis import settings as hsettings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, rule

from consent.gate import BookingConsent, Reason, Recorded, may
from consent.purposes import REQUIRES, Decision, Purpose, RecordingPolicy

SUBJECTS = [uuid.UUID(int=i + 1) for i in range(3)]
START = datetime(2026, 11, 22, 9, 0, tzinfo=UTC)

subjects = st.sampled_from(SUBJECTS)
purposes = st.sampled_from(list(Purpose))
decisions = st.sampled_from(list(Decision))


class GateMachine(RuleBasedStateMachine):
    def __init__(self) -> None:
        super().__init__()
        self.now = START
        self.seq = 0
        self.state = BookingConsent(uuid.uuid4(), frozenset())
        self.decided: list[Recorded] = []

    @initialize(
        requested=st.frozensets(purposes, min_size=0),
        policy=st.sampled_from(list(RecordingPolicy)),
    )
    def book(self, requested: frozenset[Purpose], policy: RecordingPolicy) -> None:
        self.state = BookingConsent(uuid.uuid4(), requested, policy)

    @rule(subject=subjects)
    def join(self, subject: uuid.UUID) -> None:
        self.state.present.add(subject)

    @rule(subject=subjects)
    def leave(self, subject: uuid.UUID) -> None:
        self.state.present.discard(subject)

    @rule(subject=subjects, purpose=purposes, decision=decisions)
    def decide(self, subject: uuid.UUID, purpose: Purpose, decision: Decision) -> None:
        self.seq += 1
        item = Recorded(self.seq, subject, purpose, decision, self.now)
        self.decided.append(item)
        assert self.state.record(item)

    @rule(minutes=st.integers(min_value=0, max_value=30))
    def tick(self, minutes: int) -> None:
        self.now += timedelta(minutes=minutes, seconds=1)

    @rule(index=st.integers(min_value=0))
    def redeliver(self, index: int) -> None:
        """The bus may deliver a decision twice; the second delivery changes nothing."""
        if self.decided:
            assert not self.state.record(self.decided[index % len(self.decided)])

    def latest(self, subject: uuid.UUID, purpose: Purpose) -> Decision | None:
        mine = [d for d in self.decided if d.subject_id == subject and d.purpose == purpose]
        return mine[-1].decision if mine else None

    def granted(self, subject: uuid.UUID, purpose: Purpose) -> bool:
        return purpose in self.state.requested and self.latest(subject, purpose) is Decision.GRANTED

    @invariant()
    def never_after_withdrawal_or_denial(self) -> None:
        for subject in SUBJECTS:
            for purpose in Purpose:
                if self.latest(subject, purpose) in (Decision.WITHDRAWN, Decision.DENIED, None):
                    assert not may(subject, self.state, purpose, self.now).allowed

    @invariant()
    def never_unrequested(self) -> None:
        for subject in SUBJECTS:
            for purpose in set(Purpose) - self.state.requested:
                verdict = may(subject, self.state, purpose, self.now)
                assert not verdict.allowed
                assert verdict.reason is Reason.NOT_REQUESTED

    @invariant()
    def all_or_nothing_needs_everyone_present(self) -> None:
        if self.state.policy is not RecordingPolicy.ALL_OR_NOTHING:
            return
        for purpose in (Purpose.RECORDING_AUDIO, Purpose.RECORDING_VIDEO):
            everyone = all(self.granted(s, purpose) for s in self.state.present)
            for subject in SUBJECTS:
                if may(subject, self.state, purpose, self.now).allowed:
                    assert everyone

    def expected(self, subject: uuid.UUID, purpose: Purpose) -> bool:
        yes = self.granted(subject, purpose)
        if purpose.is_recording and self.state.policy is RecordingPolicy.ALL_OR_NOTHING:
            yes = yes and all(self.granted(other, purpose) for other in self.state.present)
        return yes and all(self.expected(subject, n) for n in REQUIRES.get(purpose, ()))

    @invariant()
    def yes_exactly_when_the_model_says_yes(self) -> None:
        for subject in SUBJECTS:
            for purpose in Purpose:
                assert may(subject, self.state, purpose, self.now).allowed is self.expected(
                    subject, purpose
                )

    @invariant()
    def the_past_is_answered_from_the_decisions_made_by_then(self) -> None:
        """Asking about an earlier moment ignores decisions taken after it."""
        if not self.decided:
            return
        first = self.decided[0]
        before = first.at - timedelta(microseconds=1)
        for purpose in Purpose:
            assert not may(first.subject_id, self.state, purpose, before).allowed


GateMachine.TestCase.settings = hsettings(max_examples=100, stateful_step_count=40, deadline=None)
TestGate = GateMachine.TestCase


def test_cancelled_booking_allows_nothing() -> None:
    subject = SUBJECTS[0]
    state = BookingConsent(uuid.uuid4(), frozenset({Purpose.AI_AGENDA}))
    state.record(Recorded(1, subject, Purpose.AI_AGENDA, Decision.GRANTED, START))
    assert may(subject, state, Purpose.AI_AGENDA, START).allowed
    state.cancelled = True
    verdict = may(subject, state, Purpose.AI_AGENDA, START)
    assert not verdict.allowed
    assert verdict.reason is Reason.CANCELLED


def test_summary_needs_transcription_and_transcription_needs_audio() -> None:
    subject = SUBJECTS[0]
    wanted = frozenset({Purpose.RECORDING_AUDIO, Purpose.TRANSCRIPTION, Purpose.AI_SUMMARY})
    state = BookingConsent(uuid.uuid4(), wanted)
    state.record(Recorded(1, subject, Purpose.AI_SUMMARY, Decision.GRANTED, START))
    state.record(Recorded(2, subject, Purpose.TRANSCRIPTION, Decision.GRANTED, START))
    verdict = may(subject, state, Purpose.AI_SUMMARY, START)
    assert verdict.reason is Reason.REQUIRES
    state.record(Recorded(3, subject, Purpose.RECORDING_AUDIO, Decision.GRANTED, START))
    assert may(subject, state, Purpose.AI_SUMMARY, START).allowed
