"""Transcripts and summaries are encrypted at rest under the speakers' own data keys: the
database holds no plaintext, the jobs and the reads decrypt, and destroying one speaker's key
(erasure) leaves any copy of their lines and of the summaries made from their words
unreadable."""

from __future__ import annotations

import json
import uuid
from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest
from sqlalchemy import text

from api.services import Services
from core.accounts import Scope
from core.clock import ManualClock
from core.runtime import Runtime
from summaries.sealing import Sealer
from tests.standins.openai import OpenAIStandIn
from tests.support.ai import Recordings, book_session, grant, settle, soon, tone
from tests.support.bookings import bearer

PURPOSES = ("recording.audio", "transcription", "ai.summary")
SAID = ["the launch moves to March", "my phone number is private"]


@pytest.fixture
async def standin() -> AsyncIterator[OpenAIStandIn]:
    async with OpenAIStandIn() as server:
        yield server


@pytest.fixture
def settings_overrides(standin: OpenAIStandIn) -> dict[str, Any]:
    return {"openai_base_url": standin.base_url, "openai_api_key": "sk-test"}


async def _rows(runtime: Runtime) -> tuple[list[tuple[Any, ...]], list[tuple[Any, ...]]]:
    """The stored rows as the database holds them (plain SQL, no model in between)."""
    async with runtime.db.engine.connect() as conn:
        segments = list(await conn.execute(
            text("SELECT transcript_id, subject_id, text FROM transcript_segments")
        ))
        summaries = list(await conn.execute(text("SELECT id, body FROM summaries")))
    return [tuple(r) for r in segments], [tuple(r) for r in summaries]


async def test_outputs_are_sealed_at_rest_and_erasure_leaves_no_copy_readable(
    client: httpx.AsyncClient, api_keys: dict[Scope, str], clock: ManualClock,
    standin: OpenAIStandIn, runtime: Runtime, services: Services,
) -> None:
    session = await book_session(client, api_keys, soon(clock.now()), purposes=PURPOSES)
    source = Recordings()
    services.ai_jobs.audio = source
    for i, person in enumerate(session.people):
        await grant(client, person, *PURPOSES)
        audio = tone(300 + 200 * i)
        source.add(session.booking_id, person, 1000 * i, audio)
        standin.hear(audio, SAID[i])
    asked = await client.post(f"/v1/bookings/{session.booking_id}/jobs",
                              json={"kind": "transcription"}, headers=session.host.headers)
    assert asked.status_code == 202, asked.text
    jobs = await settle(client, session)
    assert sorted((j["kind"], j["status"]) for j in jobs) == [
        ("ai.summary", "succeeded"), ("transcription", "succeeded")
    ]

    # The reads decrypt (the summary job decrypted the lines to make the summary).
    admin = bearer(api_keys[Scope.ADMIN])
    transcript = await client.get(f"/v1/bookings/{session.booking_id}/transcript", headers=admin)
    assert [s["text"] for s in transcript.json()["segments"]] == SAID
    summary = await client.get(f"/v1/bookings/{session.booking_id}/summary", headers=admin)
    assert summary.status_code == 200
    summary_text = summary.json()["summary"]
    assert summary_text
    # The summary job decrypted the stored lines to build what it sent.
    sent = " ".join(r.text() for r in standin.requests if r.json is not None)
    assert all(said in sent for said in SAID)

    # The database holds none of it in plaintext.
    segments, summaries = await _rows(runtime)
    stored = json.dumps([[str(v) for v in row] for row in [*segments, *summaries]])
    for said in [*SAID, summary_text, *summary.json()["decisions"]]:
        assert said not in stored
    assert all(str(row[2]).startswith("cg1.") for row in segments)
    assert len(segments) == 2
    assert len(summaries) == 1

    # A backup taken now, then the guest is erased (their data key destroyed).
    guest = session.people[1]
    erased = await client.post("/v1/admin/subjects/client-1/erase", headers=admin,
                               json={"confirm": "client-1"})
    assert erased.status_code == 200, erased.text
    async with runtime.db.session() as db:
        sealer = Sealer(db, runtime.keys, runtime.clock.now())
        lines = {
            uuid.UUID(str(subject)): await sealer.open_line(
                uuid.UUID(str(transcript_id)), uuid.UUID(str(subject)), str(body)
            )
            for transcript_id, subject, body in segments
        }
        summary_id, body = summaries[0]
        backup = body if isinstance(body, dict) else json.loads(body)
        opened = await sealer.open_summary(uuid.UUID(str(summary_id)), backup)
    assert lines[guest.id] is None  # their line: noise without their key
    assert lines[session.host.id] == SAID[0]  # the host's line: under the host's key
    assert opened is None  # the summary needs every speaker's key
