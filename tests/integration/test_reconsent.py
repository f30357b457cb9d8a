"""Re-consent: a notice version marked as a material change makes earlier grants for its purpose
stop counting (capture and AI jobs) from when it takes effect, pages in a call are told, the
admin log shows the outdated grants; a non-material revision keeps them; every version stays
readable."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

import httpx
import pytest
from fastapi import FastAPI

from consent.gate import Reason
from consent.live import LiveGate
from consent.purposes import Purpose
from core.accounts import Scope
from core.clock import ManualClock
from core.runtime import Runtime
from summaries.consents import LedgerConsent
from tests.support.bookings import bearer
from tests.support.consent import decide
from tests.support.signaling import (
    Seeded,
    open_socket,
    receive_type,
    seed_booking,
    ticket_for,
)
from tests.support.waiting import eventually

ORIGIN = "http://testserver"
NEW_AUDIO = "# Audio recording\n\nWe now also keep recordings for quality review.\n"


class Holder:
    def __init__(self, credential: str) -> None:
        self.headers = {"X-Join-Credential": credential}



@pytest.fixture
def gate(app: FastAPI) -> LiveGate:
    live: LiveGate | None = app.state.services.gate
    assert live is not None
    return live

@pytest.fixture
async def world(
    client: httpx.AsyncClient, runtime: Runtime, clock: ManualClock, gate: LiveGate
) -> Seeded:
    """A booking open now (audio and video); both people granted both."""
    seeded = await seed_booking(runtime.db, runtime.keys, clock.now())
    for person in seeded.people:
        for purpose in ("recording.audio", "recording.video"):
            await decide(client, Holder(person.credential), purpose, "granted")
    await gate.ensure_booking(seeded.booking_id)
    return seeded


async def publish(
    client: httpx.AsyncClient, keys: dict[Scope, str], text: str, **extra: Any
) -> dict[str, Any]:
    body = {"purpose": "recording.audio", "language": "en", "text": text, **extra}
    response = await client.post(
        "/v1/admin/consent-notices", json=body, headers=bearer(keys[Scope.ADMIN])
    )
    assert response.status_code == 201, response.text
    notice: dict[str, Any] = response.json()
    return notice


async def overview(client: httpx.AsyncClient, credential: str) -> dict[str, dict[str, Any]]:
    body = (await client.get("/v1/consent", headers={"X-Join-Credential": credential})).json()
    return {p["purpose"]: p for p in body["purposes"]}


async def test_material_change_stops_earlier_grants_and_tells_the_pages(
    client: httpx.AsyncClient, runtime: Runtime, world: Seeded, api_keys: dict[Scope, str],
    ws_base: str,
    gate: LiveGate,
) -> None:
    client_person = world.client
    page = await open_socket(
        ws_base, world.room, ticket_for(runtime.keys, world, client_person, runtime.clock.now()),
        ORIGIN,
    )
    await receive_type(page, "welcome")
    assert gate.allows(world.booking_id, client_person.id, Purpose.RECORDING_AUDIO)
    jobs = LedgerConsent(runtime.db, runtime.clock, runtime.keys)
    assert (client_person.id, Purpose.RECORDING_AUDIO) in await jobs.grants(world.booking_id)

    notice = await publish(
        client, api_keys, NEW_AUDIO, material=True, change_note="Recordings kept for review"
    )
    assert (notice["version"], notice["material"]) == (2, True)
    told = await receive_type(page, "notice-changed")
    assert told["purpose"] == "recording.audio"
    await eventually(
        lambda: not gate.allows(world.booking_id, client_person.id, Purpose.RECORDING_AUDIO),
        "the gate stops counting the old grant",
    )
    verdict = gate.explain(world.booking_id, client_person.id, Purpose.RECORDING_AUDIO)
    assert verdict.reason is Reason.RECONSENT
    assert gate.allows(world.booking_id, client_person.id, Purpose.RECORDING_VIDEO)
    assert (client_person.id, Purpose.RECORDING_AUDIO) not in await jobs.grants(world.booking_id)
    shown = await overview(client, client_person.credential)
    assert shown["recording.audio"]["reconsent_required"] is True
    assert shown["recording.audio"]["notice_change"] == "Recordings kept for review"
    assert shown["recording.audio"]["notice"]["version"] == 2
    assert shown["recording.video"]["reconsent_required"] is False
    assert shown["recording.video"]["notice_change"] is None

    log = (await client.get(
        "/v1/admin/consent-log", headers=bearer(api_keys[Scope.AUDITOR]),
        params={"purpose": "recording.audio"},
    )).json()["items"]
    assert {(i["notice_version"], i["outdated_by"]["version"]) for i in log} == {(1, 2)}

    await decide(client, Holder(client_person.credential), "recording.audio", "granted")
    await eventually(
        lambda: gate.allows(world.booking_id, client_person.id, Purpose.RECORDING_AUDIO),
        "granted again under the new notice",
    )
    shown = await overview(client, client_person.credential)
    assert shown["recording.audio"]["reconsent_required"] is False
    newest = (await client.get(
        "/v1/admin/consent-log", headers=bearer(api_keys[Scope.AUDITOR]),
        params={"purpose": "recording.audio", "limit": "1"},
    )).json()["items"][0]
    assert (newest["notice_version"], newest["outdated_by"]) == (2, None)
    await page.close()


async def test_a_later_effective_time_counts_old_grants_until_then(
    client: httpx.AsyncClient, runtime: Runtime, world: Seeded, api_keys: dict[Scope, str],
    clock: ManualClock,
    gate: LiveGate,
) -> None:
    host = world.host
    effective = clock.now() + timedelta(minutes=10)
    await publish(client, api_keys, NEW_AUDIO, material=True, effective_at=effective.isoformat())
    shown = await overview(client, host.credential)
    assert shown["recording.audio"]["reconsent_required"] is True  # asked again already
    assert gate.allows(world.booking_id, host.id, Purpose.RECORDING_AUDIO)
    clock.advance(timedelta(minutes=10))
    await eventually(
        lambda: not gate.allows(world.booking_id, host.id, Purpose.RECORDING_AUDIO),
        "the change took effect",
    )
    past = (clock.now() - timedelta(minutes=1)).isoformat()
    bad = await client.post(
        "/v1/admin/consent-notices", headers=bearer(api_keys[Scope.ADMIN]),
        json={"purpose": "recording.audio", "language": "en", "text": "x", "material": True,
              "effective_at": past},
    )
    assert bad.status_code == 422


async def test_a_non_material_revision_keeps_grants_and_every_version_stays_readable(
    client: httpx.AsyncClient, runtime: Runtime, world: Seeded, api_keys: dict[Scope, str],
    gate: LiveGate,
) -> None:
    host = world.host
    first = (await overview(client, host.credential))["recording.audio"]["notice"]
    revised = await publish(client, api_keys, first["text"].replace("\n", " \n", 1))
    assert (revised["version"], revised["material"]) == (2, False)
    shown = await overview(client, host.credential)
    assert shown["recording.audio"]["reconsent_required"] is False
    assert shown["recording.audio"]["notice"]["version"] == 2
    assert gate.allows(world.booking_id, host.id, Purpose.RECORDING_AUDIO)

    versions = (await client.get(
        "/v1/admin/consent-notices/versions", headers=bearer(api_keys[Scope.AUDITOR]),
        params={"purpose": "recording.audio", "language": "en"},
    )).json()["items"]
    assert [v["version"] for v in versions] == [1, 2]
    old = await client.get(f"/v1/consent/notices/{first['sha256']}")
    assert old.status_code == 200
    assert (old.json()["version"], old.json()["text"]) == (1, first["text"])
    missing = await client.get("/v1/consent/notices/" + "0" * 64)
    assert missing.status_code == 404
    bad = await client.get("/v1/consent/notices/not-a-hash")
    assert bad.status_code == 422
