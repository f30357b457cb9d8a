"""The signaling WebSocket through a real uvicorn server and a real websockets client."""

from __future__ import annotations

import asyncio
import json
import uuid
from datetime import timedelta
from typing import Any

import httpx
import pytest
from websockets.asyncio.client import ClientConnection
from websockets.exceptions import ConnectionClosed, InvalidStatus

from api.services import Services
from core.bookings import Booking, BookingStatus
from core.clock import ManualClock
from core.events import (
    BookingCancelled,
    ConsentChanged,
    RecordingSwitched,
    TrackRecording,
)
from core.purposes import Decision, Purpose
from core.runtime import Runtime
from tests.support.signaling import (
    Seeded,
    open_socket,
    receive,
    receive_type,
    seed_booking,
    ticket_for,
    until_pong,
)
from tests.support.waiting import eventually

ORIGIN = "http://testserver"
GRACE_S = 3


@pytest.fixture
def settings_overrides() -> dict[str, Any]:
    return {"signaling_messages_per_s": 20, "signaling_reconnect_grace_s": GRACE_S}


@pytest.fixture
async def seeded(runtime: Runtime, clock: ManualClock) -> Seeded:
    return await seed_booking(runtime.db, runtime.keys, clock.now())


async def join(
    ws_base: str, runtime: Runtime, seeded: Seeded, index: int, origin: str = ORIGIN
) -> ClientConnection:
    ticket = ticket_for(runtime.keys, seeded, seeded.people[index], runtime.clock.now())
    return await open_socket(ws_base, seeded.room, ticket, origin)


async def closed_with(ws: ClientConnection) -> tuple[int, list[dict[str, Any]]]:
    """Read until the server closes; the close code and the messages before it."""
    seen: list[dict[str, Any]] = []
    try:
        while True:
            seen.append(await receive(ws))
    except ConnectionClosed as closed:
        return (closed.rcvd.code if closed.rcvd else -1), seen


async def test_two_people_meet_and_relay_signals(
    ws_base: str, runtime: Runtime, seeded: Seeded
) -> None:
    host = await join(ws_base, runtime, seeded, 0)
    welcome = await receive(host)
    assert welcome["type"] == "welcome"
    assert welcome["id"] == str(seeded.host.id)
    assert welcome["peers"] == []
    client = await join(ws_base, runtime, seeded, 1)
    client_welcome = await receive(client)
    assert [p["id"] for p in client_welcome["peers"]] == [str(seeded.host.id)]
    joined = await receive(host)
    assert joined == {
        "type": "peer-joined",
        "peer": {"id": str(seeded.client.id), "name": "Client 1", "role": "client"},
    }
    offer = {"description": {"type": "offer", "sdp": "v=0 ..."}}
    await host.send(json.dumps({"type": "signal", "to": str(seeded.client.id), "payload": offer}))
    relayed = await receive(client)
    assert relayed == {"type": "signal", "from": str(seeded.host.id), "payload": offer}
    await client.send(json.dumps({"type": "signal", "to": "nobody", "payload": {}}))
    assert (await receive(client))["code"] == "unknown_peer"
    await client.close()
    await host.close()


async def test_a_ticket_works_once(ws_base: str, runtime: Runtime, seeded: Seeded) -> None:
    ticket = ticket_for(runtime.keys, seeded, seeded.host, runtime.clock.now())
    first = await open_socket(ws_base, seeded.room, ticket, ORIGIN)
    assert (await receive(first))["type"] == "welcome"
    second = await open_socket(ws_base, seeded.room, ticket, ORIGIN)
    code, seen = await closed_with(second)
    assert (code, seen) == (4401, [])
    forged = await open_socket(ws_base, seeded.room, ticket[:-4] + "AAAA", ORIGIN)
    assert (await closed_with(forged))[0] == 4401
    await first.close()


async def test_a_malformed_query_is_refused_with_a_close_code_and_the_ticket_kept(
    ws_base: str, runtime: Runtime, seeded: Seeded
) -> None:
    too_long = await open_socket(ws_base, seeded.room, "t" * 513, ORIGIN)
    assert await closed_with(too_long) == (4401, [])
    ticket = ticket_for(runtime.keys, seeded, seeded.host, runtime.clock.now())
    unclear = await open_socket(ws_base, seeded.room, f"{ticket}&hold=maybe", ORIGIN)
    assert await closed_with(unclear) == (1008, [])
    admitted = await open_socket(ws_base, seeded.room, ticket, ORIGIN)  # not used up above
    assert (await receive(admitted))["type"] == "welcome"
    await admitted.close()


