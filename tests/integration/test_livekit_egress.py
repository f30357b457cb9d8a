"""LiveKit mode: signed webhooks drive Track Egress for exactly the consenting people's tracks.

The LiveKit server is the local Twirp stand-in, driven by the real `livekit-api` client, with
Egress routes that check the token's `roomRecord` grant; webhooks are signed with
livekit-api's own `AccessToken` (and checked with its `WebhookReceiver` too).
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
from google.protobuf import json_format
from google.protobuf.message import Message
from livekit import api as lk
from livekit.protocol import egress, models
from livekit.protocol import room as lk_room
from livekit.protocol.webhook import WebhookEvent
from sqlalchemy import select

from api.services import Services
from consent.purposes import Purpose
from core.accounts import Scope
from core.bookings import Booking
from core.clock import ManualClock
from core.runtime import Runtime
from media.ogg import OggOpusWriter
from tests.standins.livekit import LiveKitStandIn
from tests.support.bookings import bearer
from tests.support.consent import decide
from tests.support.consent_bookings import Person, seed_booking
from tests.support.media import encode_opus
from tests.support.waiting import eventually

pytestmark = pytest.mark.usefixtures("database_url")

LK_KEY, LK_SECRET = "APIegress", "egress-secret-" + "e" * 32


class EgressServer:
    """Egress routes on the stand-in: every started egress, and which were stopped."""

    def __init__(self, server: LiveKitStandIn) -> None:
        self.started: dict[str, egress.TrackEgressRequest] = {}
        self.stopped: list[str] = []
        record: Callable[[Any, Any], bool] = lambda claims, _r: bool(  # noqa: E731
            claims.video and claims.video.room_record
        )
        server.route("livekit.Egress", "StartTrackEgress", egress.TrackEgressRequest,
                     self._start, record)
        server.route("livekit.Egress", "StopEgress", egress.StopEgressRequest, self._stop, record)

    async def _start(self, request: Any, _claims: Any) -> Message:
        egress_id = f"EG_{secrets.token_hex(6)}"
        self.started[egress_id] = request
        return egress.EgressInfo(
            egress_id=egress_id, room_name=request.room_name, status=egress.EGRESS_STARTING
        )

    async def _stop(self, request: Any, _claims: Any) -> Message:
        self.stopped.append(request.egress_id)
        return egress.EgressInfo(egress_id=request.egress_id, status=egress.EGRESS_ENDING)

    def running(self) -> set[str]:
        """Track ids with an egress started and not stopped."""
        return {r.track_id for e, r in self.started.items() if e not in self.stopped}


@pytest.fixture
async def standin() -> AsyncIterator[LiveKitStandIn]:
    async with LiveKitStandIn(LK_KEY, LK_SECRET) as server:
        yield server


@pytest.fixture
def egress_server(standin: LiveKitStandIn) -> EgressServer:
    return EgressServer(standin)


@pytest.fixture
def egress_dir(tmp_path: Path) -> Path:
    """The folder Egress writes to and callgate takes finished files in from."""
    folder = tmp_path / "egress"
    folder.mkdir()
    return folder.resolve()


@pytest.fixture
def settings_overrides(standin: LiveKitStandIn, egress_dir: Path) -> dict[str, Any]:
    return {
        "egress_output_dir": egress_dir,
        "media_mode": "livekit",
        "livekit_url": standin.url,
        "livekit_api_key": LK_KEY,
        "livekit_api_secret": LK_SECRET,
        "livekit_retry_interval_s": 0.2,
        "livekit_timeout_s": 2,
    }


def signed(event: WebhookEvent, secret: str = LK_SECRET) -> tuple[bytes, dict[str, str]]:
    """The body and header LiveKit would send: a JWT carrying the body's SHA-256."""
    body = json_format.MessageToJson(event).encode()
    digest = base64.b64encode(hashlib.sha256(body).digest()).decode()
    token = lk.AccessToken(LK_KEY, secret).with_sha256(digest).to_jwt()
    return body, {"Authorization": token, "Content-Type": "application/webhook+json"}


def webhook(kind: str, room: str, **fields: Any) -> WebhookEvent:
    return WebhookEvent(
        event=kind, id=f"EV_{secrets.token_hex(6)}", room=models.Room(name=room), **fields
    )


