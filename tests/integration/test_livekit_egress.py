"""LiveKit mode egress control against the real LiveKit server and the Egress stand-in
(tests/standins/egress.py: Egress's Twirp API and its signed webhooks), with callgate on a real
port behind the test load balancer.

The tests with people publishing tracks are in tests/e2e/test_livekit_recording.py (they need
browsers); here: webhook signatures and replays, the audit of egresses callgate does not know,
and two nodes given the same finished egress at once.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import secrets
import uuid
from collections.abc import AsyncIterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest
from fastapi import FastAPI
from google.protobuf import json_format
from livekit import api as lk
from livekit.protocol import egress as lk_egress
from livekit.protocol import models
from livekit.protocol.webhook import WebhookEvent
from sqlalchemy import select
from structlog.testing import capture_logs

from api.app import create_app
from api.services import Services
from consent.purposes import Purpose
from core.bookings import Booking
from core.bus import BusEvent
from core.clock import ManualClock
from core.events import ConsentChanged
from core.runtime import Runtime
from core.settings import Settings
from media.egress import EgressRecord, EgressState
from media.recordings import Recording, TrackKind
from tests.standins.egress import EgressStandIn
from tests.support.consent import decide
from tests.support.consent_bookings import Person, seed_booking
from tests.support.livekit import LiveKitServer, serving
from tests.support.waiting import eventually, services_ready

pytestmark = pytest.mark.usefixtures("database_url")


@pytest.fixture
def settings_overrides(egress_settings: dict[str, Any]) -> dict[str, Any]:
    return egress_settings


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
        assert (await session.scalars(select(Recording))).all() == []


async def test_the_audit_adopts_an_egress_whose_node_died_before_storing_its_id(
    node: str, client: httpx.AsyncClient, runtime: Runtime, egress_server: EgressStandIn,
    egress_dir: Path, clock: ManualClock,
) -> None:
    """A node claimed the guest's audio track, asked LiveKit to start it and died before it
    stored the id LiveKit answered: the claim names no egress. The audit recognises the
    running egress by the claim's id in its file name and adopts it, so it is handled as the
    guest's recording (here stopped, the room being empty, and its file taken in under the
    guest's grant), not as an unknown egress whose file is deleted."""
    await eventually(lambda: egress_server.calls_to("ListEgress"), "the start's audit made")
    seeded = await seed_booking(runtime, [Purpose.RECORDING_AUDIO])
    room = await room_of(runtime, seeded.booking_id)
    guest = seeded.people[1]
    grant = (await decide(client, guest, "recording.audio", "granted"))["id"]
    claim = uuid.uuid4()
    name = f"audio-TR_guest_audio-{claim}-{{time}}"  # as the dead node named it
    egress_id = egress_server.inject(
        room, "TR_guest_audio", "audio", str(egress_dir / str(seeded.booking_id) / name)
    )
    now = runtime.clock.now()
    async with runtime.db.session() as session:  # the claim the dead node left, unnamed
        session.add(EgressRecord(
            id=claim, egress_id=None, booking_id=seeded.booking_id,
            participant_id=guest.id, room_name=room, track_sid="TR_guest_audio",
            kind=TrackKind.AUDIO, consent_entry_ids=[grant], state=EgressState.STARTING,
            started_at=now, updated_at=now,
        ))
    clock.advance(timedelta(minutes=1, seconds=1))  # the minute's audit
    await eventually(lambda: egress_server.running() == set(), "the adopted egress stopped")

    async def listed() -> list[Recording]:
        async with runtime.db.session() as session:
            return list((await session.scalars(select(Recording))).all())

    await eventually(listed, "the file taken in through egress_ended")
    [recording] = await listed()
    assert (recording.participant_id, recording.consent_entry_ids) == (guest.id, [grant])
    async with runtime.db.session() as session:
        stored = await session.get(EgressRecord, claim)
    assert stored is not None
    assert (stored.egress_id, stored.state) == (egress_id, EgressState.COMPLETE)