async def test_foreign_origin_is_refused_without_burning_the_ticket(
    ws_base: str, runtime: Runtime, seeded: Seeded
) -> None:
    ticket = ticket_for(runtime.keys, seeded, seeded.host, runtime.clock.now())
    foreign = await open_socket(ws_base, seeded.room, ticket, "https://evil.example")
    assert (await closed_with(foreign))[0] == 4403
    ours = await open_socket(ws_base, seeded.room, ticket, ORIGIN)
    assert (await receive(ours))["type"] == "welcome"
    await ours.close()


async def test_admission_refuses_wrong_room_early_and_cancelled(
    ws_base: str, runtime: Runtime, clock: ManualClock, seeded: Seeded
) -> None:
    other = await seed_booking(runtime.db, runtime.keys, clock.now())
    ticket = ticket_for(runtime.keys, other, other.host, clock.now())
    assert (await closed_with(await open_socket(ws_base, seeded.room, ticket, ORIGIN)))[0] == 4403
    later = await seed_booking(runtime.db, runtime.keys, clock.now(), starts_in=timedelta(hours=2))
    ticket = ticket_for(runtime.keys, later, later.host, clock.now())
    assert (await closed_with(await open_socket(ws_base, later.room, ticket, ORIGIN)))[0] == 4403
    async with runtime.db.session() as session:
        booking = await session.get(Booking, seeded.booking_id)
        assert booking is not None
        booking.status = BookingStatus.CANCELLED
    ticket = ticket_for(runtime.keys, seeded, seeded.host, clock.now())
    assert (await closed_with(await open_socket(ws_base, seeded.room, ticket, ORIGIN)))[0] == 4410
    with pytest.raises(InvalidStatus):  # not a room URL at all
        await open_socket(ws_base, "x/y", ticket, ORIGIN)


async def test_oversize_frame_closes_with_1009(
    ws_base: str, runtime: Runtime, seeded: Seeded
) -> None:
    ws = await join(ws_base, runtime, seeded, 0)
    await receive(ws)
    payload = {"blob": "x" * (64 * 1024)}
    await ws.send(json.dumps({"type": "signal", "to": str(seeded.client.id), "payload": payload}))
    code, _ = await closed_with(ws)
    assert code == 1009


async def test_malformed_messages_get_errors_and_the_socket_keeps_working(
    ws_base: str, runtime: Runtime, seeded: Seeded
) -> None:
    ws = await join(ws_base, runtime, seeded, 0)
    await receive(ws)
    for raw, code in [
        ("not json", "malformed"),
        ('{"type": "dance"}', "unknown_type"),
        ('{"type": "signal", "to": "x"}', "malformed"),
        ("[1, 2]", "malformed"),
    ]:
        await ws.send(raw)
        error = await receive(ws)
        assert (error["type"], error["code"]) == ("error", code), raw
    assert await until_pong(ws) == []
    await ws.close()


async def test_a_flooder_is_closed_and_other_rooms_are_unaffected(
    ws_base: str, runtime: Runtime, clock: ManualClock, seeded: Seeded
) -> None:
    other = await seed_booking(runtime.db, runtime.keys, clock.now())
    calm_host = await join(ws_base, runtime, other, 0)
    calm_client = await join(ws_base, runtime, other, 1)
    await receive(calm_host)
    await receive(calm_client)
    flooder = await join(ws_base, runtime, seeded, 0)
    await receive(flooder)
    for _ in range(200):
        await flooder.send('{"type": "ping"}')
    code, seen = await closed_with(flooder)
    assert code == 1008
    assert seen[-1]["code"] == "rate_limited"
    await calm_host.send(
        json.dumps({"type": "signal", "to": str(other.client.id), "payload": {"n": 1}})
    )
    assert (await receive_type(calm_client, "signal"))["payload"] == {"n": 1}
    await calm_host.close()
    await calm_client.close()


async def test_a_second_connection_replaces_the_first_without_a_flap(
    ws_base: str, runtime: Runtime, seeded: Seeded
) -> None:
    client = await join(ws_base, runtime, seeded, 1)
    await receive(client)
    first = await join(ws_base, runtime, seeded, 0)
    await receive(first)
    assert (await receive(client))["type"] == "peer-joined"
    second = await join(ws_base, runtime, seeded, 0)
    welcome = await receive(second)
    assert welcome["resumed"] is True
    code, seen = await closed_with(first)
    assert (code, seen) == (4409, [{"type": "bye", "reason": "replaced"}])
    assert await until_pong(client) == []
    await client.send(
        json.dumps({"type": "signal", "to": str(seeded.host.id), "payload": {"n": 2}})
    )
    assert (await receive(second))["payload"] == {"n": 2}
    await second.close()
    await client.close()


