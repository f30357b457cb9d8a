"""Restriction of processing: a restricted person is not recorded and no AI job processes
them, whatever they consented to, until an admin lifts it. Proven through the live gate, the
recorder's own decision and the AI jobs API."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest
from aiortc import RTCPeerConnection

from api.services import Services
from consent.gate import Reason
from consent.live import LiveGate
from core.accounts import Scope
from core.clock import ManualClock
from core.purposes import Purpose
from core.runtime import Runtime
from media.recorder import CaptureState, PeerSession, Recorder
from media.recordings import TrackKind
from tests.standins.openai import OpenAIStandIn
from tests.support.ai import book_session, grant, settle, soon
from tests.support.bookings import bearer
from tests.support.waiting import eventually

HOST = "host-1"  # the host's external id in tests.support.bookings.booking_body


@pytest.fixture
async def standin() -> AsyncIterator[OpenAIStandIn]:
    async with OpenAIStandIn() as server:
        yield server


@pytest.fixture
def settings_overrides(standin: OpenAIStandIn) -> dict[str, Any]:
    return {"openai_base_url": standin.base_url, "openai_api_key": "sk-test",
            "openai_timeout_s": 1.0, "openai_max_attempts": 1}


async def test_restricted_person_is_neither_allowed_nor_recorded(
    client: httpx.AsyncClient, api_keys: dict[Scope, str], runtime: Runtime, services: Services,
    clock: ManualClock,
) -> None:
    session = await book_session(client, api_keys, soon(clock.now()),
                                 purposes=("recording.audio",))
    host, guest = session.people
    await grant(client, host, "recording.audio")
    await grant(client, guest, "recording.audio")
    gate = services.gate
    recorder = services.recorder
    assert isinstance(gate, LiveGate)
    assert isinstance(recorder, Recorder)
    await recorder.start(session.booking_id)
    pc = RTCPeerConnection()
    try:
        host_peer = PeerSession(session.booking_id, host.id, bytes(32), pc)
        guest_peer = PeerSession(session.booking_id, guest.id, bytes(32), pc)
        await eventually(lambda: recorder.decide(host_peer, TrackKind.AUDIO)
                         is CaptureState.RECORDING, "the host is recorded")
        admin = bearer(api_keys[Scope.ADMIN])
        url = f"/v1/admin/subjects/{HOST}/restriction"

        restricted = await client.post(url, headers=admin)
        assert restricted.status_code == 200
        assert restricted.json()["restricted"] is True
        await eventually(lambda: recorder.decide(host_peer, TrackKind.AUDIO)
                         is CaptureState.IDLE, "the restricted host is no longer recorded")
        verdict = gate.explain(session.booking_id, host.id, Purpose.RECORDING_AUDIO)
        assert verdict.reason is Reason.RESTRICTED
        assert recorder.decide(guest_peer, TrackKind.AUDIO) is CaptureState.RECORDING
        found = await client.get("/v1/admin/subjects", params={"q": HOST}, headers=admin)
        assert [(s["external_id"], s["restricted"]) for s in found.json()["subjects"]] == [
            (HOST, True)
        ]

        lifted = await client.delete(url, headers=admin)
        assert lifted.status_code == 200
        assert lifted.json()["restricted"] is False
        await eventually(lambda: recorder.decide(host_peer, TrackKind.AUDIO)
                         is CaptureState.RECORDING, "recorded again once lifted")
    finally:
        await pc.close()


async def test_restricted_person_gets_no_ai_job(
    client: httpx.AsyncClient, api_keys: dict[Scope, str], clock: ManualClock,
    standin: OpenAIStandIn,
) -> None:
    session = await book_session(client, api_keys, soon(clock.now()), purposes=("ai.agenda",))
    host, guest = session.people
    admin = bearer(api_keys[Scope.ADMIN])
    await grant(client, host, "ai.agenda")
    assert (await client.post(f"/v1/admin/subjects/{HOST}/restriction",
                              headers=admin)).status_code == 200
    # Both granted: the agenda would be drafted now, were the host not restricted.
    await grant(client, guest, "ai.agenda")
    jobs = f"/v1/bookings/{session.booking_id}/jobs"
    assert (await client.post(jobs, json={"kind": "ai.agenda"}, headers=admin)).status_code == 202
    (job,) = await settle(client, session)
    assert (job["status"], job["error_code"]) == ("skipped", "consent")
    assert standin.requests == []

    assert (await client.delete(f"/v1/admin/subjects/{HOST}/restriction",
                                headers=admin)).status_code == 200
    assert (await client.post(jobs, json={"kind": "ai.agenda"}, headers=admin)).status_code == 202
    statuses = sorted(j["status"] for j in await settle(client, session))
    assert statuses == ["skipped", "succeeded"]
    assert len(standin.requests) == 1


async def test_restriction_needs_a_known_person_and_an_admin(
    client: httpx.AsyncClient, api_keys: dict[Scope, str]
) -> None:
    url = "/v1/admin/subjects/nobody-here/restriction"
    unknown = await client.post(url, headers=bearer(api_keys[Scope.ADMIN]))
    assert unknown.status_code == 404
    assert unknown.json()["code"] == "not_found"
    scheduler = await client.post(url, headers=bearer(api_keys[Scope.SCHEDULER]))
    assert scheduler.status_code == 403
