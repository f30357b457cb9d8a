"""Retention periods per organization, through the public API: the operator sets an
organization's days per category; the scheduled purge (the server's own periodic run, on the
test clock) removes exactly what each organization's periods say; the organization's notices,
consent overview, retention status and recordings' deadlines state its days; bad periods are
refused with problem+json and change nothing."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from datetime import datetime, timedelta
from typing import Any

import httpx
import pytest
from aiortc import RTCPeerConnection
from sqlalchemy import func, select

from api.services import Services
from consent.purposes import Purpose
from core.accounts import Scope, do_create_key
from core.bookings import Booking, Participant
from core.clock import ManualClock
from core.runtime import Runtime
from media.recorder import Recorder
from media.recordings import Recording, TrackKind
from signaling.tickets import UsedTicket
from summaries.outputs import Summary, Transcript
from tests.support.bookings import bearer
from tests.support.consent import decide
from tests.support.media import EncodedTrack, encode_opus
from tests.support.privacy import Booked, add_outputs, add_recording, audio, book, person
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


async def operator_key(runtime: Runtime) -> dict[str, str]:
    async with runtime.db.session() as session:
        _, key = await do_create_key(session, Scope.OPERATOR, "test", runtime.clock.now())
    return bearer(key)


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
                         "attendance", "bookings")),
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


async def purged_at(client: httpx.AsyncClient, admin: dict[str, str], now: datetime) -> None:
    """Wait for a scheduled run that started at `now` (the test clock's) to have finished."""

    async def ran() -> bool:
        status = (await client.get("/v1/admin/retention", headers=admin)).json()
        last = status["last_run"]
        return last is not None and datetime.fromisoformat(last["started_at"]) >= now

    await eventually(ran, f"a scheduled retention run at {now}")


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
