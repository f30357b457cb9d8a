"""AI jobs end to end: bookings through the scheduler API, decisions through the consent API,
the real `openai` client against the stand-in. What left callgate is read from the stand-in's
recorded requests; what the people see is read from the API."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest
from sqlalchemy import func, select

from api.services import Services
from core.accounts import Scope
from core.clock import ManualClock
from core.runtime import Runtime
from summaries.outputs import Summary
from summaries.service import AiJobs
from tests.standins.openai import Fault, FaultKind, OpenAIStandIn
from tests.support.ai import (
    Recordings,
    Session,
    book_session,
    decide,
    grant,
    settle,
    soon,
    tone,
    until_jobs,
)
from tests.support.bookings import bearer

REC = ("recording.audio", "transcription", "ai.summary")
WORDS = {
    0: "Welcome. Mail me at ada@example.com and we decide to ship in May.",
    1: "Grace here, my number is +41 44 668 18 00; Ada owns the budget.",
    2: "I am Linus Secret and I do not want this in any summary.",
}


@pytest.fixture
async def standin() -> AsyncIterator[OpenAIStandIn]:
    async with OpenAIStandIn() as server:
        yield server


@pytest.fixture
def settings_overrides(standin: OpenAIStandIn) -> dict[str, Any]:
    return {
        "openai_base_url": standin.base_url,
        "openai_api_key": "sk-test",
        "openai_model": "summary-model",
        "openai_transcription_model": "transcribe-model",
        "openai_timeout_s": 1.0,
        "openai_max_attempts": 3,
    }


@pytest.fixture
def recordings(runtime: Runtime, services: Services) -> Recordings:
    source = Recordings()
    service = services.ai_jobs
    assert isinstance(service, AiJobs)
    service.audio = source
    return source


async def three_people(
    client: httpx.AsyncClient,
    keys: dict[Scope, str],
    clock: ManualClock,
    recordings: Recordings,
    standin: OpenAIStandIn,
    *,
    policy: str = "per_participant",
) -> tuple[Session, dict[int, bytes]]:
    session = await book_session(
        client, keys, soon(clock.now()), purposes=REC,
        names=("Ada Lovelace", "Grace Hopper", "Linus Secret"), recording_policy=policy,
        recording_access="participants",  # each reads everyone's outputs (test_session_access)
    )
    audio = {i: tone(300 + 150 * i) for i in range(3)}
    for i, person in enumerate(session.people):
        standin.hear(audio[i], WORDS[i])
        recordings.add(session.booking_id, person, 1000 * i, audio[i])
    return session, audio


async def start(client: httpx.AsyncClient, session: Session, kind: str) -> httpx.Response:
    return await client.post(
        f"/v1/bookings/{session.booking_id}/jobs", json={"kind": kind}, headers=session.host.headers
    )


async def register(client: httpx.AsyncClient, keys: dict[Scope, str], session: Session) -> list[
    dict[str, Any]
]:
    response = await client.get(
        "/v1/admin/processing", params={"booking_id": str(session.booking_id)},
        headers=bearer(keys[Scope.AUDITOR]),
    )
    assert response.status_code == 200
    return list(reversed(response.json()["entries"]))  # oldest first


async def test_transcript_and_summary_leave_out_who_did_not_consent(
    client: httpx.AsyncClient, api_keys: dict[Scope, str], clock: ManualClock,
    recordings: Recordings, standin: OpenAIStandIn,
) -> None:
    session, audio = await three_people(client, api_keys, clock, recordings, standin)
    ada, grace, linus = session.people
    await grant(client, ada, *REC)
    await grant(client, grace, *REC)
    await grant(client, linus, "recording.audio")
    await decide(client, linus, "transcription", "denied")

    assert (await start(client, session, "transcription")).status_code == 202
    jobs = await settle(client, session)
    assert [(j["kind"], j["status"]) for j in jobs] == [
        ("transcription", "succeeded"), ("ai.summary", "succeeded")
    ]

    uploads = standin.on("/v1/audio/transcriptions")
    assert [u.files["file"] for u in uploads] == [audio[0], audio[1]]
    assert all(u.fields["model"] == "transcribe-model" for u in uploads)
    (summary_request,) = standin.on("/v1/responses")
    body = summary_request.json or {}
    assert body["store"] is False
    sent = summary_request.text()
    for secret in ("Linus", "Secret", "any summary", "ada@example.com", "668 18 00", "Grace",
                   "Ada", "Hopper", "Lovelace"):
        assert secret not in sent, secret
    segments = json.loads(body["input"][0]["content"])["segments"]
    assert segments == [
        {"speaker": "Host", "text": "Welcome. Mail me at [email] and we decide to ship in May."},
        {"speaker": "Client 1",
         "text": "Client 1 here, my number is [phone]; Host owns the budget."},
    ]

    transcript = (await client.get(
        f"/v1/bookings/{session.booking_id}/transcript", headers=grace.headers
    )).json()
    assert [s["speaker"] for s in transcript["segments"]] == ["Host", "Client 1"]
    summary = await client.get(f"/v1/bookings/{session.booking_id}/summary", headers=linus.headers)
    assert summary.status_code == 200
    assert summary.json()["action_items"] == [{"owner": "Host", "task": "Send the notes"}]
    assert summary.json()["purpose"] == "ai.summary"

    rows = await register(client, api_keys, session)
    transcription_row, summary_row = sorted(rows, key=lambda r: r["purpose"] != "transcription")
    assert [(r["purpose"], r["outcome"]) for r in (transcription_row, summary_row)] == [
        ("transcription", "sent"), ("ai.summary", "sent")
    ]
    assert transcription_row["subjects"] == [str(ada.id), str(grace.id)]
    assert set(transcription_row["consent_entries"]) == {
        p.entries[k] for p in (ada, grace) for k in ("recording.audio", "transcription")
    }
    assert transcription_row["input_bytes"] == len(audio[0]) + len(audio[1])
    assert transcription_row["data_categories"] == ["voice_audio"]
    assert transcription_row["model"] == "transcribe-model"
    assert transcription_row["endpoint"] == f"127.0.0.1:{standin.port}"
    assert summary_row["subjects"] == [str(ada.id), str(grace.id)]
    assert set(summary_row["consent_entries"]) == {
        p.entries[k] for p in (ada, grace) for k in ("transcription", "ai.summary")
    }
    assert summary_row["model"] == body["model"] == "summary-model"
    sent_text = body["instructions"] + body["input"][0]["content"]
    assert summary_row["input_bytes"] == len(sent_text.encode())
    assert summary_row["data_categories"] == ["speech_text"]


async def test_all_or_nothing_summary_is_not_run_and_says_why(
    client: httpx.AsyncClient, api_keys: dict[Scope, str], clock: ManualClock,
    recordings: Recordings, standin: OpenAIStandIn,
) -> None:
    session, _ = await three_people(
        client, api_keys, clock, recordings, standin, policy="all_or_nothing"
    )
    ada, grace, linus = session.people
    await grant(client, ada, *REC)
    await grant(client, grace, "recording.audio", "transcription")
    await decide(client, grace, "ai.summary", "denied")
    await decide(client, linus, "recording.audio", "denied")
    await start(client, session, "transcription")
    jobs = await settle(client, session)
    assert [(j["kind"], j["status"], j["error_code"]) for j in jobs] == [
        ("transcription", "succeeded", None), ("ai.summary", "skipped", "consent")
    ]
    assert "ai.summary" in jobs[1]["error"]
    assert standin.on("/v1/responses") == []
    rows = await register(client, api_keys, session)
    (skipped,) = [r for r in rows if r["purpose"] == "ai.summary"]
    assert skipped["outcome"] == "skipped"
    assert skipped["subjects"] == [str(grace.id)]
    assert skipped["input_bytes"] == 0
    missing = await client.get(f"/v1/bookings/{session.booking_id}/summary", headers=ada.headers)
    assert missing.status_code == 404


async def test_per_participant_summary_uses_only_consenting_speakers(
    client: httpx.AsyncClient, api_keys: dict[Scope, str], clock: ManualClock,
    recordings: Recordings, standin: OpenAIStandIn,
) -> None:
    session, _ = await three_people(client, api_keys, clock, recordings, standin)
    ada, grace, linus = session.people
    await grant(client, ada, *REC)
    await grant(client, grace, *REC)
    await grant(client, linus, "recording.audio", "transcription")
    await start(client, session, "transcription")
    jobs = await settle(client, session)
    assert [j["status"] for j in jobs] == ["succeeded", "succeeded"]
    assert len(standin.on("/v1/audio/transcriptions")) == 3  # Linus consented to transcription
    (request,) = standin.on("/v1/responses")
    assert "not want this" not in request.text()
    assert "Client 2" not in request.text()
    rows = await register(client, api_keys, session)
    (summary_row,) = [r for r in rows if r["purpose"] == "ai.summary"]
    assert summary_row["subjects"] == [str(ada.id), str(grace.id)]
    assert summary_row["detail"] == "1 person(s) left out"


async def test_withdrawing_ai_summary_deletes_and_resummarizes_without_them(
    client: httpx.AsyncClient, api_keys: dict[Scope, str], clock: ManualClock,
    recordings: Recordings, standin: OpenAIStandIn,
) -> None:
    session, _ = await three_people(client, api_keys, clock, recordings, standin)
    ada, grace, linus = session.people
    for person in session.people:
        await grant(client, person, *REC)
    await start(client, session, "transcription")
    await settle(client, session)
    first = (await client.get(
        f"/v1/bookings/{session.booking_id}/summary", headers=ada.headers
    )).json()
    assert first["speakers"] == 3

    standin.answer = lambda schema, body: {
        "summary": "Second version.", "decisions": [], "action_items": []
    }
    await decide(client, grace, "ai.summary", "withdrawn")
    await until_jobs(client, session, 3)
    jobs = await settle(client, session)
    assert sorted((j["kind"], j["status"]) for j in jobs) == [
        ("ai.summary", "succeeded"), ("ai.summary", "succeeded"), ("transcription", "succeeded")
    ]
    second = (await client.get(
        f"/v1/bookings/{session.booking_id}/summary", headers=grace.headers
    )).json()
    assert second["id"] != first["id"]
    assert second["summary"] == "Second version."
    assert second["speakers"] == 2
    rerun = standin.on("/v1/responses")[-1]
    assert "number is" not in rerun.text()
    assert "Client 1" not in json.dumps(
        [s["speaker"] for s in json.loads((rerun.json or {})["input"][0]["content"])["segments"]]
    )
    rows = await register(client, api_keys, session)
    assert sorted((r["purpose"], r["outcome"]) for r in rows) == [
        ("ai.summary", "deleted"), ("ai.summary", "sent"), ("ai.summary", "sent"),
        ("transcription", "sent"),
    ]
    (deleted,) = [r for r in rows if r["outcome"] == "deleted"]
    assert deleted["subjects"] == [str(grace.id)]
    assert first["id"] in deleted["detail"]
    summaries_sent = [r["subjects"] for r in rows if r["purpose"] == "ai.summary"]
    assert [str(ada.id), str(linus.id)] in summaries_sent


async def test_agenda_runs_only_with_host_and_stating_client_consent(
    client: httpx.AsyncClient, api_keys: dict[Scope, str], clock: ManualClock,
    standin: OpenAIStandIn,
) -> None:
    session = await book_session(
        client, api_keys, soon(clock.now()), purposes=("ai.agenda",),
        title="Coaching with Ada Lovelace (ada@example.com)",
        stated_purpose="Prepare my talk; slides at https://drive.example.com/d/8f7e6?usp=x",
    )
    ada, grace = session.people
    await grant(client, ada, "ai.agenda")
    await decide(client, grace, "ai.agenda", "denied")
    assert (await start(client, session, "ai.agenda")).status_code == 202
    (job,) = await settle(client, session)
    assert (job["status"], job["error_code"]) == ("skipped", "consent")
    assert standin.requests == []

    await decide(client, grace, "ai.agenda", "granted")
    admin = bearer(api_keys[Scope.ADMIN])
    path = f"/v1/bookings/{session.booking_id}/jobs"
    retried = await client.post(path, json={"kind": "ai.agenda"}, headers=admin)
    assert retried.status_code == 202
    assert retried.json()["id"] != job["id"]  # a skipped job is retried as a new one
    jobs = await settle(client, session)
    assert sorted(j["status"] for j in jobs) == ["skipped", "succeeded"]
    again = await client.post(path, json={"kind": "ai.agenda"}, headers=grace.headers)
    assert again.json()["id"] == retried.json()["id"]  # a succeeded job is not run twice
    (request,) = standin.requests
    user = json.loads((request.json or {})["input"][0]["content"])
    assert user == {"title": "Coaching with Host ([email])", "stated_purpose":
                    "Prepare my talk; slides at [link]"}
    agenda = await client.get(f"/v1/bookings/{session.booking_id}/agenda", headers=grace.headers)
    assert [i["minutes"] for i in agenda.json()["items"]] == [10, 5]
    rows = await register(client, api_keys, session)
    assert sorted(r["outcome"] for r in rows) == ["sent", "skipped"]
    (sent,) = [r for r in rows if r["outcome"] == "sent"]
    assert sent["subjects"] == [str(ada.id), str(grace.id)]
    assert set(sent["consent_entries"]) == {ada.entries["ai.agenda"], grace.entries["ai.agenda"]}
    assert sent["data_categories"] == ["booking_text"]


async def test_the_agenda_takes_the_words_and_consent_of_the_client_who_stated_them(
    client: httpx.AsyncClient, api_keys: dict[Scope, str], clock: ManualClock,
    standin: OpenAIStandIn,
) -> None:
    session = await book_session(
        client, api_keys, soon(clock.now()), purposes=("ai.agenda",),
        names=("Ada Lovelace", "Grace Hopper", "Linus Torvalds"),
        stated_purpose="Review my kernel patch", stated_by="client-2",
    )
    ada, grace, linus = session.people
    await grant(client, ada, "ai.agenda")
    await grant(client, linus, "ai.agenda")
    await decide(client, grace, "ai.agenda", "denied")  # her words are not in it
    assert (await start(client, session, "ai.agenda")).status_code == 202
    (job,) = await settle(client, session)
    assert job["status"] == "succeeded"
    (request,) = standin.requests
    user = json.loads((request.json or {})["input"][0]["content"])
    assert user["stated_purpose"] == "Review my kernel patch"
    (sent,) = await register(client, api_keys, session)
    assert sent["subjects"] == [str(ada.id), str(linus.id)]
    assert set(sent["consent_entries"]) == {ada.entries["ai.agenda"], linus.entries["ai.agenda"]}


async def test_withdrawal_while_the_provider_works_discards_its_answer(
    client: httpx.AsyncClient, api_keys: dict[Scope, str], clock: ManualClock,
    recordings: Recordings, standin: OpenAIStandIn, runtime: Runtime,
) -> None:
    session, _ = await three_people(client, api_keys, clock, recordings, standin)
    ada, _, linus = session.people
    for person in session.people:
        await grant(client, person, *REC)
    standin.answer = lambda schema, body: {
        "summary": f"{len(json.loads(body['input'][0]['content'])['segments'])} segments",
        "decisions": [], "action_items": [],
    }
    standin.fail(Fault(FaultKind.DELAY, 0.8, "/v1/responses"))  # the first summary stalls
    await start(client, session, "transcription")
    for _ in range(600):  # until the stalled summary request has reached the provider
        if standin.on("/v1/responses"):
            break
        await asyncio.sleep(0.05)
    await decide(client, linus, "ai.summary", "withdrawn")
    await until_jobs(client, session, 3)
    jobs = await settle(client, session)
    assert sorted((j["kind"], j["status"]) for j in jobs) == [
        ("ai.summary", "skipped"), ("ai.summary", "succeeded"), ("transcription", "succeeded")
    ]
    (discarded,) = [j for j in jobs if j["status"] == "skipped"]
    assert "withdrawn while the job ran" in discarded["error"]
    summary = (await client.get(
        f"/v1/bookings/{session.booking_id}/summary", headers=ada.headers
    )).json()
    assert (summary["summary"], summary["speakers"]) == ("2 segments", 2)
    last = standin.on("/v1/responses")[-1]
    assert "not want this" not in last.text()
    async with runtime.db.session() as db:
        assert await db.scalar(select(func.count()).select_from(Summary)) == 1
