"""Retention periods per organization, through the public API: the operator sets an
organization's days per category; the scheduled purge (the server's own periodic run, on the
test clock) removes exactly what each organization's periods say; the organization's notices,
consent overview, retention status and recordings' deadlines state its days; bad periods are
refused with problem+json and change nothing."""

from __future__ import annotations

import asyncio
import json
import os
import sys
import uuid
from datetime import datetime, timedelta
from typing import Any

import httpx
import pytest
from aiortc import RTCPeerConnection
from sqlalchemy import func, select

from api.services import Services
from consent.purposes import Purpose
from core.accounts import Scope
from core.bookings import Booking, Participant
from core.clock import ManualClock
from core.runtime import Runtime
from core.settings import Settings
from media.recorder import Recorder
from media.recordings import Recording, TrackKind
from signaling.tickets import UsedTicket
from summaries.outputs import Summary, Transcript
from tests.support.bookings import bearer, operator_key
from tests.support.consent import decide
from tests.support.media import EncodedTrack, encode_opus
from tests.support.privacy import (
    Booked,
    add_outputs,
    add_recording,
    audio,
    book,
    person,
    purged_at,
)
from tests.support.recording import offer_to_recorder
from tests.support.waiting import eventually

# acme keeps less than the deployment, globex keeps recordings longer; "default" sets nothing.
ACME = {"recordings": 7, "transcripts": 10, "summaries": 20, "join_logs": 5, "bookings": 40}
GLOBEX = {"recordings": 60}
DEPLOYMENT = {"recordings": 30, "transcripts": 90, "summaries": 90, "join_logs": 90,
              "bookings": 5 * 365 + 1}


@pytest.fixture
def settings_overrides() -> dict[str, Any]:
    return {"retention_interval_s": 1}  # the server's own purge, every second of real time



async def new_org(
    client: httpx.AsyncClient, operator: dict[str, str], org_id: str, days: dict[str, int]
) -> dict[Scope, str]:
    """An organization with its own retention days; its admin and scheduler keys."""
    made = await client.post("/v1/operator/orgs", headers=operator, json={
        "id": org_id, "name": org_id.title(), "settings": {"retention_days": days},
    })
    assert made.status_code == 201, made.text
    assert made.json()["settings"]["retention_days"] == {
        **dict.fromkeys(("recordings", "transcripts", "summaries", "agendas", "join_logs",
                         "attendance", "bookings", "webhook_log")),
        **days,
    }
    keys = {}
    for scope in (Scope.ADMIN, Scope.SCHEDULER):
        answer = await client.post(f"/v1/operator/orgs/{org_id}/keys", headers=operator,
                                   json={"scope": scope.value})
        assert answer.status_code == 201, answer.text
        keys[scope] = answer.json()["key"]
    return keys


async def seed(
    client: httpx.AsyncClient, runtime: Runtime, keys: dict[Scope, str], org: str,
    recording_days: int,
) -> Booked:
    """A booking of `org` holding a recording, a transcript, a summary and a join log row."""
    booked = await book(
        client, keys, runtime.clock.now() + timedelta(minutes=5),
        person(f"{org}-host", "Hanna Host"), [person(f"{org}-client", "Cem Client")],
        ["recording.audio", "transcription", "ai.summary"],
    )
    host, guest = booked.people
    # as the recorder stores it: its deadline from the organization's period
    await add_recording(runtime, booked.booking_id, host, audio(440), retain_days=recording_days)
    await add_outputs(runtime, booked.booking_id, [(host, "Hello."), (guest, "Hi.")])
    async with runtime.db.session() as session:
        session.add(UsedTicket(nonce=uuid.uuid4().hex, participant_id=host.id,
                               expires_at=runtime.clock.now()))
    return booked