def joined(room: str, person: Person) -> WebhookEvent:
    return webhook(
        "participant_joined", room, participant=models.ParticipantInfo(identity=str(person.id))
    )


def published(room: str, person: Person, sid: str, kind: int) -> WebhookEvent:
    return webhook(
        "track_published",
        room,
        participant=models.ParticipantInfo(identity=str(person.id)),
        track=models.TrackInfo(sid=sid, type=kind),
    )


async def send(client: httpx.AsyncClient, event: WebhookEvent) -> httpx.Response:
    body, headers = signed(event)
    return await client.post("/v1/livekit/webhook", content=body, headers=headers)


async def room_of(runtime: Runtime, booking_id: Any) -> str:
    async with runtime.db.session() as session:
        query = select(Booking.room_name).where(Booking.id == booking_id)
        return str((await session.execute(query)).scalar_one())


async def test_egress_follows_each_persons_consent(
    client: httpx.AsyncClient, runtime: Runtime, egress_server: EgressServer, egress_dir: Path
) -> None:
    seeded = await seed_booking(runtime, [Purpose.RECORDING_AUDIO, Purpose.RECORDING_VIDEO])
    host, guest = seeded.people
    room = await room_of(runtime, seeded.booking_id)
    await decide(client, host, Purpose.RECORDING_AUDIO, "granted")
    await decide(client, host, Purpose.RECORDING_VIDEO, "granted")
    await decide(client, guest, Purpose.RECORDING_AUDIO, "granted")  # audio only
    for event in (
        joined(room, host),
        joined(room, guest),
        published(room, host, "TR_host_a", models.TrackType.AUDIO),
        published(room, host, "TR_host_v", models.TrackType.VIDEO),
        published(room, guest, "TR_guest_a", models.TrackType.AUDIO),
        published(room, guest, "TR_guest_v", models.TrackType.VIDEO),
    ):
        response = await send(client, event)
        assert response.status_code == 200
        assert response.json()["status"] == "ok"
    assert egress_server.started == {}  # nobody recorded before the host starts

    start = f"/v1/bookings/{seeded.booking_id}/recording/start"
    assert (await client.post(start, headers=host.headers)).status_code == 200
    await eventually(
        lambda: egress_server.running() == {"TR_host_a", "TR_host_v", "TR_guest_a"},
        "egress for the three consented tracks",
    )
    for request in egress_server.started.values():
        assert request.room_name == room
        assert request.file.filepath.startswith(f"{egress_dir}/{seeded.booking_id}/")

    await decide(client, guest, Purpose.RECORDING_AUDIO, "withdrawn")
    await eventually(
        lambda: egress_server.running() == {"TR_host_a", "TR_host_v"}, "guest's egress stopped"
    )
    await decide(client, guest, Purpose.RECORDING_VIDEO, "granted")
    await eventually(
        lambda: egress_server.running() == {"TR_host_a", "TR_host_v", "TR_guest_v"},
        "guest's video egress after the grant",
    )
    left = webhook(
        "participant_left", room, participant=models.ParticipantInfo(identity=str(host.id))
    )
    assert (await send(client, left)).status_code == 200
    assert egress_server.running() == {"TR_guest_v"}

    stop = f"/v1/bookings/{seeded.booking_id}/recording/stop"
    assert (await client.post(stop, headers=host.headers)).status_code == 200
    await eventually(lambda: egress_server.running() == set(), "every egress stopped")
    assert not any(r.track_id == "TR_guest_a" and e not in egress_server.stopped
                   for e, r in egress_server.started.items())


