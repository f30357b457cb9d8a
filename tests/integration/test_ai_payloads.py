"""Purpose limitation in the code: data reaches a provider only as a payload the gate sealed
for that job's purpose. Every way of trying to get around it fails, before any request."""

from __future__ import annotations

import dataclasses
import subprocess
import sys
import textwrap
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any, cast

import pytest

from core.audio import AudioSpan
from core.purposes import Purpose, RecordingPolicy
from core.settings import Settings
from summaries.payloads import (
    DataCategory,
    NotPermitted,
    PayloadGate,
    Piece,
    PurposeBoundPayload,
    PurposeViolation,
    Utterance,
)
from summaries.provider import OpenAIProvider
from tests.integration.test_ai_provider import Grants, make_booking
from tests.standins.openai import OpenAIStandIn

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture
async def wired() -> AsyncIterator[tuple[OpenAIStandIn, OpenAIProvider]]:
    async with OpenAIStandIn() as server:
        built = OpenAIProvider.from_settings(
            Settings(openai_base_url=server.base_url, openai_api_key="sk-test")
        )
        assert built is not None
        yield server, built
        await built.close()


class Partial:
    """Only some grants: (person index, purpose) pairs."""

    def __init__(self, booking: Any, granted: set[tuple[int, Purpose]]) -> None:
        people = booking.participants
        self.ids = {(people[i].id, p): uuid.uuid4() for i, p in granted}

    async def grants(self, booking_id: uuid.UUID) -> dict[tuple[uuid.UUID, Purpose], uuid.UUID]:
        return self.ids


async def test_a_payload_cannot_be_made_outside_the_gate() -> None:
    booking = make_booking()
    piece = Piece(None, "title", DataCategory.BOOKING_TEXT, (), "x")
    with pytest.raises(PurposeViolation):
        PurposeBoundPayload(Purpose.AI_SUMMARY, booking.id, "en", (piece,))


async def test_a_job_gate_refuses_other_purposes() -> None:
    booking = make_booking()
    gate = PayloadGate(Grants(booking), Purpose.AI_SUMMARY)
    with pytest.raises(PurposeViolation):
        await gate.agenda(booking)
    with pytest.raises(PurposeViolation):
        await gate.transcription(booking, [AudioSpan(booking.host.id, 0, 1, b"a")])


async def test_provider_methods_refuse_payloads_of_another_purpose(
    wired: tuple[OpenAIStandIn, OpenAIProvider],
) -> None:
    server, provider = wired
    booking = make_booking()
    agenda = await PayloadGate(Grants(booking), Purpose.AI_AGENDA).agenda(booking)
    with pytest.raises(PurposeViolation):
        await provider.summarize(cast(Any, agenda))
    with pytest.raises(PurposeViolation):
        await provider.transcribe(cast(Any, agenda))
    assert server.requests == []


async def test_relabelled_or_altered_payloads_are_refused(
    wired: tuple[OpenAIStandIn, OpenAIProvider],
) -> None:
    server, provider = wired
    booking = make_booking()
    agenda = await PayloadGate(Grants(booking), Purpose.AI_AGENDA).agenda(booking)
    relabelled = dataclasses.replace(agenda, purpose=Purpose.AI_SUMMARY)
    with pytest.raises(PurposeViolation):
        await provider.summarize(cast(Any, relabelled))
    extra = Piece(booking.participants[1].id, "x", DataCategory.SPEECH_TEXT, (), "smuggled")
    padded = dataclasses.replace(agenda, pieces=(*agenda.pieces, extra))
    with pytest.raises(PurposeViolation):
        await provider.agenda(padded, minutes=30)
    forged = object.__new__(PurposeBoundPayload)
    with pytest.raises((PurposeViolation, AttributeError)):
        await provider.agenda(forged, minutes=30)
    assert server.requests == []
    await provider.agenda(agenda, minutes=30)  # the real one still goes through
    assert len(server.requests) == 1


async def test_summary_needs_every_speaker_or_the_per_participant_policy() -> None:
    booking = make_booking()
    host, guest = booking.participants
    words = [Utterance(host.id, "Host", 0, 1, "hi"), Utterance(guest.id, "Client 1", 1, 2, "yo")]
    granted = {(0, Purpose.TRANSCRIPTION), (0, Purpose.AI_SUMMARY), (1, Purpose.TRANSCRIPTION)}
    gate = PayloadGate(Partial(booking, granted), Purpose.AI_SUMMARY)
    with pytest.raises(NotPermitted) as refused:
        await gate.summary(booking, words, consenting_only=False)
    assert [(e.subject_id, e.missing) for e in refused.value.excluded] == [
        (guest.id, Purpose.AI_SUMMARY)
    ]
    partial = await gate.summary(booking, words, consenting_only=True)
    assert [p.text for p in partial.pieces] == ["hi"]
    assert partial.subjects == (host.id,)


async def test_transcription_takes_only_persons_with_audio_and_transcription_grants() -> None:
    booking = make_booking()
    host, guest = booking.participants
    spans = [AudioSpan(host.id, 0, 1, b"host"), AudioSpan(guest.id, 1, 2, b"guest")]
    granted = {(0, Purpose.RECORDING_AUDIO), (0, Purpose.TRANSCRIPTION), (1, Purpose.TRANSCRIPTION)}
    payload = await PayloadGate(Partial(booking, granted), Purpose.TRANSCRIPTION).transcription(
        booking, spans
    )
    assert [p.audio for p in payload.pieces] == [b"host"]
    assert payload.excluded[0].missing is Purpose.RECORDING_AUDIO


async def test_purposes_the_booking_did_not_request_are_never_built() -> None:
    booking = make_booking()
    booking.requested_purposes = [Purpose.RECORDING_AUDIO.value, Purpose.TRANSCRIPTION.value]
    booking.recording_policy = RecordingPolicy.PER_PARTICIPANT
    with pytest.raises(NotPermitted, match=r"does not request ai\.agenda"):
        await PayloadGate(Grants(booking), Purpose.AI_AGENDA).agenda(booking)


def test_mypy_rejects_a_payload_of_the_wrong_purpose(tmp_path: Path) -> None:
    snippet = tmp_path / "misuse.py"
    snippet.write_text(
        textwrap.dedent(
            """
            from summaries.payloads import SummaryPayload, TranscriptionPayload
            from summaries.provider import OpenAIProvider


            async def misuse(p: OpenAIProvider, s: SummaryPayload) -> None:
                await p.transcribe(s)


            async def fine(p: OpenAIProvider, t: TranscriptionPayload) -> None:
                await p.transcribe(t)
            """
        )
    )
    result = subprocess.run(
        [sys.executable, "-m", "mypy", "--strict", "--follow-imports=silent", str(snippet)],
        cwd=ROOT, capture_output=True, text=True, check=False, timeout=300,
    )
    errors = [line for line in result.stdout.splitlines() if ": error:" in line]
    assert len(errors) == 1, result.stdout
    assert "misuse.py:7:" in errors[0]
    assert 'expected "PurposeBoundPayload[Literal[Purpose.TRANSCRIPTION]]"' in errors[0]
