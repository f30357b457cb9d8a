"""Admin review of the consent log: filters, pages, scopes, timeline, verify, exports."""

from __future__ import annotations

import csv
import io
import json
from datetime import timedelta

import httpx
import pytest
from fastapi import FastAPI

from consent.purposes import Purpose
from core.accounts import Scope
from core.clock import ManualClock
from core.runtime import Runtime
from media.recordings import Recording, RecordingState, TrackKind
from signaling.attendance import LeaveHow, do_mark_joined, do_mark_left
from tests.support.bookings import bearer
from tests.support.consent import decide
from tests.support.consent_bookings import Seeded, seed_booking
from tests.support.waiting import eventually


@pytest.fixture
async def world(
    client: httpx.AsyncClient, runtime: Runtime, clock: ManualClock
) -> tuple[Seeded, Seeded]:
    """Two bookings and seven decisions, one minute apart (seq 1..7)."""
    first = await seed_booking(runtime, [Purpose.RECORDING_AUDIO, Purpose.AI_SUMMARY])
    second = await seed_booking(runtime, [Purpose.RECORDING_AUDIO], names=("Ines", "Otto", "Pia"))
    steps = [
        (first.people[0], "recording.audio", "granted"),
        (first.people[1], "recording.audio", "granted"),
        (first.people[1], "ai.summary", "denied"),
        (second.people[0], "recording.audio", "granted"),
        (first.people[1], "recording.audio", "withdrawn"),
        (second.people[1], "recording.audio", "denied"),
        (second.people[2], "recording.audio", "granted"),
    ]
    for person, purpose, decision in steps:
        await decide(client, person, purpose, decision)
        clock.advance(timedelta(minutes=1))
    return first, second


async def seqs(client: httpx.AsyncClient, key: str, **params: str) -> list[int]:
    response = await client.get("/v1/admin/consent-log", headers=bearer(key), params=params)
    assert response.status_code == 200, response.text
    return [item["seq"] for item in response.json()["items"]]


async def test_filters(
    client: httpx.AsyncClient, api_keys: dict[Scope, str], world: tuple[Seeded, Seeded],
    clock: ManualClock,
) -> None:
    first, second = world
    key = api_keys[Scope.AUDITOR]
    assert await seqs(client, key) == [7, 6, 5, 4, 3, 2, 1]
    assert await seqs(client, key, booking_id=str(first.booking_id)) == [5, 3, 2, 1]
    assert await seqs(client, key, subject=first.people[1].external_id) == [5, 3, 2]
    assert await seqs(client, key, purpose="ai.summary") == [3]
    assert await seqs(client, key, decision="granted") == [7, 4, 2, 1]
    assert await seqs(client, key, decision="denied", purpose="recording.audio") == [6]
    start = clock.now() - timedelta(minutes=7)  # when seq 1 was decided
    since = (start + timedelta(minutes=2)).isoformat()
    until = (start + timedelta(minutes=5)).isoformat()
    assert await seqs(client, key, **{"from": since, "to": until}) == [5, 4, 3]
    assert await seqs(client, key, subject="nobody") == []
    page = await client.get(
        "/v1/admin/consent-log", headers=bearer(key), params={"booking_id": str(second.booking_id)}
    )
    item = page.json()["items"][0]
    assert item["subject_external_id"] == second.people[2].external_id
    assert item["subject_display_name"] == "Pia"
    bad = await client.get("/v1/admin/consent-log", headers=bearer(key), params={"purpose": "x"})
    assert bad.status_code == 422
    assert bad.json()["code"] == "invalid_input"


async def test_cursor_pagination_newest_first(
    client: httpx.AsyncClient, api_keys: dict[Scope, str], world: tuple[Seeded, Seeded]
) -> None:
    key = api_keys[Scope.ADMIN]
    seen: list[int] = []
    cursor: str | None = None
    pages = 0
    while True:
        params = {"limit": "3", **({"cursor": cursor} if cursor else {})}
        response = await client.get("/v1/admin/consent-log", headers=bearer(key), params=params)
        body = response.json()
        seen += [item["seq"] for item in body["items"]]
        pages += 1
        cursor = body["next_cursor"]
        if cursor is None:
            break
    assert seen == [7, 6, 5, 4, 3, 2, 1]
    assert pages == 3
    bad = await client.get("/v1/admin/consent-log", headers=bearer(key), params={"cursor": "x"})
    assert bad.status_code == 422


