"""Who may read a booking's AI jobs and outputs, and what callers see without a provider."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest

from core.accounts import Scope
from core.clock import ManualClock
from tests.standins.openai import OpenAIStandIn
from tests.support.ai import book_session, grant, settle, soon
from tests.support.bookings import bearer

PATHS = ("jobs", "jobs/events", "agenda", "summary", "transcript")


@pytest.fixture
async def standin() -> AsyncIterator[OpenAIStandIn]:
    async with OpenAIStandIn() as server:
        yield server


@pytest.fixture
def settings_overrides(standin: OpenAIStandIn) -> dict[str, Any]:
    return {"openai_base_url": standin.base_url, "openai_api_key": "sk-test"}


async def test_only_the_bookings_participants_and_admins_read_its_ai_data(
    client: httpx.AsyncClient, api_keys: dict[Scope, str], clock: ManualClock,
    standin: OpenAIStandIn,
) -> None:
    mine = await book_session(client, api_keys, soon(clock.now()), purposes=("ai.agenda",))
    other = await book_session(client, api_keys, soon(clock.now()), purposes=("ai.agenda",))
    for person in mine.people:
        await grant(client, person, "ai.agenda")
    await client.post(
        f"/v1/bookings/{mine.booking_id}/jobs", json={"kind": "ai.agenda"},
        headers=mine.host.headers,
    )
    await settle(client, mine)
    base = f"/v1/bookings/{mine.booking_id}"

    agenda = await client.get(f"{base}/agenda", headers=mine.people[1].headers)
    assert agenda.status_code == 200
    admin = await client.get(f"{base}/agenda", headers=bearer(api_keys[Scope.ADMIN]))
    assert admin.json() == agenda.json()
    for path in PATHS:
        stranger = await client.get(f"{base}/{path}", headers=other.host.headers)
        assert (stranger.status_code, stranger.json()["code"]) == (404, "not_found"), path
        nobody = await client.get(f"{base}/{path}")
        assert (nobody.status_code, nobody.json()["code"]) == (401, "unauthenticated"), path
        for scope in (Scope.SCHEDULER, Scope.AUDITOR):
            denied = await client.get(f"{base}/{path}", headers=bearer(api_keys[scope]))
            assert (denied.status_code, denied.json()["code"]) == (403, "forbidden"), path
    bogus = await client.get(f"{base}/agenda", headers={"X-Join-Credential": "x" * 43})
    assert bogus.status_code == 404
    unknown = await client.get(
        f"/v1/bookings/{uuid.uuid4()}/agenda", headers=bearer(api_keys[Scope.ADMIN])
    )
    assert unknown.status_code == 404
    started = await client.post(
        f"{base}/jobs", json={"kind": "ai.agenda"}, headers=other.host.headers
    )
    assert started.status_code == 404


async def test_register_is_for_admins_and_auditors(
    client: httpx.AsyncClient, api_keys: dict[Scope, str]
) -> None:
    for scope in (Scope.ADMIN, Scope.AUDITOR):
        listed = await client.get("/v1/admin/processing", headers=bearer(api_keys[scope]))
        assert listed.status_code == 200
        assert listed.json() == {"entries": []}
    scheduler = await client.get(
        "/v1/admin/processing", headers=bearer(api_keys[Scope.SCHEDULER])
    )
    assert scheduler.status_code == 403
    naive = await client.get(
        "/v1/admin/processing", params={"before": "2030-01-01T00:00:00"},
        headers=bearer(api_keys[Scope.ADMIN]),
    )
    assert (naive.status_code, naive.json()["code"]) == (422, "invalid_input")


async def test_a_purpose_the_booking_did_not_request_is_refused(
    client: httpx.AsyncClient, api_keys: dict[Scope, str], clock: ManualClock,
) -> None:
    session = await book_session(client, api_keys, soon(clock.now()), purposes=("ai.agenda",))
    response = await client.post(
        f"/v1/bookings/{session.booking_id}/jobs", json={"kind": "ai.summary"},
        headers=session.host.headers,
    )
    assert response.status_code == 422
    assert response.json()["errors"] == [
        {"loc": ["body", "kind"], "msg": "the booking does not request ai.summary"}
    ]
    jobs = await client.get(f"/v1/bookings/{session.booking_id}/jobs", headers=session.host.headers)
    assert jobs.json() == {"available": True, "jobs": []}


async def test_summary_page_is_served_from_the_join_link(
    client: httpx.AsyncClient, api_keys: dict[Scope, str], clock: ManualClock
) -> None:
    session = await book_session(client, api_keys, soon(clock.now()), purposes=("ai.agenda",))
    page = await client.get(f"/summary/{session.host.credential}")
    assert page.status_code == 200
    assert page.headers["content-type"].startswith("text/html")
    assert page.headers["referrer-policy"] == "no-referrer"
    assert page.headers["cache-control"] == "no-store"
    assert "script-src 'self'" in page.headers["content-security-policy"]
    assert session.host.credential not in page.text  # the page reads the link, it is not baked in
    script = await client.get("/summary-page/summary.js")
    assert script.status_code == 200
    assert script.headers["content-type"].startswith("text/javascript")
    assert "/jobs/events" in script.text