@pytest.mark.parametrize("backend", ["postgres"])
async def test_two_nodes_told_of_the_same_finished_egress_take_its_file_in_once(
    client: httpx.AsyncClient, runtime: Runtime, services: Services, settings: Settings,
    clock: ManualClock, livekit_server: LiveKitServer, egress_dir: Path, tmp_path: Path,
) -> None:
    seeded = await seed_booking(runtime, [Purpose.RECORDING_AUDIO])
    room = await room_of(runtime, seeded.booking_id)
    guest = seeded.people[1]
    now = clock.now()
    async with runtime.db.session() as session:  # an egress callgate asked Egress to stop
        session.add(EgressRecord(
            id=uuid.uuid4(), egress_id="EG_both", booking_id=seeded.booking_id,
            participant_id=guest.id, room_name=room, track_sid="TR_guest_audio",
            kind=TrackKind.AUDIO, consent_entry_ids=[], state=EgressState.ENDING,
            started_at=now, updated_at=now,
        ))
    plaintext = egress_dir / "guest-audio.ogg"
    plaintext.write_bytes(b"OggS" + bytes(range(256)) * 64)
    started = int(now.timestamp() * 1e9)
    info = lk_egress.EgressInfo(
        egress_id="EG_both", room_name=room, status=lk_egress.EGRESS_COMPLETE,
        started_at=started, ended_at=started + 10**9,
        file_results=[lk_egress.FileInfo(filename=str(plaintext), size=16388)],
    )
    # The same end told to both nodes at once, as when one node's audit finds the egress
    # ended while its egress_ended webhook reaches the other (two events, two ids).
    bodies = [
        signed(WebhookEvent(event="egress_ended", id=f"EV_{n}", egress_info=info),
               livekit_server.key, livekit_server.secret)
        for n in ("a", "b")
    ]
    other = create_app(settings.model_copy(update={"data_dir": tmp_path / "b"}), clock=clock)
    async with other.router.lifespan_context(other):
        await services_ready(other.state.services)
        transport = httpx.ASGITransport(app=other)
        async with httpx.AsyncClient(transport=transport, base_url="http://testserver") as second:
            with capture_logs() as logs:
                # ... and each delivered to both nodes as well (a retry the balancer sent on)
                answers = await asyncio.gather(*(
                    node.post("/v1/livekit/webhook", content=body, headers=headers)
                    for body, headers in bodies for node in (client, second)
                ))
                statuses = sorted(a.json()["status"] for a in answers)
                assert statuses == ["duplicate", "duplicate", "ok", "ok"]
                for egress in (services.egress, other.state.services.egress):
                    await egress.settled()  # both nodes done with what they were told
    async with runtime.db.session() as session:
        listed = (await session.scalars(select(Recording))).all()
        state = await session.scalar(
            select(EgressRecord.state).where(EgressRecord.egress_id == "EG_both")
        )
    assert [(r.participant_id, r.kind) for r in listed] == [(guest.id, TrackKind.AUDIO)]
    assert state is EgressState.COMPLETE
    assert not plaintext.exists()
    # Taken in once, and the other node neither failed nor found its file gone.
    assert [e for e in logs if e["event"].startswith("egress.")] == []


async def test_a_withdrawal_stops_its_egress_from_the_committing_node_without_the_bus(
    node: str, client: httpx.AsyncClient, runtime: Runtime, egress_server: EgressStandIn,
    egress_dir: Path, monkeypatch: pytest.MonkeyPatch,
) -> None:
    publish = runtime.bus.publish

    async def bus_down_for_consent(event: BusEvent) -> None:
        if isinstance(event, ConsentChanged):
            raise ConnectionError("the bus is down")
        await publish(event)

    # No node hears of any decision: only the committing path can act on one (a reconcile
    # would stop the egress too, its track not being in LiveKit's room, so none may run).
    monkeypatch.setattr(runtime.bus, "publish", bus_down_for_consent)
    await eventually(lambda: egress_server.calls_to("ListEgress"), "the start's audit made")
    seeded = await seed_booking(runtime, [Purpose.RECORDING_AUDIO])
    room = await room_of(runtime, seeded.booking_id)
    guest = seeded.people[1]
    grant = (await decide(client, guest, "recording.audio", "granted"))["id"]
    egress_id = egress_server.inject(room, "TR_guest_audio", "audio", str(egress_dir / "guest"))
    now = runtime.clock.now()
    async with runtime.db.session() as session:  # the guest's audio, being recorded
        session.add(EgressRecord(
            id=uuid.uuid4(), egress_id=egress_id, booking_id=seeded.booking_id,
            participant_id=guest.id, room_name=room, track_sid="TR_guest_audio",
            kind=TrackKind.AUDIO, consent_entry_ids=[grant], state=EgressState.ACTIVE,
            started_at=now, updated_at=now,
        ))
    await decide(client, guest, "recording.audio", "withdrawn")
    await eventually(lambda: egress_server.running() == set(), "the guest's egress stopped")
    assert [e for e, _ in egress_server.stop_requests] == [egress_id]

    async def listed() -> list[Recording]:
        async with runtime.db.session() as session:
            return list((await session.scalars(select(Recording))).all())

    await eventually(listed, "the file taken in through egress_ended")
    async with runtime.db.session() as session:
        state = await session.scalar(
            select(EgressRecord.state).where(EgressRecord.egress_id == egress_id)
        )
    assert state is EgressState.COMPLETE  # stored: stopping, then ended
    [recording] = await listed()
    assert (recording.participant_id, recording.consent_entry_ids) == (guest.id, [grant])