async def test_webhook_signature_and_replays(
    client: httpx.AsyncClient, runtime: Runtime, egress_server: EgressServer
) -> None:
    seeded = await seed_booking(runtime, [Purpose.RECORDING_AUDIO])
    room = await room_of(runtime, seeded.booking_id)
    event = joined(room, seeded.people[1])
    body, headers = signed(event)
    # livekit-api's own receiver accepts what we sign, so the shape is LiveKit's.
    receiver = lk.WebhookReceiver(lk.TokenVerifier(LK_KEY, LK_SECRET))
    assert receiver.receive(body.decode(), headers["Authorization"]).id == event.id

    first = await client.post("/v1/livekit/webhook", content=body, headers=headers)
    assert first.json() == {"status": "ok", "id": event.id}
    again = await client.post("/v1/livekit/webhook", content=body, headers=headers)
    assert again.json() == {"status": "duplicate", "id": event.id}

    tampered = body.replace(str(seeded.people[1].id).encode(), str(seeded.people[0].id).encode())
    refused = await client.post("/v1/livekit/webhook", content=tampered, headers=headers)
    assert refused.status_code == 401
    assert refused.json()["code"] == "unauthenticated"
    _, forged = signed(joined(room, seeded.people[0]), secret="not-the-secret-" + "x" * 32)
    refused = await client.post("/v1/livekit/webhook", content=body, headers=forged)
    assert refused.status_code == 401
    unsigned = await client.post("/v1/livekit/webhook", content=body)
    assert unsigned.status_code == 401


async def test_egress_state_follows_egress_webhooks(
    client: httpx.AsyncClient, runtime: Runtime, services: Services, egress_server: EgressServer
) -> None:
    seeded = await seed_booking(runtime, [Purpose.RECORDING_AUDIO])
    host, guest = seeded.people
    room = await room_of(runtime, seeded.booking_id)
    await decide(client, guest, Purpose.RECORDING_AUDIO, "granted")
    await client.post(f"/v1/bookings/{seeded.booking_id}/recording/start", headers=host.headers)
    await send(client, joined(room, guest))
    await send(client, published(room, guest, "TR_a", models.TrackType.AUDIO))
    await eventually(lambda: egress_server.running() == {"TR_a"}, "egress started")
    [egress_id] = egress_server.started
    live = services.egress.rooms[room]
    assert live.egress["TR_a"].state == "starting"
    info = egress.EgressInfo(egress_id=egress_id, room_name=room, status=egress.EGRESS_ACTIVE)
    await send(client, webhook("egress_updated", room, egress_info=info))
    assert live.egress["TR_a"].state == "active"
    info.status = egress.EGRESS_FAILED
    await send(client, webhook("egress_ended", room, egress_info=info))
    assert live.finished[-1].egress_id == egress_id
    assert live.finished[-1].state == "failed"
    # Consent still allows the track, so a fresh egress takes the failed one's place.
    assert len(egress_server.started) == 2
    assert live.egress["TR_a"].egress_id != egress_id
    assert egress_server.running() == {"TR_a"}


async def test_people_are_removed_when_the_window_closes(
    client: httpx.AsyncClient,
    runtime: Runtime,
    standin: LiveKitStandIn,
    egress_server: EgressServer,
    clock: ManualClock,
) -> None:
    removed: list[tuple[str, str]] = []

    async def remove(request: Any, _claims: Any) -> Message:
        removed.append((request.room, request.identity))
        return lk_room.RemoveParticipantResponse()

    standin.route(
        "livekit.RoomService", "RemoveParticipant", lk_room.RoomParticipantIdentity, remove,
        lambda claims, request: bool(
            claims.video and claims.video.room_admin and claims.video.room == request.room
        ),
    )
    seeded = await seed_booking(runtime, [Purpose.RECORDING_AUDIO])
    host, guest = seeded.people
    room = await room_of(runtime, seeded.booking_id)
    await decide(client, guest, Purpose.RECORDING_AUDIO, "granted")
    await client.post(f"/v1/bookings/{seeded.booking_id}/recording/start", headers=host.headers)
    for event in (joined(room, host), joined(room, guest),
                  published(room, guest, "TR_g", models.TrackType.AUDIO)):
        await send(client, event)
    await eventually(lambda: egress_server.running() == {"TR_g"}, "guest recorded")
    await asyncio.sleep(1.5)
    assert removed == []  # the window is still open
    clock.advance(timedelta(hours=2))
    await eventually(lambda: len(removed) == 2, "both removed")
    assert sorted(removed) == sorted([(room, str(host.id)), (room, str(guest.id))])
    await eventually(lambda: egress_server.running() == set(), "egress stopped")


def egress_file(request: egress.TrackEgressRequest) -> Path:
    """Write the file Egress would have written for `request` (an Ogg Opus track)."""
    path = Path(request.file.filepath.replace("{time}", "20261122T060000") + ".ogg")
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("wb") as out:
        writer = OggOpusWriter(out)
        for i, packet in enumerate(encode_opus(50)):
            writer.write(packet, i * 960)
        writer.close()
    return path