async def test_reconnect_within_grace_does_not_flap_but_a_real_leave_is_announced(
    ws_base: str, runtime: Runtime, seeded: Seeded
) -> None:
    client = await join(ws_base, runtime, seeded, 1)
    await receive(client)
    host = await join(ws_base, runtime, seeded, 0)
    await receive(host)
    assert (await receive(client))["type"] == "peer-joined"
    await host.close()  # the socket drops (network change, laptop lid)
    back = await join(ws_base, runtime, seeded, 0)
    welcome = await receive(back)
    assert welcome["resumed"] is True
    assert [p["id"] for p in welcome["peers"]] == [str(seeded.client.id)]
    await asyncio.sleep(GRACE_S + 1)  # past the grace: a flap would have been sent by now
    assert await until_pong(client) == []
    await back.close()
    left = await receive(client, wait_s=GRACE_S + 5)
    assert left == {"type": "peer-left", "id": str(seeded.host.id)}
    await client.close()


async def test_window_end_says_bye_to_everyone(
    ws_base: str, runtime: Runtime, clock: ManualClock, seeded: Seeded
) -> None:
    host = await join(ws_base, runtime, seeded, 0)
    client = await join(ws_base, runtime, seeded, 1)
    await receive(host)
    await receive(client)
    clock.advance(timedelta(hours=1, seconds=1))
    for ws in (host, client):
        code, seen = await closed_with(ws)
        assert code == 1000
        assert seen[-1] == {"type": "bye", "reason": "window_closed"}


async def test_consent_changes_reach_the_room(
    ws_base: str, runtime: Runtime, seeded: Seeded
) -> None:
    host = await join(ws_base, runtime, seeded, 0)
    client = await join(ws_base, runtime, seeded, 1)
    await receive(host)
    await receive(client)
    changed = ConsentChanged(
        booking_id=seeded.booking_id, subject_id=seeded.client.id,
        purpose=Purpose.RECORDING_VIDEO, decision=Decision.WITHDRAWN, entry_id=uuid.uuid4(),
        seq=7, at=runtime.clock.now(),
    )
    await runtime.bus.publish(changed)
    expected = {
        "type": "consent", "who": str(seeded.client.id), "purpose": "recording.video",
        "decision": "withdrawn",
    }
    assert await receive_type(host, "consent") == expected
    assert await receive_type(client, "consent") == expected
    now = runtime.clock.now()
    await runtime.bus.publish(
        BookingCancelled(
            booking_id=seeded.booking_id, status="cancelled", starts_at=now, ends_at=now,
            sequence=1,
        )
    )
    for ws in (host, client):
        code, seen = await closed_with(ws)
        assert (code, seen[-1]) == (4410, {"type": "bye", "reason": "booking_cancelled"})


async def test_welcome_carries_the_ledger_decisions_made_before_joining(
    ws_base: str, runtime: Runtime, seeded: Seeded, client: httpx.AsyncClient
) -> None:
    headers = {"X-Join-Credential": seeded.client.credential}
    overview = (await client.get("/v1/consent", headers=headers)).json()
    notice = next(p for p in overview["purposes"] if p["purpose"] == "recording.audio")["notice"]
    body = {"purpose": "recording.audio", "decision": "denied", "notice_sha256": notice["sha256"]}
    assert (await client.post("/v1/consent", json=body, headers=headers)).status_code == 201
    host = await join(ws_base, runtime, seeded, 0)
    welcome = await receive(host)
    assert welcome["consent"] == [
        {"who": str(seeded.client.id), "purpose": "recording.audio", "decision": "denied"}
    ]
    await host.close()


async def test_recorder_track_states_become_per_person_recording_messages(
    ws_base: str, runtime: Runtime, seeded: Seeded
) -> None:
    host = await join(ws_base, runtime, seeded, 0)
    welcome = await receive(host)
    assert welcome["recording"] == [{"who": str(seeded.host.id), "audio": False, "video": False}]
    who = str(seeded.host.id)
    track = TrackRecording(
        booking_id=seeded.booking_id, subject_id=seeded.host.id, kind="audio", state="recording"
    )
    await runtime.bus.publish(track)
    assert await receive_type(host, "recording") == {
        "type": "recording", "who": who, "audio": True, "video": False,
    }
    stop = RecordingSwitched(booking_id=seeded.booking_id, control="stopped")
    await runtime.bus.publish(stop)
    assert await receive_type(host, "recording") == {
        "type": "recording", "who": who, "audio": False, "video": False,
    }
    await host.close()


