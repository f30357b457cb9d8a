"""Without a configured provider the AI features say so (503 ai_unavailable): nothing is faked."""

from __future__ import annotations

import httpx

from core.accounts import Scope
from core.clock import ManualClock
from tests.support.ai import book_session, grant, soon


async def test_no_provider_means_ai_unavailable(
    client: httpx.AsyncClient, api_keys: dict[Scope, str], clock: ManualClock
) -> None:
    session = await book_session(client, api_keys, soon(clock.now()), purposes=("ai.agenda",))
    for person in session.people:
        await grant(client, person, "ai.agenda")
    response = await client.post(
        f"/v1/bookings/{session.booking_id}/jobs", json={"kind": "ai.agenda"},
        headers=session.host.headers,
    )
    assert response.status_code == 503
    assert response.headers["content-type"] == "application/problem+json"
    assert response.json()["code"] == "ai_unavailable"
    jobs = await client.get(f"/v1/bookings/{session.booking_id}/jobs", headers=session.host.headers)
    assert jobs.json() == {"available": False, "jobs": []}
    agenda = await client.get(
        f"/v1/bookings/{session.booking_id}/agenda", headers=session.host.headers
    )
    assert agenda.status_code == 404