def ended(room: str, egress_id: str, path: Path) -> WebhookEvent:
    info = egress.EgressInfo(
        egress_id=egress_id, room_name=room, status=egress.EGRESS_COMPLETE,
        file_results=[egress.FileInfo(
            filename=str(path), started_at=1_795_300_000_000_000_000,
            ended_at=1_795_300_001_000_000_000, size=path.stat().st_size,
        )],
    )
    return webhook("egress_ended", room, egress_info=info)


async def test_finished_egress_files_are_encrypted_listed_and_the_plaintext_removed(
    client: httpx.AsyncClient, runtime: Runtime, egress_server: EgressServer, egress_dir: Path,
    api_keys: dict[Scope, str],
) -> None:
    seeded = await seed_booking(runtime, [Purpose.RECORDING_AUDIO])
    host, guest = seeded.people
    room = await room_of(runtime, seeded.booking_id)
    grant = (await decide(client, guest, Purpose.RECORDING_AUDIO, "granted"))["id"]
    await client.post(f"/v1/bookings/{seeded.booking_id}/recording/start", headers=host.headers)
    await send(client, joined(room, guest))
    await send(client, published(room, guest, "TR_a", models.TrackType.AUDIO))
    await eventually(lambda: egress_server.running() == {"TR_a"}, "egress started")
    [(egress_id, request)] = egress_server.started.items()
    path = egress_file(request)
    plaintext = path.read_bytes()
    # The guest withdraws: callgate stops the egress, and Egress then reports the file.
    await decide(client, guest, Purpose.RECORDING_AUDIO, "withdrawn")
    await eventually(lambda: egress_server.running() == set(), "egress stopped")
    assert (await send(client, ended(room, egress_id, path))).status_code == 200

    listing = f"/v1/bookings/{seeded.booking_id}/recordings"
    rows: list[dict[str, Any]] = []

    async def listed() -> bool:
        rows[:] = (await client.get(listing, headers=host.headers)).json()["recordings"]
        return bool(rows)

    await eventually(listed, "the egress file listed as a recording")
    [row] = rows
    assert row["participant_id"] == str(guest.id)
    assert row["kind"] == "audio"
    assert row["consent_entry_ids"] == [grant]
    assert row["size"] == len(plaintext)
    assert row["sha256"] == hashlib.sha256(plaintext).hexdigest()
    assert not path.exists()  # no plaintext left in the shared folder
    stored = [p for p in (runtime.settings.data_dir / "recordings").rglob("*") if p.is_file()]
    assert stored
    assert all(plaintext[:4] not in p.read_bytes() for p in stored)  # no "OggS" anywhere
    download = await client.get(f"{listing}/{row['id']}", headers=guest.headers)
    assert download.status_code == 200
    assert download.content == plaintext

    # A webhook naming a file outside the shared folder is not read, listed or deleted.
    outside = egress_dir.parent / "elsewhere.ogg"
    outside.write_bytes(plaintext)
    await send(client, published(room, guest, "TR_b", models.TrackType.AUDIO))
    await decide(client, guest, Purpose.RECORDING_AUDIO, "granted")
    await eventually(lambda: egress_server.running() == {"TR_a", "TR_b"}, "new egresses")
    second = next(e for e, r in egress_server.started.items() if r.track_id == "TR_b")
    await client.post(f"/v1/bookings/{seeded.booking_id}/recording/stop", headers=host.headers)
    await eventually(lambda: egress_server.running() == set(), "egress stopped again")
    assert (await send(client, ended(room, second, outside))).status_code == 200
    # A proper file reported after it is taken in; by then the refused one was handled.
    third, again = next(
        (e, r) for e, r in egress_server.started.items() if r.track_id == "TR_a" and e != egress_id
    )
    assert (await send(client, ended(room, third, egress_file(again)))).status_code == 200
    admin = bearer(api_keys[Scope.ADMIN])

    async def both_listed() -> bool:
        rows[:] = (await client.get(listing, headers=admin)).json()["recordings"]
        return len(rows) > 1

    await eventually(both_listed, "the second egress file listed")
    assert len(rows) == 2
    assert outside.read_bytes() == plaintext