async def held(runtime: Runtime) -> dict[str, dict[str, int]]:
    """Per organization: how many rows of each category it still holds."""
    joined: dict[str, Any] = {
        "recordings": select(Booking.org_id, func.count()).join(
            Recording, Recording.booking_id == Booking.id),
        "transcripts": select(Booking.org_id, func.count()).join(
            Transcript, Transcript.booking_id == Booking.id),
        "summaries": select(Booking.org_id, func.count()).join(
            Summary, Summary.booking_id == Booking.id),
        "join_logs": select(Booking.org_id, func.count())
        .join(Participant, Participant.booking_id == Booking.id)
        .join(UsedTicket, UsedTicket.participant_id == Participant.id),
        "bookings": select(Booking.org_id, func.count()),
    }
    out: dict[str, dict[str, int]] = {org: dict.fromkeys(joined, 0)
                                      for org in ("default", "acme", "globex")}
    async with runtime.db.session() as session:
        for category, query in joined.items():
            for org, count in (await session.execute(query.group_by(Booking.org_id))).all():
                out[org][category] = count
    return out


async def test_each_organization_is_purged_by_its_own_periods(
    client: httpx.AsyncClient, api_keys: dict[Scope, str], runtime: Runtime, clock: ManualClock
) -> None:
    operator = await operator_key(runtime)
    acme, globex = (await new_org(client, operator, "acme", ACME),
                    await new_org(client, operator, "globex", GLOBEX))
    keys = {"default": api_keys, "acme": acme, "globex": globex}
    recording_days = {"default": 30, "acme": 7, "globex": 60}
    for org, its_keys in keys.items():
        await seed(client, runtime, its_keys, org, recording_days[org])
    full = {"recordings": 1, "transcripts": 1, "summaries": 1, "join_logs": 1, "bookings": 1}
    assert await held(runtime) == dict.fromkeys(keys, full)

    # Each admin reads its own organization's periods.
    for org, its_keys in keys.items():
        status = await client.get("/v1/admin/retention", headers=bearer(its_keys[Scope.ADMIN]))
        assert status.status_code == 200
        days = {c["category"]: c["retention_days"] for c in status.json()["categories"]}
        own = {**DEPLOYMENT, **(ACME if org == "acme" else GLOBEX if org == "globex" else {})}
        assert {k: days[k] for k in own} == own, org

    admin = bearer(api_keys[Scope.ADMIN])
    start = clock.now()
    expected = {org: dict(full) for org in keys}
    for day, gone in (
        (6, {"acme": ["join_logs"]}),
        (8, {"acme": ["recordings"]}),
        (11, {"acme": ["transcripts"]}),
        (21, {"acme": ["summaries"]}),
        (31, {"default": ["recordings"]}),
        (42, {"acme": ["bookings"]}),
        (61, {"globex": ["recordings"]}),
        (91, {"default": ["transcripts", "summaries", "join_logs"],
              "globex": ["transcripts", "summaries", "join_logs"]}),
    ):
        clock.set(start + timedelta(days=day))
        await purged_at(client, admin, clock.now())
        for org, categories in gone.items():
            for category in categories:
                expected[org][category] = 0
        if "bookings" in gone.get("acme", []):  # the booking takes what it still held
            expected["acme"] = dict.fromkeys(full, 0)
        assert await held(runtime) == expected, f"day {day}"

    status = (await client.get("/v1/admin/retention", headers=admin)).json()
    assert status["last_run"]["trigger"] == "schedule"


async def consent_days(client: httpx.AsyncClient, who: Any) -> dict[str, tuple[int, str]]:
    """Per purpose: the days `GET /v1/consent` states, and the notice's text."""
    overview = (await client.get("/v1/consent", headers=who.headers)).json()
    return {p["purpose"]: (p["retention_days"], p["notice"]["text"]) for p in overview["purposes"]}


