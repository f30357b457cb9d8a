"""Shared by the AI job tests: a booking through the scheduler API, decisions through the real
consent API, generated Opus/Ogg speech stand-ins, and waiting for jobs through the SSE stream."""

from __future__ import annotations

import array
import io
import json
import math
import uuid
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from fractions import Fraction
from typing import Any

import av
import httpx

from core.accounts import Scope
from core.audio import AudioSpan
from tests.support.bookings import bearer, booking_body, credential_of
from tests.support.consent import decide as consent_decide
from tests.support.waiting import eventually


def tone(frequency: float, seconds: float = 0.4) -> bytes:
    """A short Opus-in-Ogg tone: a real audio file, distinct per frequency."""
    out = io.BytesIO()
    with av.open(out, mode="w", format="ogg") as container:
        stream = container.add_stream("libopus", rate=48000)
        stream.layout = "mono"  # type: ignore[attr-defined]
        samples = int(48000 * seconds)
        pcm = array.array(
            "h", (int(0.3 * 32767 * math.sin(2 * math.pi * frequency * n / 48000))
                  for n in range(samples))
        )
        frame = av.AudioFrame(format="s16", layout="mono", samples=samples)
        frame.planes[0].update(pcm.tobytes())
        frame.sample_rate = 48000
        frame.pts = 0
        frame.time_base = Fraction(1, 48000)
        for packet in stream.encode(frame):
            container.mux(packet)
        for packet in stream.encode(None):
            container.mux(packet)
    return out.getvalue()


@dataclass
class Person:
    id: uuid.UUID
    name: str
    credential: str
    entries: dict[str, str] = field(default_factory=dict)  # purpose -> granting entry id

    @property
    def headers(self) -> dict[str, str]:
        return {"X-Join-Credential": self.credential}


@dataclass
class Session:
    booking_id: uuid.UUID
    people: list[Person]

    @property
    def host(self) -> Person:
        return self.people[0]


async def book_session(
    client: httpx.AsyncClient,
    keys: dict[Scope, str],
    starts_at: datetime,
    *,
    purposes: Sequence[str],
    names: Sequence[str] = ("Ada Lovelace", "Grace Hopper"),
    **overrides: Any,
) -> Session:
    body = booking_body(starts_at, clients=len(names) - 1, purposes=list(purposes), **overrides)
    body["host"]["display_name"] = names[0]
    for spec, name in zip(body["clients"], names[1:], strict=True):
        spec["display_name"] = name
    response = await client.post("/v1/bookings", json=body, headers=bearer(keys[Scope.SCHEDULER]))
    assert response.status_code == 201, response.text
    created = response.json()
    people = [
        Person(uuid.UUID(p["id"]), p["display_name"], credential_of(p))
        for p in created["participants"]
    ]
    return Session(uuid.UUID(created["id"]), people)


async def decide(
    client: httpx.AsyncClient, person: Person, purpose: str, decision: str = "granted"
) -> dict[str, Any]:
    """A decision through the real participant consent API, remembering each grant's entry."""
    entry = await consent_decide(client, person, purpose, decision)
    if decision == "granted":
        person.entries[purpose] = str(entry["id"])
    return entry


async def grant(client: httpx.AsyncClient, person: Person, *purposes: str) -> None:
    for purpose in purposes:
        await decide(client, person, purpose)


async def settle(client: httpx.AsyncClient, session: Session, as_: Person | None = None) -> list[
    dict[str, Any]
]:
    """Follow the booking's SSE job stream until it goes idle; the jobs as it last showed them."""
    headers = (as_ or session.host).headers
    path = f"/v1/bookings/{session.booking_id}/jobs/events"
    jobs: dict[str, dict[str, Any]] = {}
    async with client.stream("GET", path, headers=headers, timeout=60) as response:
        assert response.status_code == 200
        assert response.headers["content-type"].startswith("text/event-stream")
        event = ""
        async for line in response.aiter_lines():
            if line.startswith("event: "):
                event = line[7:]
            elif line.startswith("data: ") and event == "job":
                view = json.loads(line[6:])
                jobs[view["id"]] = view
    order = {"ai.agenda": 0, "transcription": 1, "ai.summary": 2}
    return sorted(jobs.values(), key=lambda j: (j["created_at"], order[j["kind"]], j["id"]))


async def jobs_of(client: httpx.AsyncClient, session: Session) -> list[dict[str, Any]]:
    path = f"/v1/bookings/{session.booking_id}/jobs"
    response = await client.get(path, headers=session.host.headers)
    assert response.status_code == 200
    jobs: list[dict[str, Any]] = response.json()["jobs"]
    return jobs


async def until_jobs(client: httpx.AsyncClient, session: Session, count: int) -> None:
    """Wait until the booking has `count` jobs: bus reactions are async."""

    async def enough() -> bool:
        return len(await jobs_of(client, session)) >= count

    await eventually(enough, f"the booking has {count} jobs")


class Recordings:
    """The audio source the transcription job reads: spans per booking (media/ in production)."""

    def __init__(self) -> None:
        self.by_booking: dict[uuid.UUID, list[AudioSpan]] = {}

    def add(self, booking_id: uuid.UUID, person: Person, start_ms: int, audio: bytes) -> None:
        span = AudioSpan(person.id, start_ms, start_ms + 400, audio)
        self.by_booking.setdefault(booking_id, []).append(span)

    async def spans(self, booking_id: uuid.UUID) -> list[AudioSpan]:
        return list(self.by_booking.get(booking_id, []))


def soon(now: datetime) -> datetime:
    return now + timedelta(hours=2)