@pytest.mark.parametrize(
    ("method", "path"),
    [
        ("GET", "/v1/admin/consent-log"),
        ("GET", "/v1/admin/consent-log/verify"),
        ("GET", "/v1/admin/consent-log/export?format=csv"),
        ("GET", "/v1/admin/consent-log/checkpoints"),
        ("POST", "/v1/admin/consent-log/checkpoints"),
        ("GET", "/v1/admin/consent-notices"),
    ],
)
async def test_no_key_is_401_and_scheduler_key_is_403(
    client: httpx.AsyncClient, api_keys: dict[Scope, str], method: str, path: str
) -> None:
    anonymous = await client.request(method, path)
    assert anonymous.status_code == 401
    assert anonymous.json()["code"] == "unauthenticated"
    scheduler = await client.request(method, path, headers=bearer(api_keys[Scope.SCHEDULER]))
    assert scheduler.status_code == 403
    assert scheduler.json()["code"] == "forbidden"


async def test_auditor_reads_but_cannot_sign_or_publish(
    client: httpx.AsyncClient, api_keys: dict[Scope, str], world: tuple[Seeded, Seeded]
) -> None:
    auditor, admin = bearer(api_keys[Scope.AUDITOR]), bearer(api_keys[Scope.ADMIN])
    signed = await client.post("/v1/admin/consent-log/checkpoints", headers=auditor)
    assert signed.status_code == 403
    notice = {"purpose": "ai.summary", "language": "en", "text": "Another text."}
    published = await client.post("/v1/admin/consent-notices", headers=auditor, json=notice)
    assert published.status_code == 403
    created = await client.post("/v1/admin/consent-log/checkpoints", headers=admin)
    assert created.status_code == 201
    assert created.json()["seq"] == 7
    listed = await client.get("/v1/admin/consent-log/checkpoints", headers=auditor)
    assert [c["seq"] for c in listed.json()["items"]] == [7]
    exported = await client.get("/v1/admin/consent-log/checkpoints/export", headers=auditor)
    assert exported.status_code == 200
    assert exported.json()["public_key"] == created.json()["public_key"]
    assert "attachment" in exported.headers["content-disposition"]
    verified = await client.get("/v1/admin/consent-log/verify", headers=auditor)
    report = verified.json()
    assert report["ok"] is True
    assert report["entries"] == 7
    assert report["head"]["seq"] == 7
    assert report["checkpoints"][0]["extended_by_chain"] is True


async def test_notice_versions(
    client: httpx.AsyncClient, api_keys: dict[Scope, str]
) -> None:
    admin = bearer(api_keys[Scope.ADMIN])
    body = {"purpose": "ai.summary", "language": "de", "text": "Eine KI fasst zusammen."}
    first = await client.post("/v1/admin/consent-notices", headers=admin, json=body)
    assert first.status_code == 201
    assert first.json()["version"] == 1
    again = await client.post("/v1/admin/consent-notices", headers=admin, json=body)
    assert again.status_code == 200
    assert again.json()["id"] == first.json()["id"]
    changed = await client.post(
        "/v1/admin/consent-notices", headers=admin, json={**body, "text": "Neuer Text."}
    )
    assert changed.status_code == 201
    assert changed.json()["version"] == 2
    listing = (await client.get("/v1/admin/consent-notices", headers=admin)).json()["items"]
    german = [n for n in listing if n["language"] == "de"]
    assert [(n["purpose"], n["version"]) for n in german] == [("ai.summary", 2)]
    assert len([n for n in listing if n["language"] == "en"]) == len(Purpose)
    bad = await client.post(
        "/v1/admin/consent-notices", headers=admin, json={**body, "purpose": "telepathy"}
    )
    assert bad.status_code == 422


async def test_exports_stream_csv_and_jsonl(
    client: httpx.AsyncClient, api_keys: dict[Scope, str], world: tuple[Seeded, Seeded]
) -> None:
    first, _ = world
    key = bearer(api_keys[Scope.AUDITOR])
    params = {"format": "csv", "booking_id": str(first.booking_id)}
    response = await client.get("/v1/admin/consent-log/export", headers=key, params=params)
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/csv")
    assert 'filename="consent-log.csv"' in response.headers["content-disposition"]
    rows = list(csv.DictReader(io.StringIO(response.text)))
    assert [int(r["seq"]) for r in rows] == [5, 3, 2, 1]
    assert rows[0]["subject_external_id"] == first.people[1].external_id
    assert rows[0]["decision"] == "withdrawn"
    everything = await client.get(
        "/v1/admin/consent-log/export", headers=key, params={"format": "jsonl"}
    )
    assert everything.headers["content-type"].startswith("application/x-ndjson")
    lines = [json.loads(line) for line in everything.text.splitlines()]
    assert [line["seq"] for line in lines] == [7, 6, 5, 4, 3, 2, 1]
    assert all(len(line["entry_hash"]) == 64 for line in lines)
    bad = await client.get("/v1/admin/consent-log/export", headers=key, params={"format": "xml"})
    assert bad.status_code == 422


