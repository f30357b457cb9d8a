"""LiveKit mode egress control against the real LiveKit server and the Egress stand-in
(tests/standins/egress.py: Egress's Twirp API and its signed webhooks), with callgate on a real
port behind the test load balancer.

The tests with people publishing tracks are in tests/e2e/test_livekit_recording.py (they need
browsers); here: webhook signatures and replays, and the audit of egresses callgate does not
know.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import secrets
from collections.abc import AsyncIterator, Callable
from datetime import timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest
from fastapi import FastAPI
from google.protobuf import json_format
from livekit import api as lk
from livekit.protocol import models
from livekit.protocol.webhook import WebhookEvent
from sqlalchemy import select

from consent.purposes import Purpose
from core.bookings import Booking
from core.clock import ManualClock
from core.runtime import Runtime
from tests.standins.egress import EgressStandIn
from tests.support.consent_bookings import Person, seed_booking
from tests.support.livekit import WEBHOOK_PATH, Balancer, LiveKitServer, serving

pytestmark = pytest.mark.usefixtures("database_url")


@pytest.fixture
def egress_dir(tmp_path: Path) -> Path:
    """The folder Egress writes to and callgate takes finished files in from."""
    folder = tmp_path / "egress"
    folder.mkdir()
    return folder.resolve()


@pytest.fixture
async def egress_server(
    livekit_server: LiveKitServer, balancer: Balancer
) -> AsyncIterator[EgressStandIn]:
    async with EgressStandIn(
        livekit_server.key, livekit_server.secret, balancer.url + WEBHOOK_PATH
    ) as server:
        yield server


@pytest.fixture
def settings_overrides(
    livekit_server: LiveKitServer, egress_server: EgressStandIn, egress_dir: Path
) -> dict[str, Any]:
    return {
        "egress_output_dir": egress_dir,
        "media_mode": "livekit",
        "livekit_url": livekit_server.url,
        "livekit_egress_url": egress_server.url,
        "livekit_api_key": livekit_server.key,
        "livekit_api_secret": livekit_server.secret,
        "livekit_retry_interval_s": 0.2,
        "livekit_timeout_s": 2,
    }


@pytest.fixture
async def node(app: FastAPI, webhook_backends: list[str]) -> AsyncIterator[str]:
    async with serving(app) as base:
        webhook_backends.append(base)
        yield base


def signed(
    event: WebhookEvent, key: str, secret: str
) -> tuple[bytes, dict[str, str]]:
    """The body and header LiveKit would send: a JWT carrying the body's SHA-256."""
    body = json_format.MessageToJson(event).encode()
    digest = base64.b64encode(hashlib.sha256(body).digest()).decode()
    token = lk.AccessToken(key, secret).with_sha256(digest).to_jwt()
    return body, {"Authorization": token, "Content-Type": "application/webhook+json"}


def joined(room: str, person: Person) -> WebhookEvent:
    return WebhookEvent(
        event="participant_joined", id=f"EV_{secrets.token_hex(6)}", room=models.Room(name=room),
        participant=models.ParticipantInfo(identity=str(person.id)),
    )


async def eventually(check: Callable[[], bool], what: str) -> None:
    for _ in range(300):
        if check():
            return
        await asyncio.sleep(0.05)
    raise AssertionError(f"never happened: {what}")


async def room_of(runtime: Runtime, booking_id: Any) -> str:
    async with runtime.db.session() as session:
        query = select(Booking.room_name).where(Booking.id == booking_id)
        return str((await session.execute(query)).scalar_one())


async def test_webhook_signature_and_replays(
    client: httpx.AsyncClient, runtime: Runtime, livekit_server: LiveKitServer
) -> None:
    key, secret = livekit_server.key, livekit_server.secret
    seeded = await seed_booking(runtime, [Purpose.RECORDING_AUDIO])
    room = await room_of(runtime, seeded.booking_id)
    event = joined(room, seeded.people[1])
    body, headers = signed(event, key, secret)
    # livekit-api's own receiver accepts what we sign, so the shape is LiveKit's.
    receiver = lk.WebhookReceiver(lk.TokenVerifier(key, secret))
    assert receiver.receive(body.decode(), headers["Authorization"]).id == event.id

    first = await client.post("/v1/livekit/webhook", content=body, headers=headers)
    assert first.json() == {"status": "ok", "id": event.id}
    again = await client.post("/v1/livekit/webhook", content=body, headers=headers)
    assert again.json() == {"status": "duplicate", "id": event.id}

    tampered = body.replace(str(seeded.people[1].id).encode(), str(seeded.people[0].id).encode())
    refused = await client.post("/v1/livekit/webhook", content=tampered, headers=headers)
    assert refused.status_code == 401
    assert refused.json()["code"] == "unauthenticated"
    _, forged = signed(joined(room, seeded.people[0]), key, "not-the-secret-" + "x" * 32)
    refused = await client.post("/v1/livekit/webhook", content=body, headers=forged)
    assert refused.status_code == 401
    unsigned = await client.post("/v1/livekit/webhook", content=body)
    assert unsigned.status_code == 401


async def test_an_egress_callgate_does_not_know_is_stopped_and_its_file_deleted(
    node: str, runtime: Runtime, egress_server: EgressStandIn, egress_dir: Path,
    clock: ManualClock,
) -> None:
    seeded = await seed_booking(runtime, [Purpose.RECORDING_AUDIO])
    room = await room_of(runtime, seeded.booking_id)
    # Someone else's egress of a track in callgate's room (or one a crashed node started and
    # never stored): nobody's consent is on record for it.
    unknown = egress_server.inject(room, "TR_unknown", "audio", str(egress_dir / "unknown"))
    outside = egress_dir.parent / "elsewhere"
    foreign = egress_server.inject(room, "TR_foreign", "audio", str(outside))
    assert egress_server.running() == {"TR_unknown", "TR_foreign"}
    clock.advance(timedelta(minutes=1, seconds=1))  # the minute's audit
    await eventually(lambda: egress_server.running() == set(), "both stopped by the audit")
    assert {e for e, _ in egress_server.stop_requests} == {unknown, foreign}
    await eventually(
        lambda: all(egress_server.egresses[e].file_results for e in (unknown, foreign)),
        "both files written",
    )
    written = [Path(f.filename) for e in (unknown, foreign)
               for f in egress_server.egresses[e].file_results]
    inside, elsewhere = written
    await eventually(lambda: not inside.exists(), "the unknown egress's file deleted")
    assert elsewhere.exists()  # a file outside the shared folder is never touched
    async with runtime.db.session() as session:
        from media.recordings import Recording

        assert (await session.scalars(select(Recording))).all() == []