@pytest.mark.parametrize("settings_overrides", [{"signaling_idle_timeout_s": 1.5}])
async def test_a_silent_socket_gets_bye_idle(
    ws_base: str, runtime: Runtime, seeded: Seeded
) -> None:
    ws = await join(ws_base, runtime, seeded, 0)
    assert (await receive(ws))["type"] == "welcome"
    code, seen = await closed_with(ws)
    assert (code, seen) == (1001, [{"type": "bye", "reason": "idle"}])


async def test_all_or_nothing_recording_follows_who_is_in_the_room(
    ws_base: str, runtime: Runtime, services: Services, seeded: Seeded, client: httpx.AsyncClient
) -> None:
    """Presence from the signaling hub reaches the consent gate: under all_or_nothing the
    host's audio may be recorded only while everyone present has granted."""
    from core.purposes import Purpose, RecordingPolicy

    async with runtime.db.session() as session:
        booking = await session.get(Booking, seeded.booking_id)
        assert booking is not None
        booking.recording_policy = RecordingPolicy.ALL_OR_NOTHING
    headers = {"X-Join-Credential": seeded.host.credential}
    offered = (await client.get("/v1/consent", headers=headers)).json()
    notice = next(p for p in offered["purposes"] if p["purpose"] == "recording.audio")["notice"]
    granted = await client.post(
        "/v1/consent",
        headers=headers,
        json={"purpose": "recording.audio", "decision": "granted",
              "notice_sha256": notice["sha256"]},
    )
    assert granted.status_code == 201, granted.text
    gate = services.gate
    await gate.ensure_booking(seeded.booking_id)

    def host_audio() -> bool:
        return bool(gate.allows(seeded.booking_id, seeded.host.id, Purpose.RECORDING_AUDIO))

    host = await join(ws_base, runtime, seeded, 0)
    assert (await receive(host))["type"] == "welcome"
    await eventually(host_audio, "alone and consenting, the host may be recorded")
    guest = await join(ws_base, runtime, seeded, 1)
    assert (await receive(guest))["type"] == "welcome"
    await eventually(lambda: not host_audio(), "a present non-consenting guest stops recording")
    await guest.close()
    assert (await receive_type(host, "peer-left"))["id"] == str(seeded.client.id)
    await eventually(host_audio, "once the guest has left, recording may resume")
    await host.close()


async def test_an_erased_person_is_put_out_of_the_call(
    ws_base: str, runtime: Runtime, seeded: Seeded, client: httpx.AsyncClient,
    api_keys: dict[Any, str],
) -> None:
    from core.accounts import Scope

    host = await join(ws_base, runtime, seeded, 0)
    assert (await receive(host))["type"] == "welcome"
    guest = await join(ws_base, runtime, seeded, 1)
    assert (await receive(guest))["type"] == "welcome"
    erased = await client.post(
        "/v1/admin/subjects/ext-1/erase",
        headers={"Authorization": f"Bearer {api_keys[Scope.ADMIN]}"},
        json={"confirm": "ext-1"},
    )
    assert erased.status_code == 200, erased.text
    code, seen = await closed_with(guest)
    assert seen[-1] == {"type": "bye", "reason": "erased"}
    assert code == 4410
    assert (await receive_type(host, "peer-left"))["id"] == str(seeded.client.id)
    await host.close()


async def test_the_hosts_recording_switch_reaches_only_that_bookings_pages(
    ws_base: str, runtime: Runtime, seeded: Seeded, client: httpx.AsyncClient
) -> None:
    other = await seed_booking(runtime.db, runtime.keys, runtime.clock.now())
    page = await join(ws_base, runtime, seeded, 1)
    assert (await receive(page))["type"] == "welcome"
    elsewhere = await join(ws_base, runtime, other, 0)
    assert (await receive(elsewhere))["type"] == "welcome"
    host = {"X-Join-Credential": seeded.host.credential}
    control = f"/v1/bookings/{seeded.booking_id}/recording"

    started = await client.post(f"{control}/start", headers=host)
    assert started.status_code == 200, started.text
    assert await receive_type(page, "recording-state") == {"type": "recording-state", "on": True}
    stopped = await client.post(f"{control}/stop", headers=host)
    assert stopped.status_code == 200, stopped.text
    assert await receive_type(page, "recording-state") == {"type": "recording-state", "on": False}
    # Both switches were handled before this ping: the other booking's page saw neither.
    assert [m for m in await until_pong(elsewhere) if m["type"] == "recording-state"] == []
    await page.close()
    await elsewhere.close()
