"""Export (access and portability): one ZIP with everything callgate holds about a person,
their own recordings decrypted, streamed in pieces, and logged."""

from __future__ import annotations

import io
import json
import os
import zipfile
from datetime import timedelta
from typing import Any

import av
import httpx
from sqlalchemy import func, select

from api.services import Services
from core.accounts import Scope
from core.organizations import DEFAULT_ORG
from core.runtime import Runtime
from privacy.records import ExportRecord
from privacy.service import Privacy
from signaling.tickets import UsedTicket
from tests.support.bookings import bearer
from tests.support.consent import decide
from tests.support.privacy import (
    add_outputs,
    add_recording,
    audio,
    book,
    person,
)

EXTERNAL = "member-ex-5521"
NAME = "Imogen Exportwell"


def lines(archive: zipfile.ZipFile, name: str) -> list[dict[str, Any]]:
    return [json.loads(line) for line in archive.read(name).decode().splitlines()]


async def test_export_bundle_holds_everything_about_the_person_only(
    client: httpx.AsyncClient, api_keys: dict[Scope, str], runtime: Runtime, services: Services
) -> None:
    start = runtime.clock.now() + timedelta(minutes=5)
    booked = await book(
        client, api_keys, start, person(EXTERNAL, NAME), [person("member-other-3", "Olaf Other")],
        ["recording.audio", "transcription", "ai.summary"],
    )
    her, other = booked.people
    granted = await decide(client, her, "recording.audio")
    await decide(client, other, "recording.audio")
    tone = audio(440)
    big = os.urandom(3 * 1024 * 1024)  # a long recording: must arrive in pieces
    small_row = await add_recording(runtime, booked.booking_id, her, tone)
    big_row = await add_recording(runtime, booked.booking_id, her, big)
    await add_recording(runtime, booked.booking_id, other, audio(660))
    await add_outputs(runtime, booked.booking_id,
                      [(her, "I would like to talk about my thesis."), (other, "Sure, go on.")])
    async with runtime.db.session() as session:
        session.add(UsedTicket(nonce="n" * 32, participant_id=her.id,
                               expires_at=runtime.clock.now()))

    admin = bearer(api_keys[Scope.ADMIN])
    response = await client.post(f"/v1/admin/subjects/{EXTERNAL}/export", headers=admin)
    assert response.status_code == 200
    assert response.headers["content-type"] == "application/zip"
    assert response.headers["content-disposition"].startswith("attachment; filename=")
    body = response.content
    # The stream the response sends: pieces of about one storage chunk, never the whole file.
    privacy = services.privacy
    assert isinstance(privacy, Privacy)
    _, stream = await privacy.do_export(EXTERNAL, DEFAULT_ORG, None)
    sizes = [len(piece) async for piece in stream]
    assert sum(sizes) > len(big)
    assert len(sizes) > 3
    assert max(sizes) < 1.5 * 1024 * 1024

    archive = zipfile.ZipFile(io.BytesIO(body))
    assert archive.testzip() is None
    (about,) = lines(archive, "subject.jsonl")
    assert about["external_id"] == EXTERNAL
    assert about["display_names"] == [NAME]
    (booking,) = lines(archive, "bookings.jsonl")
    assert booking["booking_id"] == str(booked.booking_id)
    assert booking["participant"]["role"] == "host"
    assert booking["participant"]["display_name"] == NAME
    assert "Olaf Other" not in archive.read("bookings.jsonl").decode()
    assert [j["participant_id"] for j in lines(archive, "joins.jsonl")] == [str(her.id)]

    (decision,) = lines(archive, "consent_decisions.jsonl")
    assert decision["id"] == granted["id"]
    shown = (await client.get("/v1/consent", headers=her.headers)).json()["purposes"][0]
    assert decision["notice"]["text"] == shown["notice"]["text"]
    assert decision["notice"]["sha256"] == decision["notice_sha256"]

    recordings = lines(archive, "recordings.jsonl")
    assert sorted(r["id"] for r in recordings) == sorted([str(small_row.id), str(big_row.id)])
    files = {r["id"]: archive.read(r["file"]) for r in recordings}
    assert files[str(small_row.id)] == tone
    assert files[str(big_row.id)] == big
    with av.open(io.BytesIO(files[str(small_row.id)]), mode="r") as container:
        assert len(list(container.decode(audio=0))) > 0

    segments = lines(archive, "transcript_segments.jsonl")
    assert [s["text"] for s in segments] == ["I would like to talk about my thesis."]
    (summary,) = lines(archive, "summaries.jsonl")
    assert "thesis" in summary["content"]["text"]
    assert lines(archive, "processing_register.jsonl") == []

    async with runtime.db.session() as session:
        logged = await session.scalar(
            select(func.count()).select_from(ExportRecord)
            .where(ExportRecord.external_id == EXTERNAL)
        )
    assert logged == 2  # each export is logged
