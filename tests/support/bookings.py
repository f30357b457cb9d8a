"""Booking request bodies and row counts for tests that book sessions through the API."""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Any

import httpx
from sqlalchemy import func, select

from core.accounts import Scope, do_create_key
from core.bookings import Booking, Participant
from core.runtime import Runtime


def booking_body(
    starts_at: datetime,
    *,
    minutes: int = 60,
    clients: int = 1,
    purposes: list[str] | None = None,
    **overrides: Any,
) -> dict[str, Any]:
    """A valid `POST /v1/bookings` body starting at `starts_at`."""
    body: dict[str, Any] = {
        "title": "Mentoring session",
        "stated_purpose": "Quarterly plan",
        "language": "en",
        "starts_at": starts_at.isoformat(),
        "ends_at": (starts_at + timedelta(minutes=minutes)).isoformat(),
        "host": {"external_id": "host-1", "display_name": "Ada Host", "adult": True},
        "clients": [
            {"external_id": f"client-{i}", "display_name": f"Client {i}", "adult": True}
            for i in range(1, clients + 1)
        ],
        "requested_purposes": purposes if purposes is not None else ["recording.audio"],
        "recording_policy": "per_participant",
    }
    body.update(overrides)
    return body


async def book(
    client: httpx.AsyncClient, key: str, starts_at: datetime, **kwargs: Any
) -> dict[str, Any]:
    """Create a booking through the API and return its JSON (asserting 201)."""
    response = await client.post(
        "/v1/bookings", json=booking_body(starts_at, **kwargs), headers=bearer(key)
    )
    assert response.status_code == 201, response.text
    created: dict[str, Any] = response.json()
    return created


def bearer(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


def credential_of(participant: dict[str, Any]) -> str:
    """The credential part of a participant's join link."""
    return str(participant["join_url"]).rsplit("/", 1)[1]


async def row_counts(runtime: Runtime) -> tuple[int, int]:
    """How many bookings and participants are stored."""
    async with runtime.db.session() as session:
        bookings = await session.scalar(select(func.count()).select_from(Booking))
        participants = await session.scalar(select(func.count()).select_from(Participant))
    return int(bookings or 0), int(participants or 0)


async def operator_key(runtime: Runtime) -> dict[str, str]:
    """Headers of a new operator key (the scope that manages organizations)."""
    async with runtime.db.session() as session:
        _, key = await do_create_key(session, Scope.OPERATOR, "test", runtime.clock.now())
    return bearer(key)
