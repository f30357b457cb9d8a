"""Erasure: after `POST /v1/admin/subjects/{id}/erase` nothing in the database or the storage
folder names the person or holds a readable byte of their recordings, while the other
participant's recordings still play and the consent ledger still verifies."""

from __future__ import annotations

import io
import uuid
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import av
import httpx
import pytest
from sqlalchemy import inspect, select, table, text

from consent.ledger import Entry
from core.accounts import Scope
from core.bookings import Participant
from core.datakeys import access_data_key
from core.runtime import Runtime
from media.recordings import TrackKind
from media.storage import IntegrityError, decrypt
from privacy.records import WithdrawalRecord
from tests.support.bookings import bearer
from tests.support.consent import decide
from tests.support.privacy import (
    Booked,
    add_outputs,
    add_recording,
    audio,
    book,
    person,
)

NAME = "Zelda Quennell-Marsh"
EXTERNAL = "member-zq-70431"
OTHER_NAME = "Otto Brandvold"


def windows(plaintext: bytes, size: int = 24, count: int = 12) -> list[bytes]:
    """Slices from the body of a file (past the container headers every Ogg file shares)."""
    start = min(400, len(plaintext) // 4)
    step = max(1, (len(plaintext) - start - size) // count)
    return [plaintext[i : i + size] for i in range(start, len(plaintext) - size, step)][:count]


async def database_bytes(runtime: Runtime) -> Iterator[tuple[str, bytes]]:
    """(table.column, value as bytes) for every value of every table."""
    out: list[tuple[str, bytes]] = []
    async with runtime.db.engine.connect() as conn:
        tables = await conn.run_sync(lambda sync: inspect(sync).get_table_names())
        assert "participants" in tables
        assert "consent_ledger" in tables
        for name in tables:
            result = await conn.execute(select(text("*")).select_from(table(name)))
            for row in result.mappings():
                for column, value in row.items():
                    if value is None:
                        continue
                    raw = bytes(value) if isinstance(value, bytes | memoryview) else (
                        str(value).encode()
                    )
                    out.append((f"{name}.{column}", raw))
    return iter(out)


def storage_bytes(folder: Path) -> Iterator[tuple[str, bytes]]:
    for path in sorted(folder.rglob("*")):
        if path.is_file():
            yield str(path), path.read_bytes()


def found(haystack: Iterator[tuple[str, bytes]], needles: list[bytes]) -> list[str]:
    hits = []
    for where, raw in haystack:
        lowered = raw.lower()
        for needle in needles:
            if needle.lower() in lowered or needle in raw:
                hits.append(where)
    return hits


async def scene(
    client: httpx.AsyncClient, api_keys: dict[Scope, str], runtime: Runtime
) -> tuple[Booked, Booked, dict[str, Any]]:
    """Zelda in two sessions (one with Otto), recorded, transcribed and summarized."""
    start = runtime.clock.now() + timedelta(minutes=5)
    purposes = ["recording.audio", "transcription", "ai.summary"]
    shared = await book(
        client, api_keys, start, person(EXTERNAL, NAME), [person("member-ob-2", OTHER_NAME)],
        purposes,
    )
    alone = await book(
        client, api_keys, start + timedelta(days=1), person("member-host-9", "Hal Host"),
        [person(EXTERNAL, NAME)], purposes,
    )
    zelda, otto = shared.people
    for who in (zelda, otto, alone.people[1]):
        await decide(client, who, "recording.audio")
    plain = {"zelda": audio(440), "zelda2": audio(520), "otto": audio(660)}
    rows = {
        "zelda": await add_recording(runtime, shared.booking_id, zelda, plain["zelda"]),
        "zelda2": await add_recording(runtime, alone.booking_id, alone.people[1],
                                      plain["zelda2"]),
        "otto": await add_recording(runtime, shared.booking_id, otto, plain["otto"]),
    }
    await add_outputs(
        runtime, shared.booking_id,
        [(zelda, "My plan is to move to Lisbon in spring."), (otto, f"Thanks {NAME}, good plan.")],
    )
    async with runtime.db.session() as session:
        key = await access_data_key(session, runtime.keys, EXTERNAL, runtime.clock.now())
    return shared, alone, {"plain": plain, "rows": rows, "key": key}


async def test_erasure_leaves_nothing_of_the_person(
    client: httpx.AsyncClient, api_keys: dict[Scope, str], runtime: Runtime
) -> None:
    shared, alone, made = await scene(client, api_keys, runtime)
    zelda, otto = shared.people
    admin = bearer(api_keys[Scope.ADMIN])
    storage = runtime.settings.data_dir
    needles = [NAME.encode(), EXTERNAL.encode()]
    secrets_of_zelda = windows(made["plain"]["zelda"]) + windows(made["plain"]["zelda2"])
    exported = await client.post(f"/v1/admin/subjects/{EXTERNAL}/export", headers=admin)
    assert exported.status_code == 200
    async with runtime.db.session() as session:
        entries_before = len(list((await session.execute(
            select(Entry.seq).where(Entry.subject_id.in_([zelda.id, alone.people[1].id]))
        )).scalars()))
    assert entries_before == 2
    # The scan sees the person before the erasure (so it can see them after).
    assert {"participants.external_id", "participants.display_name", "data_keys.external_id",
            "subject_exports.external_id"} <= set(found(await database_bytes(runtime), needles))

    refused = await client.post(
        f"/v1/admin/subjects/{EXTERNAL}/erase", headers=admin, json={"confirm": "someone"}
    )
    assert refused.status_code == 422
    assert refused.json()["code"] == "invalid_input"
    assert found(await database_bytes(runtime), needles)

    response = await client.post(
        f"/v1/admin/subjects/{EXTERNAL}/erase", headers=admin, json={"confirm": EXTERNAL}
    )
    assert response.status_code == 200, response.text
    body = response.json()
    tombstone = body["tombstone"]
    assert tombstone.startswith("erased-")
    assert body["counts"]["media"]["recordings_deleted"] == 2
    assert body["counts"]["media"]["data_keys_destroyed"] == 1
    assert body["counts"]["summaries"]["summaries_deleted"] == 1
    assert body["counts"]["consent"]["ledger_entries_kept"] == 2

    assert found(await database_bytes(runtime), needles + secrets_of_zelda) == []
    assert found(storage_bytes(storage), needles + secrets_of_zelda) == []
    # No file in storage opens under the person's (former) key: nothing of theirs is readable.
    for path in (storage / "recordings").rglob("*.cgr"):
        with pytest.raises(IntegrityError):
            b"".join(decrypt(path, made["key"]))
    for row in (made["rows"]["zelda"], made["rows"]["zelda2"]):
        assert not (storage / "recordings" / row.path).exists()

    # The ledger keeps every entry, verifies, and leads only to the tombstone.
    verify = await client.get("/v1/admin/consent-log/verify", headers=admin)
    assert verify.status_code == 200
    assert verify.json()["ok"] is True
    async with runtime.db.session() as session:
        subjects = list((await session.execute(
            select(Participant.external_id, Participant.display_name)
            .join(Entry, Entry.subject_id == Participant.id)
            .where(Entry.subject_id.in_([zelda.id, alone.people[1].id]))
        )).all())
    assert subjects == [(tombstone, "Erased participant")] * 2

    # Otto's recording of the same session is intact and plays.
    listed = await client.get(f"/v1/bookings/{shared.booking_id}/recordings",
                              headers=otto.headers)
    assert listed.status_code == 200
    rows = listed.json()["recordings"]
    assert [r["id"] for r in rows] == [str(made["rows"]["otto"].id)]
    download = await client.get(
        f"/v1/bookings/{shared.booking_id}/recordings/{rows[0]['id']}", headers=otto.headers
    )
    assert download.status_code == 200
    assert download.content == made["plain"]["otto"]
    with av.open(io.BytesIO(download.content), mode="r") as container:
        frames = len(list(container.decode(audio=0)))
    assert frames > 0
    # Otto's words stay; the name he said is scrubbed.
    transcript = await client.get(f"/v1/bookings/{shared.booking_id}/transcript",
                                  headers=otto.headers)
    assert transcript.status_code == 200
    texts = [s["text"] for s in transcript.json()["segments"]]
    assert texts == ["Thanks [erased], good plan."]

    # Zelda's links are dead, and she cannot be found or erased again.
    assert (await client.get("/v1/consent", headers=zelda.headers)).status_code == 404
    again = await client.post(
        f"/v1/admin/subjects/{EXTERNAL}/erase", headers=admin, json={"confirm": EXTERNAL}
    )
    assert again.status_code == 404
    search = await client.get("/v1/admin/subjects", params={"q": "zelda"}, headers=admin)
    assert search.json()["subjects"] == []


async def test_erasure_needs_an_admin_and_a_known_person(
    client: httpx.AsyncClient, api_keys: dict[Scope, str]
) -> None:
    url = f"/v1/admin/subjects/{uuid.uuid4()}/erase"
    body = {"confirm": "x"}
    assert (await client.post(url, json=body)).status_code == 401
    auditor = await client.post(url, json=body, headers=bearer(api_keys[Scope.AUDITOR]))
    assert auditor.status_code == 403
    unknown = await client.post(
        url.replace("/erase", "/export"), headers=bearer(api_keys[Scope.ADMIN])
    )
    assert unknown.status_code == 404
    assert unknown.json()["code"] == "not_found"


async def test_withdraw_and_delete_from_the_join_link(
    client: httpx.AsyncClient, api_keys: dict[Scope, str], runtime: Runtime
) -> None:
    start = runtime.clock.now() + timedelta(minutes=5)
    booked = await book(
        client, api_keys, start, person("member-wd-1", "Wanda Withdraw"),
        [person("member-wd-2", "Kurt Keeps")],
        ["recording.audio", "recording.video", "transcription", "ai.summary"],
    )
    wanda, kurt = booked.people
    for purpose in ("recording.audio", "recording.video", "transcription"):
        await decide(client, wanda, purpose)
    voice = await add_recording(runtime, booked.booking_id, wanda, audio(440))
    face = await add_recording(runtime, booked.booking_id, wanda, b"webm" * 100,
                               kind=TrackKind.VIDEO)
    kept = await add_recording(runtime, booked.booking_id, kurt, audio(660))
    await add_outputs(runtime, booked.booking_id, [(wanda, "Mine."), (kurt, "His.")])
    folder = runtime.settings.data_dir / "recordings"

    response = await client.post("/v1/consent/withdraw-and-delete", headers=wanda.headers,
                                 json={"purpose": "recording.audio"})
    assert response.status_code == 200, response.text
    body = response.json()
    assert (body["entry"]["decision"], body["entry"]["purpose"]) == ("withdrawn",
                                                                     "recording.audio")
    assert body["withdrawal"]["deleted"] == {"recordings_deleted": 1}
    assert not (folder / voice.path).exists()
    assert (folder / face.path).exists()
    assert (folder / kept.path).exists()
    overview = (await client.get("/v1/consent", headers=wanda.headers)).json()
    decisions = {p["purpose"]: p["decision"] for p in overview["purposes"]}
    assert decisions["recording.audio"] == "withdrawn"
    assert decisions["recording.video"] == "granted"

    words = await client.post("/v1/consent/withdraw-and-delete", headers=wanda.headers,
                              json={"purpose": "transcription"})
    assert words.status_code == 200
    assert words.json()["withdrawal"]["deleted"] == {
        "transcript_segments_deleted": 1, "summaries_deleted": 1
    }
    transcript = await client.get(f"/v1/bookings/{booked.booking_id}/transcript",
                                  headers=kurt.headers)
    assert [s["text"] for s in transcript.json()["segments"]] == ["His."]
    async with runtime.db.session() as session:
        logged = list((await session.execute(
            select(WithdrawalRecord.purpose).where(WithdrawalRecord.participant_id == wanda.id)
            .order_by(WithdrawalRecord.at)
        )).scalars())
    assert [p.value for p in logged] == ["recording.audio", "transcription"]
    bad = await client.post("/v1/consent/withdraw-and-delete", headers=wanda.headers,
                            json={"purpose": "ai.agenda"})
    assert bad.status_code == 422
    assert bad.json()["code"] == "purpose_not_requested"
    unknown = await client.post("/v1/consent/withdraw-and-delete",
                                headers={"X-Join-Credential": "x" * 43},
                                json={"purpose": "recording.audio"})
    assert unknown.status_code == 404
