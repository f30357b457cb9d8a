"""Jobs start on their own: transcription when a session ends (the lifecycle sweep, driven by
the clock, ends it), the agenda once its consent is complete; and the page follows them as
server-sent events."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from datetime import timedelta
from typing import Any

import httpx
import pytest

from api.services import Services
from core.accounts import Scope
from core.clock import ManualClock
from core.runtime import Runtime
from summaries.service import AiJobs
from tests.standins.openai import OpenAIStandIn
from tests.support.ai import (
    Recordings,
    book_session,
    decide,
    grant,
    jobs_of,
    settle,
    soon,
    tone,
    until_jobs,
)
from tests.support.bookings import bearer
from tests.support.lifecycle import outbox_types, until_status


@pytest.fixture
async def standin() -> AsyncIterator[OpenAIStandIn]:
    async with OpenAIStandIn() as server:
        yield server


@pytest.fixture
def settings_overrides(standin: OpenAIStandIn) -> dict[str, Any]:
    return {
        "openai_base_url": standin.base_url, "openai_api_key": "sk-test",
        "lifecycle_sweep_interval_s": 0.05,
    }


async def test_session_end_starts_transcription_then_summary(
    client: httpx.AsyncClient, api_keys: dict[Scope, str], clock: ManualClock,
    standin: OpenAIStandIn, runtime: Runtime, services: Services,
) -> None:
    purposes = ("recording.audio", "transcription", "ai.summary")
    session = await book_session(client, api_keys, soon(clock.now()), purposes=purposes)
    source = Recordings()
    service = services.ai_jobs
    assert isinstance(service, AiJobs)
    service.audio = source
    for i, person in enumerate(session.people):
        await grant(client, person, *purposes)
        audio = tone(300 + 200 * i)
        source.add(session.booking_id, person, 1000 * i, audio)
        standin.hear(audio, f"words of person {i}")
    assert await jobs_of(client, session) == []
    clock.advance(timedelta(hours=3, minutes=1))  # past the booked hour and its window
    await until_jobs(client, session, 1)
    jobs = await settle(client, session)
    assert sorted((j["kind"], j["status"]) for j in jobs) == [
        ("ai.summary", "succeeded"), ("transcription", "succeeded")
    ]
    booking = await until_status(client, api_keys, session.booking_id, "closed")
    told = await outbox_types(runtime, session.booking_id)  # the webhooks the scheduler gets
    assert told.count("consent.changed") == 2 * len(purposes)
    assert told[-4:] == ["booking.ended", "transcript.ready", "summary.ready", "booking.closed"]
    assert booking["opened_at"] <= booking["ended_at"] <= booking["closed_at"]
    assert booking["live_at"] is None


async def test_agenda_is_drafted_when_its_consent_is_complete(
    client: httpx.AsyncClient, api_keys: dict[Scope, str], clock: ManualClock,
    standin: OpenAIStandIn,
) -> None:
    session = await book_session(client, api_keys, soon(clock.now()), purposes=("ai.agenda",))
    host, guest = session.people
    await grant(client, host, "ai.agenda")
    await decide(client, guest, "ai.agenda", "denied")
    assert await jobs_of(client, session) == []
    await decide(client, guest, "ai.agenda", "granted")
    await until_jobs(client, session, 1)
    (job,) = await settle(client, session, as_=guest)
    assert (job["kind"], job["status"]) == ("ai.agenda", "succeeded")
    assert len(standin.requests) == 1


async def test_agenda_waits_for_the_client_who_stated_the_purpose_not_the_first_one(
    client: httpx.AsyncClient, api_keys: dict[Scope, str], clock: ManualClock,
    standin: OpenAIStandIn,
) -> None:
    """The trigger and the payload gate ask the same person: with a second client as
    `stated_by`, the host's and that client's grants start the agenda on their own, and the
    register cites exactly those two grants (the first client never decided)."""
    session = await book_session(
        client, api_keys, soon(clock.now()), purposes=("ai.agenda",),
        names=("Ada Lovelace", "Grace Hopper", "Linus Torvalds"),
        stated_purpose="Review my kernel patch", stated_by="client-2",
    )
    host, _, stater = session.people
    await grant(client, host, "ai.agenda")
    await grant(client, stater, "ai.agenda")
    await until_jobs(client, session, 1)
    (job,) = await settle(client, session, as_=stater)
    assert (job["kind"], job["status"]) == ("ai.agenda", "succeeded")
    (request,) = standin.requests
    assert json.loads((request.json or {})["input"][0]["content"])["stated_purpose"] == (
        "Review my kernel patch"
    )
    register = await client.get(
        "/v1/admin/processing", params={"booking_id": str(session.booking_id)},
        headers=bearer(api_keys[Scope.AUDITOR]),
    )
    assert register.status_code == 200
    (sent,) = [r for r in register.json()["entries"] if r["outcome"] == "sent"]
    assert sent["subjects"] == [str(host.id), str(stater.id)]
    assert set(sent["consent_entries"]) == {host.entries["ai.agenda"], stater.entries["ai.agenda"]}


async def test_event_stream_shows_progress_then_goes_idle(
    client: httpx.AsyncClient, api_keys: dict[Scope, str], clock: ManualClock,
    standin: OpenAIStandIn,
) -> None:
    session = await book_session(client, api_keys, soon(clock.now()), purposes=("ai.agenda",))
    for person in session.people:
        await grant(client, person, "ai.agenda")
    path = f"/v1/bookings/{session.booking_id}/jobs/events"
    await until_jobs(client, session, 1)
    async with client.stream("GET", path, headers=session.host.headers) as response:
        assert response.headers["content-type"].startswith("text/event-stream")
        assert response.headers["cache-control"] == "no-store"
        body = (await response.aread()).decode()
    blocks = [b for b in body.split("\n\n") if b]
    assert blocks[0] == "retry: 5000"
    events = [dict(line.split(": ", 1) for line in b.splitlines()) for b in blocks[1:]]
    assert events[-1]["event"] == "idle"
    jobs = [json.loads(e["data"]) for e in events if e["event"] == "job"]
    assert {j["kind"] for j in jobs} == {"ai.agenda"}
    assert jobs[-1]["status"] == "succeeded"
    assert jobs[-1]["progress"] == 100