async def test_notices_state_the_organizations_days(
    client: httpx.AsyncClient, api_keys: dict[Scope, str], runtime: Runtime
) -> None:
    operator = await operator_key(runtime)
    acme = await new_org(client, operator, "acme", ACME)
    purposes = ["recording.audio", "transcription", "ai.summary"]
    starts = runtime.clock.now() + timedelta(minutes=5)
    theirs = await book(client, acme, starts, person("a-host", "Ann"), [person("a-c", "Al")],
                        purposes)
    ours = await book(client, api_keys, starts, person("d-host", "Dan"), [person("d-c", "Di")],
                      purposes)

    shown = await consent_days(client, theirs.people[0])
    assert {p: days for p, (days, _) in shown.items()} == {
        "recording.audio": 7, "transcription": 10, "ai.summary": 20
    }
    assert "kept for 7 days" in shown["recording.audio"][1]
    default = await consent_days(client, ours.people[0])
    assert {p: days for p, (days, _) in default.items()} == {
        "recording.audio": 30, "transcription": 90, "ai.summary": 90
    }
    assert "kept for 30 days" in default["recording.audio"][1]

    # A change: the notices follow at once; null goes back to the deployment's period, and
    # the categories left out stay.
    changed = await client.patch("/v1/operator/orgs/acme", headers=operator, json={
        "settings": {"retention_days": {"recordings": 14, "summaries": None}},
    })
    assert changed.status_code == 200, changed.text
    assert {k: v for k, v in changed.json()["settings"]["retention_days"].items() if v} == {
        "recordings": 14, "transcripts": 10, "join_logs": 5, "bookings": 40
    }
    shown = await consent_days(client, theirs.people[0])
    assert {p: days for p, (days, _) in shown.items()} == {
        "recording.audio": 14, "transcription": 10, "ai.summary": 90
    }
    assert "kept for 14 days" in shown["recording.audio"][1]
    assert await consent_days(client, ours.people[0]) == default


BAD: list[tuple[Any, str]] = [
    ({"recordings": 0}, "recordings"),
    ({"recordings": -3}, "recordings"),
    ({"bookings": 3654}, "bookings"),
    ({"summaries": 10**12}, "summaries"),
    ({"recordings": "30"}, "recordings"),
    ({"recordings": True}, "recordings"),
    ({"recordings": 7.5}, "recordings"),
    ({"forever": 30}, "forever"),
    ({"consent_ledger": 30}, "consent_ledger"),
    (30, "retention_days"),
]


@pytest.mark.parametrize(("days", "named"), BAD)
async def test_bad_periods_are_refused_and_change_nothing(
    client: httpx.AsyncClient, runtime: Runtime, days: Any, named: str
) -> None:
    operator = await operator_key(runtime)
    await new_org(client, operator, "acme", ACME)
    before = (await client.get("/v1/operator/orgs/acme", headers=operator)).json()
    notices = (await client.get("/v1/admin/consent-notices/versions?purpose=recording.audio",
                                headers=bearer(await new_keys(client, operator)))).json()
    for method, path, body in (
        ("PATCH", "/v1/operator/orgs/acme", {"settings": {"retention_days": days}}),
        ("POST", "/v1/operator/orgs", {"id": "beta", "name": "Beta",
                                       "settings": {"retention_days": days}}),
    ):
        answer = await client.request(method, path, headers=operator, json=body)
        assert answer.status_code == 422, (method, answer.text)
        assert answer.headers["content-type"].startswith("application/problem+json")
        assert named in answer.text
    assert (await client.get("/v1/operator/orgs/acme", headers=operator)).json() == before
    assert (await client.get("/v1/operator/orgs/beta", headers=operator)).status_code == 404
    after = (await client.get("/v1/admin/consent-notices/versions?purpose=recording.audio",
                              headers=bearer(await new_keys(client, operator)))).json()
    assert after == notices


async def new_keys(client: httpx.AsyncClient, operator: dict[str, str]) -> str:
    answer = await client.post("/v1/operator/orgs/acme/keys", headers=operator,
                               json={"scope": "admin"})
    assert answer.status_code == 201
    return str(answer.json()["key"])


