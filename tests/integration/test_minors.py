"""Minors: never a host; their recording and AI purposes are allowed only while both they
and their guardian (recorded by the booking platform, actor `guardian`) granted."""

from __future__ import annotations

import uuid
from datetime import timedelta
from typing import Any

import httpx

from api.services import Services
from consent.gate import Reason
from consent.live import LiveGate
from core.accounts import Scope
from core.purposes import Purpose
from core.runtime import Runtime
from summaries.consents import LedgerConsent
from tests.support.bookings import bearer, booking_body
from tests.support.consent import decide
from tests.support.privacy import Person, book, person
from tests.support.waiting import eventually

PURPOSES = ["recording.audio", "transcription", "ai.summary"]


async def guardian(
    client: httpx.AsyncClient, keys: dict[Scope, str], who: Person, purpose: str,
    decision: str = "granted",
) -> httpx.Response:
    overview = (await client.get("/v1/consent", headers=who.headers)).json()
    notice = next(p["notice"] for p in overview["purposes"] if p["purpose"] == purpose)
    body = {"participant_id": str(who.id), "purpose": purpose, "decision": decision,
            "notice_sha256": notice["sha256"]}
    return await client.post("/v1/consent/guardian", json=body,
                             headers=bearer(keys[Scope.SCHEDULER]))


async def test_a_minor_is_never_a_host(
    client: httpx.AsyncClient, api_keys: dict[Scope, str], runtime: Runtime
) -> None:
    body = booking_body(runtime.clock.now() + timedelta(hours=1))
    body["host"]["adult"] = False
    response = await client.post("/v1/bookings", json=body,
                                 headers=bearer(api_keys[Scope.SCHEDULER]))
    assert response.status_code == 422
    assert ["body", "host", "adult"] in [e["loc"] for e in response.json()["errors"]]


async def test_a_minor_needs_their_guardian_too(
    client: httpx.AsyncClient, api_keys: dict[Scope, str], runtime: Runtime, services: Services
) -> None:
    booked = await book(
        client, api_keys, runtime.clock.now() + timedelta(minutes=5),
        person("tutor-1", "Tess Tutor"), [person("pupil-1", "Pip Pupil", adult=False)],
        PURPOSES,
    )
    tutor, pupil = booked.people
    gate = services.gate
    assert isinstance(gate, LiveGate)
    await gate.ensure_booking(booked.booking_id)
    consent = LedgerConsent(runtime.db, runtime.clock, runtime.keys)

    def verdict(who: Person, purpose: Purpose) -> Reason:
        return gate.explain(booked.booking_id, who.id, purpose).reason

    async def granted() -> set[tuple[uuid.UUID, Purpose]]:
        return set(await consent.grants(booked.booking_id))

    for purpose in PURPOSES:
        await decide(client, tutor, purpose)
        await decide(client, pupil, purpose)
    await eventually(lambda: verdict(tutor, Purpose.AI_SUMMARY) is Reason.GRANTED, "adult")
    await eventually(lambda: verdict(pupil, Purpose.RECORDING_AUDIO) is Reason.GUARDIAN,
                     "the pupil's own grant is not enough")
    assert (pupil.id, Purpose.RECORDING_AUDIO) not in await granted()
    assert (tutor.id, Purpose.AI_SUMMARY) in await granted()

    entry = await guardian(client, api_keys, pupil, "recording.audio")
    assert entry.status_code == 201, entry.text
    assert (entry.json()["actor"], entry.json()["method"]) == ("guardian", "api")
    assert entry.json()["subject_id"] == str(pupil.id)
    await eventually(lambda: verdict(pupil, Purpose.RECORDING_AUDIO) is Reason.GRANTED,
                     "allowed with the guardian's grant")
    # AI purposes follow the same rule: transcription still lacks the guardian's grant.
    assert verdict(pupil, Purpose.TRANSCRIPTION) is Reason.GUARDIAN
    assert (pupil.id, Purpose.TRANSCRIPTION) not in await granted()
    for purpose in ("transcription", "ai.summary"):
        assert (await guardian(client, api_keys, pupil, purpose)).status_code == 201
    await eventually(lambda: verdict(pupil, Purpose.AI_SUMMARY) is Reason.GRANTED, "AI too")
    assert {(pupil.id, Purpose.AI_SUMMARY), (pupil.id, Purpose.RECORDING_AUDIO)} <= await granted()

    # The pupil's own choice still counts, and so does the guardian's withdrawal.
    await decide(client, pupil, "ai.summary", "withdrawn")
    await eventually(lambda: verdict(pupil, Purpose.AI_SUMMARY) is Reason.WITHDRAWN, "own")
    withdrawn = await guardian(client, api_keys, pupil, "recording.audio", "withdrawn")
    assert withdrawn.status_code == 201
    await eventually(lambda: verdict(pupil, Purpose.RECORDING_AUDIO) is Reason.GUARDIAN,
                     "the guardian withdrew")
    assert (pupil.id, Purpose.RECORDING_AUDIO) not in await granted()


async def test_the_guardian_path_is_for_minors_and_platforms_only(
    client: httpx.AsyncClient, api_keys: dict[Scope, str], runtime: Runtime
) -> None:
    booked = await book(
        client, api_keys, runtime.clock.now() + timedelta(minutes=5),
        person("tutor-2", "Tia Tutor"), [person("adult-2", "Abe Adult")], PURPOSES,
    )
    _, grown = booked.people
    refused = await guardian(client, api_keys, grown, "recording.audio")
    assert refused.status_code == 422
    assert refused.json()["code"] == "guardian_not_applicable"
    body: dict[str, Any] = {"participant_id": str(grown.id), "purpose": "recording.audio",
                            "decision": "granted", "notice_sha256": "0" * 64}
    anonymous = await client.post("/v1/consent/guardian", json=body, headers=grown.headers)
    assert anonymous.status_code == 401
    admin = await client.post("/v1/consent/guardian", json=body,
                              headers=bearer(api_keys[Scope.ADMIN]))
    assert admin.status_code == 403
    # A participant cannot claim to be a guardian through their own consent API.
    overview = (await client.get("/v1/consent", headers=grown.headers)).json()
    sha = overview["purposes"][0]["notice"]["sha256"]
    own = await client.post("/v1/consent", headers=grown.headers, json={
        "purpose": "recording.audio", "decision": "granted", "notice_sha256": sha,
        "actor": "guardian"})
    assert own.status_code == 201
    assert own.json()["actor"] == "subject"


async def test_the_minor_sees_their_own_decision_not_the_guardians(
    client: httpx.AsyncClient, api_keys: dict[Scope, str], runtime: Runtime
) -> None:
    booked = await book(
        client, api_keys, runtime.clock.now() + timedelta(minutes=5),
        person("tutor-3", "Ty Tutor"), [person("pupil-3", "Pia Pupil", adult=False)],
        PURPOSES,
    )
    pupil = booked.people[1]
    await decide(client, pupil, "recording.audio", "denied")
    assert (await guardian(client, api_keys, pupil, "recording.audio")).status_code == 201
    overview = (await client.get("/v1/consent", headers=pupil.headers)).json()
    shown = {p["purpose"]: p["decision"] for p in overview["purposes"]}
    assert shown["recording.audio"] == "denied"
