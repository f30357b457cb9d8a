"""The OpenAI provider against the stand-in server, through the real `openai` client:
what each request carries, and every failure path (timeout, 429, 500, 4xx, malformed output)."""

from __future__ import annotations

import json
import uuid
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta

import pytest

from core.audio import AudioSpan
from core.bookings import Booking, BookingStatus, Participant, Role, RoomState
from core.purposes import Purpose, RecordingPolicy
from core.settings import Settings
from summaries.payloads import (
    AgendaPayload,
    PayloadGate,
    SummaryPayload,
    Utterance,
)
from summaries.provider import OpenAIProvider, ProviderError
from tests.standins.openai import Fault, FaultKind, OpenAIStandIn

ALL = [p.value for p in Purpose]


class Grants:
    """Every participant granted every purpose (the consent rules are tested elsewhere)."""

    def __init__(self, booking: Booking) -> None:
        people = booking.participants
        self.ids = {(p.id, purpose): uuid.uuid4() for p in people for purpose in Purpose}

    async def grants(self, booking_id: uuid.UUID) -> dict[tuple[uuid.UUID, Purpose], uuid.UUID]:
        return self.ids


def make_booking(language: str = "de-CH") -> Booking:
    now = datetime.now(UTC)
    booking = Booking(
        id=uuid.uuid4(), title="Plan Q3 with ada@example.com", stated_purpose="Hiring plan",
        language=language, starts_at=now, ends_at=now + timedelta(minutes=45),
        status=BookingStatus.SCHEDULED, recording_policy=RecordingPolicy.PER_PARTICIPANT,
        requested_purposes=ALL, record_automatically=False, room_name="r",
        room_state=RoomState.NOT_NEEDED, created_by="t", created_at=now, updated_at=now,
    )
    booking.participants = [
        Participant(id=uuid.uuid4(), position=0, external_id="h", display_name="Ada Lovelace",
                    role=Role.HOST, adult=True, credential_hash="x", created_at=now),
        Participant(id=uuid.uuid4(), position=1, external_id="c", display_name="Grace Hopper",
                    role=Role.CLIENT, adult=True, credential_hash="y", created_at=now,
                    purpose_author=True),
    ]
    return booking


_open: list[OpenAIProvider] = []


@pytest.fixture
async def standin() -> AsyncIterator[OpenAIStandIn]:
    async with OpenAIStandIn() as server:
        yield server
        while _open:
            await _open.pop().close()


class Sleeps(list[float]):
    async def __call__(self, seconds: float) -> None:
        self.append(seconds)


def provider(standin: OpenAIStandIn, sleeps: Sleeps, **overrides: object) -> OpenAIProvider:
    values: dict[str, object] = {
        "openai_base_url": standin.base_url,
        "openai_api_key": "sk-test-key",
        "openai_model": "model-under-test",
        "openai_transcription_model": "transcriber-under-test",
        "openai_timeout_s": 0.5,
        "openai_max_attempts": 3,
    }
    values.update(overrides)
    built = OpenAIProvider.from_settings(Settings(**values))  # type: ignore[arg-type]
    assert built is not None
    built._sleep = sleeps  # no real waiting; the delays asked for are what we check
    _open.append(built)
    return built


async def summary_payload(booking: Booking) -> SummaryPayload:
    host, guest = booking.participants
    utterances = [
        Utterance(host.id, "Host", 0, 900, "Grace Hopper, call me on +41 44 668 18 00."),
        Utterance(guest.id, "Client 1", 900, 1800, "Sure Ada, see https://x.io/u/42?t=abc"),
    ]
    gate = PayloadGate(Grants(booking), Purpose.AI_SUMMARY)
    return await gate.summary(booking, utterances, consenting_only=False)


async def agenda_payload(booking: Booking) -> AgendaPayload:
    return await PayloadGate(Grants(booking), Purpose.AI_AGENDA).agenda(booking)


async def test_summary_request_is_minimal_unstored_and_validated(standin: OpenAIStandIn) -> None:
    booking = make_booking()
    outcome = await provider(standin, Sleeps()).summarize(await summary_payload(booking))
    assert outcome.value.decisions == ["Ship in spring"]
    assert outcome.attempts == 1
    (sent,) = standin.requests
    assert sent.path == "/v1/responses"
    assert sent.headers["Authorization"] == "Bearer sk-test-key"
    body = sent.json or {}
    assert body["store"] is False
    assert body["model"] == "model-under-test"
    assert body["text"]["format"]["type"] == "json_schema"
    assert "'de-CH'" in body["instructions"]
    segments = json.loads(body["input"][0]["content"])["segments"]
    assert segments == [
        {"speaker": "Host", "text": "Client 1, call me on [phone]."},
        {"speaker": "Client 1", "text": "Sure Host, see [link]"},
    ]
    for secret in ("Grace", "Hopper", "Ada", "668", "x.io", "abc"):
        assert secret not in sent.text()


