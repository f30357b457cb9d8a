"""LiveKit mode recording with people in the room: Chromium pages publish their camera and
microphone to the real LiveKit server, whose own webhooks (through the test load balancer) drive
callgate's Track Egress, spoken to an Egress stand-in (tests/standins/egress.py: Egress alone
cannot run here). Consent decides which tracks are recorded; stored egress state lets another
node stop a recording the node that started it can no longer answer for.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import pytest
from fastapi import FastAPI
from playwright.async_api import Browser, Page
from sqlalchemy import select

from core.accounts import Scope, do_create_key
from core.clock import ManualClock
from core.database import Database
from media.egress.records import EgressRecord
from tests.standins.egress import EgressStandIn
from tests.support import REDIS_URL
from tests.support.bookings import bearer, book, booking_body, credential_of
from tests.support.consent import decide
from tests.support.egress import egress_overrides
from tests.support.livekit import Balancer, LiveKitServer, serving
from tests.support.liveserver import LiveServer, start_server

pytestmark = pytest.mark.e2e

PUBLISH = """async ([url, token]) => {
  const { Room } = window.LivekitClient;
  const room = new Room();
  window.__room = room;
  await room.connect(url, token);
  await room.localParticipant.enableCameraAndMicrophone();
  return room.localParticipant.identity;
}"""


class Link:
    """A participant of a booking made through the API, acting by their join link."""

    def __init__(self, person: dict[str, Any]) -> None:
        self.id = str(person["id"])
        self.external_id = str(person["external_id"])
        self.credential = credential_of(person)

    @property
    def headers(self) -> dict[str, str]:
        return {"X-Join-Credential": self.credential}


@pytest.fixture
def backend() -> str:
    return "postgres"


@pytest.fixture
def settings_overrides(egress_settings: dict[str, Any]) -> dict[str, Any]:
    return egress_settings


async def until(check: Callable[[], Awaitable[bool]], what: str, seconds: float = 45) -> None:
    deadline = asyncio.get_running_loop().time() + seconds
    while not await check():
        if asyncio.get_running_loop().time() > deadline:
            raise AssertionError(f"never happened: {what}")
        await asyncio.sleep(0.1)


def recorded(egress: EgressStandIn, booking_id: str) -> set[tuple[str, str]]:
    """(person, kind) of every active egress of the booking, read from the paths callgate
    asked Egress to write (`<booking>/<person>/<kind>-<track>-<egress row>-{time}`)."""
    found = set()
    for egress_id, info in egress.egresses.items():
        path = egress.requests[egress_id].file.filepath
        if info.status == 1 and f"/{booking_id}/" in path:  # EGRESS_ACTIVE
            person, rest = path.split(f"/{booking_id}/", 1)[1].split("/", 1)
            found.add((person, rest.split("-", 1)[0]))
    return found


async def publish(browser: Browser, base: str, livekit: LiveKitServer, token: str) -> Page:
    page = await (await browser.new_context()).new_page()
    await page.goto(f"{base}/healthz")
    await page.add_script_tag(url=f"{base}/call/livekit-client.js")
    await page.evaluate(PUBLISH, [livekit.url, token])
    return page


async def token_of(base: str, person: Link) -> str:
    async with httpx.AsyncClient(base_url=base) as http:
        answer = await http.post("/v1/join", json={"credential": person.credential})
    assert answer.status_code == 200, answer.text
    return str(answer.json()["livekit"]["token"])


async def recordings(base: str, booking_id: str, who: Link) -> list[dict[str, Any]]:
    async with httpx.AsyncClient(base_url=base) as http:
        answer = await http.get(f"/v1/bookings/{booking_id}/recordings", headers=who.headers)
    assert answer.status_code == 200, answer.text
    rows: list[dict[str, Any]] = answer.json()["recordings"]
    return rows


async def test_egress_follows_consent_through_the_servers_webhooks(
    browser: Browser, app: FastAPI, webhook_backends: list[str], livekit_server: LiveKitServer,
    balancer: Balancer,
    egress_server: EgressStandIn, egress_dir: Path, client: httpx.AsyncClient,
    api_keys: dict[Scope, str], clock: ManualClock,
) -> None:
    async with serving(app) as base:
        webhook_backends.append(base)
        created = await book(
            client, api_keys[Scope.SCHEDULER], clock.now(), minutes=30,
            purposes=["recording.audio", "recording.video"],
            recording_access="participants",  # the host's link lists the guest's files
        )
        booking = created["id"]
        host, guest = (Link(p) for p in created["participants"])
        for purpose in ("recording.audio", "recording.video"):
            await decide(client, host, purpose, "granted")
        grant = (await decide(client, guest, "recording.audio", "granted"))["id"]
        start = await client.post(f"/v1/bookings/{booking}/recording/start", headers=host.headers)
        assert start.status_code == 200, start.text

        pages = [await publish(browser, base, livekit_server, await token_of(base, who))
                 for who in (host, guest)]
        want = {(host.id, "audio"), (host.id, "video"), (guest.id, "audio")}
        await until(lambda: _is(recorded(egress_server, booking), want), "three tracks recorded")

        await decide(client, guest, "recording.audio", "withdrawn")
        await until(
            lambda: _is(recorded(egress_server, booking), want - {(guest.id, "audio")}),
            "the guest's audio egress stopped",
        )
        # Egress reported the file; callgate took it in, encrypted, and dropped the plaintext.
        rows: list[dict[str, Any]] = []

        async def listed() -> bool:
            rows[:] = await recordings(base, booking, host)
            return len(rows) == 1

        await until(listed, "the guest's audio file listed")
        [row] = rows
        assert row["participant_id"] == guest.id
        assert row["kind"] == "audio"
        assert row["consent_entry_ids"] == [grant]
        assert await asyncio.to_thread(plaintext_left, egress_dir) == []

        await pages[0].context.close()  # the host leaves: LiveKit says so, their egress stops
        await until(lambda: _is(recorded(egress_server, booking), set()), "host's egress stopped")
        room = created["room"]["name"]
        await until(lambda: _delivered(balancer, "participant_left", room), "participant_left")
        kinds = {(kind, status) for kind, name, status in balancer.events if name == room}
        assert {("participant_joined", 200), ("track_published", 200),
                ("participant_left", 200), ("egress_ended", 200)} <= kinds
        await pages[1].context.close()


@pytest.mark.parametrize("killed", ["after_storing_the_egress_id", "before_hearing_back"])
async def test_another_node_stops_a_recording_after_its_node_was_killed(
    browser: Browser, pg_url: str, tmp_path: Path, balancer: Balancer,
    webhook_backends: list[str], livekit_server: LiveKitServer, egress_server: EgressStandIn,
    egress_dir: Path, redis_prefix: str, killed: str,
) -> None:
    """The node that started an egress dies mid-recording, either once it stored the id
    LiveKit gave the egress or before LiveKit's answer reached it (nothing in the database
    names the egress then). The person withdraws on another node: that node stops the egress
    and takes its file in."""
    overrides = egress_overrides(
        livekit_server, egress_server, egress_dir, redis_url=REDIS_URL, redis_prefix=redis_prefix
    )
    first = start_server(pg_url, tmp_path / "a", overrides)
    second = start_server(pg_url, tmp_path / "b", overrides)
    try:
        webhook_backends.append(first.base_url)  # LiveKit's webhooks reach the first node
        booking, host, guest = await _booked(first)
        async with httpx.AsyncClient(base_url=first.base_url) as http:
            await decide(http, guest, "recording.audio", "granted")
            started = await http.post(
                f"/v1/bookings/{booking}/recording/start", headers=host.headers
            )
            assert started.status_code == 200, started.text
        if killed == "before_hearing_back":
            egress_server.answering.clear()  # LiveKit starts it, the answer is held
        page = await publish(browser, first.base_url, livekit_server,
                             await token_of(first.base_url, guest))
        await until(
            lambda: _is(recorded(egress_server, booking), {(guest.id, "audio")}),
            "the first node started the guest's audio egress",
        )
        if killed == "after_storing_the_egress_id":

            async def stored() -> bool:
                return all(await stored_egress_ids(pg_url, booking))

            await until(stored, "the first node stored the egress id")
        else:
            assert await stored_egress_ids(pg_url, booking) == [None]
        first.kill()  # mid-recording
        webhook_backends[:] = [second.base_url]
        async with httpx.AsyncClient(base_url=second.base_url) as http:
            await decide(http, guest, "recording.audio", "withdrawn")
        await until(
            lambda: _is(recorded(egress_server, booking), set()),
            "the second node stopped the egress the first one started",
        )
        rows: list[dict[str, Any]] = []

        async def listed() -> bool:
            rows[:] = await recordings(second.base_url, booking, host)
            return len(rows) == 1

        await until(listed, "the file taken in by the second node")
        assert rows[0]["participant_id"] == guest.id
        assert await asyncio.to_thread(plaintext_left, egress_dir) == []
        await page.context.close()
    finally:
        egress_server.answering.set()
        first.stop()
        second.stop()


async def stored_egress_ids(url: str, booking_id: str) -> list[str | None]:
    """The LiveKit ids stored for the booking's egresses (None: claimed, not yet named)."""
    db = Database(url)
    try:
        async with db.session() as session:
            found = await session.scalars(
                select(EgressRecord.egress_id).where(
                    EgressRecord.booking_id == uuid.UUID(booking_id)
                )
            )
            return list(found.all())
    finally:
        await db.close()


async def _booked(server: LiveServer) -> tuple[str, Link, Link]:
    db = Database(server.settings.database_url)
    try:
        async with db.session() as session:
            _, key = await do_create_key(session, Scope.SCHEDULER, "e2e", datetime.now(UTC))
    finally:
        await db.close()
    now = datetime.now(UTC).replace(microsecond=0)
    async with httpx.AsyncClient(base_url=server.base_url) as http:
        answer = await http.post(
            "/v1/bookings", headers=bearer(key),
            json=booking_body(
                now, minutes=30, purposes=["recording.audio"],
                recording_access="participants",  # the host's link lists the guest's files
            ),
        )
    assert answer.status_code == 201, answer.text
    created = answer.json()
    host, guest = (Link(p) for p in created["participants"])
    return str(created["id"]), host, guest


async def _delivered(balancer: Balancer, kind: str, room: str) -> bool:
    return any(k == kind and name == room for k, name, _ in balancer.events)


def plaintext_left(folder: Path) -> list[Path]:
    return [p for p in folder.rglob("*") if p.is_file()]


async def _is(found: set[tuple[str, str]], expected: set[tuple[str, str]]) -> bool:
    return found == expected