async def test_a_recording_is_kept_for_its_organizations_period(
    client: httpx.AsyncClient, runtime: Runtime, services: Services
) -> None:
    """The real recorder sets the deadline from the booking's organization's period."""
    operator = await operator_key(runtime)
    acme = await new_org(client, operator, "acme", ACME)
    booked = await book(
        client, acme, runtime.clock.now() + timedelta(minutes=5),
        person("a-host", "Ann Host"), [person("a-guest", "Gus Guest")], ["recording.audio"],
    )
    host, guest = booked.people
    await decide(client, guest, Purpose.RECORDING_AUDIO, "granted")
    started = await client.post(f"/v1/bookings/{booked.booking_id}/recording/start",
                                headers=host.headers)
    assert started.status_code == 200, started.text
    pc = RTCPeerConnection()  # the guest's page, sending its microphone
    try:
        pc.addTransceiver(EncodedTrack("audio", encode_opus(50)), direction="sendonly")
        await offer_to_recorder(client, guest.headers, pc)
        recorder: Recorder = services.recorder
        await eventually(
            lambda: recorder.frames_written[TrackKind.AUDIO] >= 50, "a second of audio"
        )
        await decide(client, guest, Purpose.RECORDING_AUDIO, "withdrawn")  # closes the span
    finally:
        await pc.close()

    listing = f"/v1/bookings/{booked.booking_id}/recordings"

    async def complete() -> list[dict[str, Any]]:
        rows: list[dict[str, Any]] = (
            await client.get(listing, headers=bearer(acme[Scope.ADMIN]))
        ).json()["recordings"]
        return rows if rows and all(r["state"] == "complete" for r in rows) else []

    await eventually(complete, "the recording complete")
    (row,) = await complete()
    async with runtime.db.session() as session:
        stored = await session.get(Recording, uuid.UUID(row["id"]))
        assert stored is not None
        assert stored.ended_at is not None
        assert stored.retain_until - stored.ended_at == timedelta(days=7)
    assert datetime.fromisoformat(row["retain_until"]) == stored.retain_until


async def test_the_cli_sets_an_organizations_periods(
    client: httpx.AsyncClient, runtime: Runtime, settings: Settings
) -> None:
    operator = await operator_key(runtime)
    await new_org(client, operator, "acme", ACME)
    env = {
        **os.environ,
        "CALLGATE_DATABASE_URL": settings.database_url,
        "CALLGATE_DATA_DIR": str(settings.data_dir),
        "CALLGATE_LOG_LEVEL": "WARNING",
    }

    async def cli(*args: str) -> tuple[int, str, str]:
        process = await asyncio.create_subprocess_exec(
            sys.executable, "-c", "from api.cli import main; main()", "orgs", *args,
            env=env, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
        )
        out, err = await process.communicate()
        return process.returncode or 0, out.decode(), err.decode()

    async def own() -> dict[str, Any]:
        org = (await client.get("/v1/operator/orgs/acme", headers=operator)).json()
        return {k: v for k, v in org["settings"]["retention_days"].items() if v is not None}

    code, out, err = await cli("retention", "acme", "recordings=3", "transcripts=default")
    assert code == 0, err
    wanted = {"recordings": 3, "summaries": 20, "join_logs": 5, "bookings": 40}
    assert json.loads(out) == {"id": "acme", "retention_days": wanted}
    assert await own() == wanted
    for bad in ("recordings=0", "recordings=-1", "bookings=4000", "forever=3", "recordings=x"):
        code, _, err = await cli("retention", "acme", bad)
        assert code == 2, (bad, err)
        assert await own() == wanted
    code, _, err = await cli("retention", "nope", "recordings=3")
    assert (code, err.strip()) == (1, "error: no organization 'nope'")

    code, _, err = await cli("create", "beta", "--name", "Beta", "--retention", "bookings=400")
    assert code == 0, err
    beta = (await client.get("/v1/operator/orgs/beta", headers=operator)).json()
    assert beta["settings"]["retention_days"]["bookings"] == 400