async def test_booking_timeline_with_presence(
    app: FastAPI, client: httpx.AsyncClient, api_keys: dict[Scope, str],
    world: tuple[Seeded, Seeded],
) -> None:
    first, _ = world
    runtime: Runtime = app.state.runtime
    # Attendance as the hub (on any node) or LiveKit's webhooks store it.
    now = runtime.clock.now()
    await do_mark_joined(runtime, first.booking_id, first.people[0].id, now)
    await do_mark_joined(runtime, first.booking_id, first.people[1].id, now)
    await do_mark_left(runtime, first.booking_id, first.people[1].id, now, LeaveHow.LEFT)
    started = runtime.clock.now() - timedelta(minutes=6)
    async with runtime.db.session() as session:
        session.add(
            Recording(
                booking_id=first.booking_id, participant_id=first.people[0].id,
                kind=TrackKind.AUDIO, state=RecordingState.COMPLETE, media_type="audio/ogg",
                started_at=started, ended_at=started + timedelta(minutes=2),
                consent_entry_ids=[], frames=10, size=100,
                retain_until=started + timedelta(days=30), path="x.ogg",
            )
        )
    key = bearer(api_keys[Scope.AUDITOR])
    response = await client.get(
        f"/v1/admin/bookings/{first.booking_id}/consent-timeline", headers=key
    )
    assert response.status_code == 200
    body = response.json()
    assert body["booking"]["requested_purposes"] == ["recording.audio", "ai.summary"]
    assert [p["display_name"] for p in body["participants"]] == ["Hana Host", "Cleo Client"]
    assert [(e["seq"], e["decision"]) for e in body["entries"]] == [
        (1, "granted"), (2, "granted"), (3, "denied"), (5, "withdrawn"),
    ]
    assert body["recordings"] == [
        {
            "subject_id": str(first.people[0].id),
            "kind": "audio",
            "state": "complete",
            "started_at": started.isoformat(),
            "ended_at": (started + timedelta(minutes=2)).isoformat(),
        }
    ]
    presence = {p["subject_id"]: p for p in body["presence"]}
    assert presence[str(first.people[0].id)]["left_at"] is None
    assert presence[str(first.people[1].id)]["left_at"] == now.isoformat()
    missing = await client.get(
        "/v1/admin/bookings/00000000-0000-0000-0000-000000000000/consent-timeline", headers=key
    )
    assert missing.status_code == 404


async def test_periodic_checkpoint_signs_only_when_due_and_grown(
    client: httpx.AsyncClient, api_keys: dict[Scope, str],
    world: tuple[Seeded, Seeded], clock: ManualClock, runtime: Runtime,
) -> None:
    """The server's own timer (the integrity watch) signs the verified head once an interval
    has passed since the last checkpoint (or its start) and the chain has grown."""
    key = bearer(api_keys[Scope.AUDITOR])
    interval = timedelta(seconds=runtime.settings.consent_checkpoint_interval_s + 1)

    async def signed() -> list[int]:
        listed = (await client.get("/v1/admin/consent-log/checkpoints", headers=key)).json()
        return [c["seq"] for c in listed["items"]]

    async def checked_at(when: str) -> None:
        async def ran() -> bool:
            state = await client.get("/v1/admin/consent-log/integrity", headers=key)
            return bool(state.json()["last_check_at"] == when)

        await eventually(ran, "the integrity watch ran")

    assert await signed() == []  # not due: less than an interval since the server started
    clock.advance(interval)
    await checked_at(clock.now().isoformat())
    assert await signed() == [7]
    clock.advance(interval)
    await checked_at(clock.now().isoformat())
    assert await signed() == [7]  # due, but the chain has not grown
    first, _ = world
    await decide(client, first.people[0], "ai.summary", "granted")
    clock.advance(interval)
    await checked_at(clock.now().isoformat())
    assert await signed() == [8, 7]