async def test_agenda_through_chat_completions(standin: OpenAIStandIn) -> None:
    booking = make_booking()
    chat = provider(standin, Sleeps(), openai_chat_completions=True)
    outcome = await chat.agenda(await agenda_payload(booking), minutes=45)
    assert [item.title for item in outcome.value.items] == ["Goals", "Next steps"]
    (sent,) = standin.requests
    assert sent.path == "/v1/chat/completions"
    body = sent.json or {}
    assert body["store"] is False
    assert body["response_format"]["json_schema"]["name"] == "agenda"
    user = json.loads(body["messages"][1]["content"])
    assert user == {"title": "Plan Q3 with [email]", "stated_purpose": "Hiring plan"}


async def test_transcription_uploads_each_span_as_multipart(standin: OpenAIStandIn) -> None:
    booking = make_booking()
    host, guest = booking.participants
    standin.hear(b"host-audio", "hello")
    spans = [AudioSpan(host.id, 0, 500, b"host-audio"), AudioSpan(guest.id, 500, 900, b"guest")]
    payload = await PayloadGate(Grants(booking), Purpose.TRANSCRIPTION).transcription(
        booking, spans
    )
    outcome = await provider(standin, Sleeps()).transcribe(payload)
    assert [h.text for h in outcome.value] == ["hello", "(inaudible)"]
    assert [r.files["file"] for r in standin.requests] == [b"host-audio", b"guest"]
    assert standin.requests[0].fields == {
        "model": "transcriber-under-test", "language": "de", "response_format": "json"
    }


async def test_429_waits_as_long_as_retry_after_says(standin: OpenAIStandIn) -> None:
    standin.fail(Fault(FaultKind.RATE_LIMITED, 7))
    sleeps = Sleeps()
    outcome = await provider(standin, sleeps).summarize(await summary_payload(make_booking()))
    assert outcome.attempts == 2
    assert sleeps == [7.0]
    assert [r.answered for r in standin.requests] == [429, 200]


async def test_500_and_timeout_are_retried_with_growing_backoff(standin: OpenAIStandIn) -> None:
    standin.fail(Fault(FaultKind.SERVER_ERROR), Fault(FaultKind.DELAY, 2.0))
    sleeps = Sleeps()
    outcome = await provider(standin, sleeps).summarize(await summary_payload(make_booking()))
    assert outcome.attempts == 3
    assert len(standin.requests) == 3
    assert 0.25 <= sleeps[0] <= 0.5 < sleeps[1] <= 1.0


async def test_persistent_timeouts_fail_after_the_last_attempt(standin: OpenAIStandIn) -> None:
    standin.fail(*[Fault(FaultKind.DELAY, 2.0)] * 3)
    with pytest.raises(ProviderError) as failed:
        await provider(standin, Sleeps()).summarize(await summary_payload(make_booking()))
    assert failed.value.code == "provider_timeout"
    assert failed.value.attempts == 3
    assert len(standin.requests) == 3


async def test_other_4xx_is_not_retried(standin: OpenAIStandIn) -> None:
    standin.fail(Fault(FaultKind.BAD_REQUEST))
    sleeps = Sleeps()
    with pytest.raises(ProviderError) as failed:
        await provider(standin, sleeps).summarize(await summary_payload(make_booking()))
    assert failed.value.code == "provider_rejected"
    assert len(standin.requests) == 1
    assert sleeps == []


async def test_malformed_output_is_retried_then_reported(standin: OpenAIStandIn) -> None:
    standin.fail(Fault(FaultKind.MALFORMED))
    outcome = await provider(standin, Sleeps()).summarize(await summary_payload(make_booking()))
    assert outcome.attempts == 2
    standin.fail(*[Fault(FaultKind.MALFORMED)] * 3)
    with pytest.raises(ProviderError) as failed:
        await provider(standin, Sleeps()).summarize(await summary_payload(make_booking()))
    assert failed.value.code == "malformed_output"


async def test_output_breaking_the_schema_is_malformed(standin: OpenAIStandIn) -> None:
    standin.answer = lambda schema, body: {"summary": "", "decisions": "none"}
    with pytest.raises(ProviderError) as failed:
        await provider(standin, Sleeps()).summarize(await summary_payload(make_booking()))
    assert failed.value.code == "malformed_output"
    assert len(standin.requests) == 3


def test_no_endpoint_and_no_key_means_no_provider() -> None:
    assert OpenAIProvider.from_settings(Settings()) is None
