"""Outgoing webhooks against a real receiver that verifies with the `standardwebhooks` package:
endpoints through the API, signed events in order per booking, retries through a receiver that
is down, failing or slow, Retry-After, disabling after days of failure, replay, rotation."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from datetime import datetime, timedelta
from typing import Any

import httpx
import pytest
from pydantic import SecretStr
from sqlalchemy import select, update
from structlog.testing import capture_logs

from core.accounts import Scope
from core.clock import ManualClock
from core.outbox import OutboxEvent
from core.runtime import Runtime
from core.settings import Settings
from core.webhooks import Endpoint
from tests.support import databases as support
from tests.support.bookings import bearer, book, operator_key
from tests.support.nodes import node
from tests.support.privacy import purged_at
from tests.support.waiting import eventually
from tests.support.webhooks import Mode, Received, Receiver, first_seen

BOOKING_EVENTS = ["booking.created", "booking.rescheduled", "booking.cancelled"]


@pytest.fixture
def settings_overrides() -> dict[str, Any]:
    return {
        "webhook_allow_private_targets": True, "webhook_timeout_s": 1,
        "webhook_poll_interval_s": 0.05, "lifecycle_sweep_interval_s": 0,
    }


@pytest.fixture
async def receiver() -> AsyncIterator[Receiver]:
    server = Receiver()
    await server.start()
    yield server
    await server.stop()


def hdr(keys: dict[Scope, str]) -> dict[str, str]:
    return bearer(keys[Scope.SCHEDULER])


async def register(
    client: httpx.AsyncClient, keys: dict[Scope, str], receiver: Receiver,
    types: list[str] | None = None,
) -> dict[str, Any]:
    response = await client.post(
        "/v1/webhooks/endpoints", headers=hdr(keys),
        json={"url": receiver.url, "description": "platform", "event_types": types},
    )
    assert response.status_code == 201, response.text
    endpoint: dict[str, Any] = response.json()
    assert endpoint["secret"].startswith("whsec_")
    receiver.secrets.append(endpoint["secret"])
    return endpoint


async def deliveries(
    client: httpx.AsyncClient, keys: dict[Scope, str], endpoint_id: str, **params: Any
) -> list[dict[str, Any]]:
    response = await client.get(
        f"/v1/webhooks/endpoints/{endpoint_id}/deliveries", headers=hdr(keys), params=params
    )
    assert response.status_code == 200, response.text
    items: list[dict[str, Any]] = response.json()["items"]
    return items


async def book_move_cancel(
    client: httpx.AsyncClient, keys: dict[Scope, str], clock: ManualClock
) -> str:
    booked = await book(client, keys[Scope.SCHEDULER], clock.now() + timedelta(days=2))
    later = clock.now() + timedelta(days=3)
    moved = await client.patch(f"/v1/bookings/{booked['id']}", headers=hdr(keys), json={
        "starts_at": later.isoformat(), "ends_at": (later + timedelta(hours=1)).isoformat(),
    })
    assert moved.status_code == 200
    assert (await client.delete(f"/v1/bookings/{booked['id']}", headers=hdr(keys))).is_success
    return str(booked["id"])


async def test_events_arrive_signed_with_ids_only_and_in_order(
    client: httpx.AsyncClient, api_keys: dict[Scope, str], clock: ManualClock,
    receiver: Receiver,
) -> None:
    await register(client, api_keys, receiver)
    booking_id = await book_move_cancel(client, api_keys, clock)

    async def three() -> bool:
        return len(receiver.received) >= 3

    await eventually(three, "three")
    assert [r.type for r in receiver.received] == BOOKING_EVENTS
    assert receiver.rejected == 0
    assert {r.data["booking_id"] for r in receiver.received} == {booking_id}
    created = receiver.received[0].data
    assert [p["external_id"] for p in created["participants"]] == ["host-1", "client-1"]
    text = repr([r.data for r in receiver.received])
    assert "Ada Host" not in text
    assert "Mentoring" not in text
    assert "Quarterly" not in text


async def test_nothing_is_lost_through_a_receiver_down_failing_and_slow(
    client: httpx.AsyncClient, api_keys: dict[Scope, str], clock: ManualClock,
    receiver: Receiver,
) -> None:
    endpoint = await register(client, api_keys, receiver)
    await receiver.stop()  # down: connections refused
    bookings = [await book_move_cancel(client, api_keys, clock) for _ in range(3)]

    async def tried(count: int) -> bool:
        log = await deliveries(client, api_keys, endpoint["id"])
        return sum(d["attempts"] for d in log) >= count

    async def tried_once_more() -> bool:
        clock.advance(timedelta(minutes=10))  # through the backoff (5 days would disable)
        return await tried(before + 1)

    before = 0
    await eventually(tried_once_more, "tried_once_more")

    async def failing() -> bool:  # an attempt counts when claimed, its failure once it ends
        shown = await client.get(f"/v1/webhooks/endpoints/{endpoint['id']}", headers=hdr(api_keys))
        return shown.json()["failing_since"] is not None

    await eventually(failing, "the endpoint shown as failing")
    log = await deliveries(client, api_keys, endpoint["id"])
    assert {d["status"] for d in log} == {"pending"}

    await receiver.start()
    for mode in (Mode.FAIL, Mode.SLOW):
        receiver.mode = mode
        before = sum(d["attempts"] for d in await deliveries(client, api_keys, endpoint["id"]))
        await eventually(tried_once_more, "tried_once_more")
    receiver.mode = Mode.OK

    async def all_delivered() -> bool:
        clock.advance(timedelta(hours=1))
        log = await deliveries(client, api_keys, endpoint["id"])
        return len(log) == 9 and all(d["status"] == "delivered" for d in log)

    await eventually(all_delivered, "all_delivered", 60)
    got = first_seen(receiver.received)
    assert len(got) == 9
    assert receiver.rejected == 0
    for booking_id in bookings:  # in order per booking, whatever the interleaving
        assert [r.type for r in got if r.data["booking_id"] == booking_id] == BOOKING_EVENTS
    log = await deliveries(client, api_keys, endpoint["id"])
    by_id: dict[str, Received] = {}
    for item in receiver.received:  # a duplicate is the same message under the same id
        assert by_id.setdefault(item.id, item) == item
    assert {d["event_id"] for d in log} == {r.id for r in got}
    assert all(d["attempts"] >= 1 for d in log)


async def test_retry_after_is_honoured(
    client: httpx.AsyncClient, api_keys: dict[Scope, str], clock: ManualClock,
    receiver: Receiver,
) -> None:
    endpoint = await register(client, api_keys, receiver)
    receiver.mode = Mode.BUSY
    receiver.retry_after = "7200"
    await book(client, api_keys[Scope.SCHEDULER], clock.now() + timedelta(days=1))

    async def tried() -> bool:
        log = await deliveries(client, api_keys, endpoint["id"])
        return any(d["last_status_code"] for d in log)

    await eventually(tried, "tried")
    (delivery,) = await deliveries(client, api_keys, endpoint["id"])
    assert delivery["last_status_code"] == 429
    wait = datetime.fromisoformat(delivery["next_attempt_at"]) - clock.now()
    assert wait >= timedelta(hours=2)


async def test_an_endpoint_failing_for_five_days_is_disabled_and_can_resume(
    client: httpx.AsyncClient, api_keys: dict[Scope, str], clock: ManualClock,
    receiver: Receiver,
) -> None:
    endpoint = await register(client, api_keys, receiver)
    receiver.mode = Mode.FAIL
    await book(client, api_keys[Scope.SCHEDULER], clock.now() + timedelta(days=9))
    path = f"/v1/webhooks/endpoints/{endpoint['id']}"

    async def disabled() -> bool:
        clock.advance(timedelta(hours=9))
        shown = (await client.get(path, headers=hdr(api_keys))).json()
        return shown["enabled"] is False

    await eventually(disabled, "disabled", 60)
    shown = (await client.get(path, headers=hdr(api_keys))).json()
    assert "failed" in shown["disabled_reason"]
    (delivery,) = await deliveries(client, api_keys, endpoint["id"])
    assert delivery["status"] == "pending"  # kept, not dropped
    attempts = receiver.attempts

    receiver.mode = Mode.OK
    again = await client.patch(path, headers=hdr(api_keys), json={"enabled": True})
    assert again.json()["enabled"] is True

    async def delivered() -> bool:
        return len(receiver.received) == 1

    # at once: not at the end of the back-off (up to 9.6 h) its last failure set
    await eventually(delivered, "delivered as soon as the endpoint is enabled again")
    assert receiver.attempts > attempts


async def test_replay_sends_the_same_message_again(
    client: httpx.AsyncClient, api_keys: dict[Scope, str], clock: ManualClock,
    receiver: Receiver,
) -> None:
    endpoint = await register(client, api_keys, receiver, types=["booking.created"])
    await book_move_cancel(client, api_keys, clock)

    async def one() -> bool:
        return len(receiver.received) == 1

    await eventually(one, "one")
    (delivery,) = await deliveries(client, api_keys, endpoint["id"])  # only the wanted type
    replay = await client.post(
        f"/v1/webhooks/endpoints/{endpoint['id']}/deliveries/{delivery['id']}/replay",
        headers=hdr(api_keys),
    )
    assert replay.status_code == 202

    async def two() -> bool:
        return len(receiver.received) == 2

    await eventually(two, "two")
    assert receiver.ids == [delivery["event_id"]] * 2


async def test_a_rotated_secret_overlaps_with_the_old_one_for_the_grace_period(
    client: httpx.AsyncClient, api_keys: dict[Scope, str], clock: ManualClock,
    receiver: Receiver,
) -> None:
    endpoint = await register(client, api_keys, receiver)
    old = receiver.secrets[0]
    rotated = await client.post(
        f"/v1/webhooks/endpoints/{endpoint['id']}/rotate", headers=hdr(api_keys)
    )
    assert rotated.status_code == 200
    new = rotated.json()["secret"]
    assert new != old
    receiver.secrets = [old]  # a receiver not updated yet still verifies
    await book(client, api_keys[Scope.SCHEDULER], clock.now() + timedelta(days=3))

    async def got(count: int) -> bool:
        return len(receiver.received) == count

    async def first() -> bool:
        return await got(1)

    await eventually(first, "first")
    assert receiver.received[0].signatures == 2
    clock.advance(timedelta(hours=25))  # the grace is over: only the new secret signs
    receiver.secrets = [new]
    await book(client, api_keys[Scope.SCHEDULER], clock.now() + timedelta(days=3))

    async def second() -> bool:
        return await got(2)

    await eventually(second, "second")
    assert receiver.received[1].signatures == 1


async def test_endpoints_through_the_api(
    client: httpx.AsyncClient, api_keys: dict[Scope, str], receiver: Receiver,
) -> None:
    endpoint = await register(client, api_keys, receiver, types=["booking.created"])
    path = f"/v1/webhooks/endpoints/{endpoint['id']}"
    listed = (await client.get("/v1/webhooks/endpoints", headers=hdr(api_keys))).json()
    assert [e["id"] for e in listed] == [endpoint["id"]]
    assert "secret" not in listed[0]
    changed = await client.patch(path, headers=hdr(api_keys), json={
        "event_types": ["summary.ready", "participant.no_show"]
    })
    assert changed.json()["event_types"] == ["participant.no_show", "summary.ready"]
    bad = await client.patch(path, headers=hdr(api_keys), json={"event_types": ["nope"]})
    assert bad.status_code == 422
    assert bad.headers["content-type"].startswith("application/problem+json")
    off = await client.patch(path, headers=hdr(api_keys), json={"enabled": False})
    assert off.json()["enabled"] is False
    assert off.json()["disabled_reason"] == "disabled through the API"
    admin = await client.get("/v1/webhooks/endpoints", headers=bearer(api_keys[Scope.ADMIN]))
    assert admin.status_code == 403
    assert (await client.delete(path, headers=hdr(api_keys))).status_code == 204
    assert (await client.get(path, headers=hdr(api_keys))).status_code == 404
    replay = await client.post(
        f"{path}/deliveries/00000000-0000-4000-8000-000000000000/replay", headers=hdr(api_keys)
    )
    assert replay.status_code == 404


@pytest.mark.parametrize(
    ("settings_overrides", "url"),
    [
        ({}, "http://hooks.example.com/in"),
        ({}, "https://127.0.0.1/in"),
        ({}, "https://10.1.2.3/in"),
        ({}, "ftp://hooks.example.com/in"),
        ({}, "https://user:pw@hooks.example.com/in"),
    ],
)
async def test_unsafe_targets_are_refused(
    client: httpx.AsyncClient, api_keys: dict[Scope, str], url: str,
) -> None:
    response = await client.post("/v1/webhooks/endpoints", headers=hdr(api_keys), json={
        "url": url
    })
    assert response.status_code == 422, response.text
    assert response.json()["errors"][0]["loc"] == ["body", "url"]
    listed = await client.get("/v1/webhooks/endpoints", headers=hdr(api_keys))
    assert listed.json() == []


async def test_openapi_describes_every_event(client: httpx.AsyncClient) -> None:
    spec = (await client.get("/openapi.json")).json()
    assert {
        "booking.created", "booking.rescheduled", "booking.cancelled", "booking.started",
        "booking.ended", "participant.joined", "participant.left", "participant.no_show",
        "consent.changed", "recording.started", "recording.stopped", "recording.ready",
        "transcript.ready", "summary.ready", "agenda.ready", "link.revoked", "subject.erased",
    } <= set(spec["webhooks"])
    created = spec["webhooks"]["booking.created"]["post"]["requestBody"]["content"]
    assert "application/json" in created


async def stored_secrets(runtime: Runtime, endpoint_id: str) -> tuple[str, str | None]:
    """The endpoint's secret columns as the database holds them (what a dump would show)."""
    query = select(Endpoint.secret, Endpoint.previous_secret).where(
        Endpoint.id == uuid.UUID(endpoint_id)
    )
    async with runtime.db.session() as session:
        row = (await session.execute(query)).one()
    return row.secret, row.previous_secret


async def test_signing_secrets_are_stored_sealed_never_in_the_clear(
    client: httpx.AsyncClient, api_keys: dict[Scope, str], clock: ManualClock,
    receiver: Receiver, runtime: Runtime,
) -> None:
    endpoint = await register(client, api_keys, receiver)
    first = endpoint["secret"]
    stored, _ = await stored_secrets(runtime, endpoint["id"])
    assert first.removeprefix("whsec_") not in stored
    rotated = await client.post(
        f"/v1/webhooks/endpoints/{endpoint['id']}/rotate", headers=hdr(api_keys)
    )
    second = rotated.json()["secret"]
    stored, previous = await stored_secrets(runtime, endpoint["id"])
    dump = f"{stored} {previous}"
    for shown in (first, second):
        assert shown.removeprefix("whsec_") not in dump
    receiver.secrets = [second]  # both sign in the grace period; each verifies on its own
    await book(client, api_keys[Scope.SCHEDULER], clock.now() + timedelta(days=3))

    async def delivered() -> bool:
        return len(receiver.received) == 1

    await eventually(delivered, "an event signed with the sealed secrets")
    assert receiver.received[0].signatures == 2


async def test_a_secret_an_older_version_kept_in_plaintext_is_sealed_at_start(
    client: httpx.AsyncClient, api_keys: dict[Scope, str], clock: ManualClock,
    receiver: Receiver, runtime: Runtime, settings: Settings,
) -> None:
    endpoint = await register(client, api_keys, receiver)
    plain = endpoint["secret"]
    async with runtime.db.session() as session:  # the row as a version before sealing left it
        await session.execute(
            update(Endpoint).where(Endpoint.id == uuid.UUID(endpoint["id"])).values(secret=plain)
        )
    async with node(settings, clock) as again:

        async def sealed() -> bool:
            stored, _ = await stored_secrets(runtime, endpoint["id"])
            return plain.removeprefix("whsec_") not in stored

        await eventually(sealed, "the restarted node sealed the plaintext secret")
        await book(again, api_keys[Scope.SCHEDULER], clock.now() + timedelta(days=3))

        async def delivered() -> bool:
            return len(receiver.received) >= 1

        await eventually(delivered, "an event signed with the same secret as before")
    assert receiver.received[0].signatures == 1  # verified with the plaintext it was given


ROTATED = {  # a node that has the new master key and the one before it
    "master_key": SecretStr(support.NEW_MASTER),
    "previous_master_keys": [SecretStr(support.MASTER)],
}


async def left_uncharged(
    client: httpx.AsyncClient, api_keys: dict[Scope, str], clock: ManualClock,
    endpoint: dict[str, Any],
) -> None:
    """Book on the old-key node (this test's app, the only node running): it reports the
    secret it cannot open and leaves the event's delivery pending, with no attempt charged
    and the receiver not counted as failing."""
    with capture_logs() as logs:
        await book(client, api_keys[Scope.SCHEDULER], clock.now() + timedelta(days=2))

        def reported() -> bool:
            return any(entry["event"] == "webhooks.secret_unreadable"
                       and entry["endpoint_id"] == endpoint["id"] for entry in list(logs))

        await eventually(reported, "the old-key node reports the secret it cannot open")
    [waiting] = await deliveries(client, api_keys, endpoint["id"])
    assert (waiting["status"], waiting["attempts"]) == ("pending", 0)
    shown = await client.get(f"/v1/webhooks/endpoints/{endpoint['id']}", headers=hdr(api_keys))
    assert shown.json()["failing_since"] is None


async def delivered_by_keyed_node(
    client: httpx.AsyncClient, api_keys: dict[Scope, str], clock: ManualClock,
    settings: Settings, endpoint: dict[str, Any],
) -> None:
    """Start a node with both master keys: it delivers the waiting event, in one attempt."""
    async with node(settings, clock, **ROTATED):

        async def delivered() -> bool:
            [sent] = await deliveries(client, api_keys, endpoint["id"])
            return bool(sent["status"] == "delivered")

        await eventually(delivered, "the node with both keys delivers the event")
    [sent] = await deliveries(client, api_keys, endpoint["id"])
    assert sent["attempts"] == 1


async def test_a_node_without_the_master_key_leaves_the_delivery_to_a_node_that_has_it(
    client: httpx.AsyncClient, api_keys: dict[Scope, str], clock: ManualClock,
    receiver: Receiver, settings: Settings,
) -> None:
    """Mid-rotation, one node still runs with the old master key only. It cannot sign for an
    endpoint sealed under the new key: it says so in its log, and neither takes the delivery
    nor charges it an attempt (which would push it back by minutes and count the receiver as
    failing); the node that has the key delivers it."""
    async with node(settings, clock, **ROTATED) as keyed:
        endpoint = await register(keyed, api_keys, receiver)  # sealed under the new key
    await left_uncharged(client, api_keys, clock, endpoint)
    await delivered_by_keyed_node(client, api_keys, clock, settings, endpoint)
    assert [r.signatures for r in receiver.received] == [1]


async def test_a_node_that_cannot_open_the_secret_in_its_grace_leaves_the_delivery_too(
    client: httpx.AsyncClient, api_keys: dict[Scope, str], clock: ManualClock,
    receiver: Receiver, settings: Settings,
) -> None:
    """The previous secret signs next to the new one for the grace period, for receivers
    still verifying with it. A node that can open the new secret but not the previous one
    (sealed under a master key it lacks) cannot sign as the receiver expects: it leaves the
    delivery, uncharged, to a node that can open both."""
    async with node(settings, clock, **ROTATED) as keyed:
        endpoint = await register(keyed, api_keys, receiver)  # sealed under the new key
    # Rotated on the old-key node: the new secret is sealed under the old key, the previous
    # one stays sealed under the new key. The receiver keeps verifying with the previous one.
    changed = await client.post(
        f"/v1/webhooks/endpoints/{endpoint['id']}/rotate", headers=hdr(api_keys)
    )
    assert changed.status_code == 200, changed.text
    await left_uncharged(client, api_keys, clock, endpoint)
    assert receiver.received == []
    assert receiver.rejected == 0  # nothing was sent that it could not verify
    await delivered_by_keyed_node(client, api_keys, clock, settings, endpoint)
    assert [r.signatures for r in receiver.received] == [2]  # verified with the previous one


@pytest.mark.parametrize("settings_overrides", [{
    "webhook_allow_private_targets": True, "webhook_timeout_s": 1,
    "webhook_poll_interval_s": 0.05, "lifecycle_sweep_interval_s": 0,
    "retention_interval_s": 1,  # the server's own purge, every second of real time
}])
async def test_the_webhook_log_is_purged_after_its_period_but_pending_deliveries_stay(
    client: httpx.AsyncClient, api_keys: dict[Scope, str], clock: ManualClock,
    receiver: Receiver, runtime: Runtime,
) -> None:
    down = Receiver(mode=Mode.FAIL)
    await down.start()
    try:
        sent = await register(client, api_keys, receiver)
        stuck = await register(client, api_keys, down, types=["booking.cancelled"])
        booking_id = await book_move_cancel(client, api_keys, clock)

        async def all_sent() -> bool:
            return len(receiver.received) == 3 and down.attempts >= 1

        await eventually(all_sent, "three events delivered, the cancellation failing on")
        (pending,) = await deliveries(client, api_keys, stuck["id"])
        assert pending["status"] == "pending"
        old = await deliveries(client, api_keys, sent["id"])
        assert [d["status"] for d in old] == ["delivered"] * 3

        # The organization keeps its webhook log 40 days, not the deployment's 30.
        changed = await client.patch("/v1/operator/orgs/default", headers=await operator_key(
            runtime), json={"settings": {"retention_days": {"webhook_log": 40}}})
        assert changed.status_code == 200, changed.text
        admin = bearer(api_keys[Scope.ADMIN])
        clock.advance(timedelta(days=31))
        await purged_at(client, admin, clock.now())
        assert await deliveries(client, api_keys, sent["id"]) == old
        clock.advance(timedelta(days=10))
        await purged_at(client, admin, clock.now())
        assert await deliveries(client, api_keys, sent["id"]) == []
        replay = await client.post(
            f"/v1/webhooks/endpoints/{sent['id']}/deliveries/{old[0]['id']}/replay",
            headers=hdr(api_keys),
        )
        assert replay.status_code == 404
        (kept,) = await deliveries(client, api_keys, stuck["id"])
        assert (kept["id"], kept["status"]) == (pending["id"], "pending")
        query = select(OutboxEvent.type).where(OutboxEvent.booking_id == uuid.UUID(booking_id))
        async with runtime.db.session() as session:
            left = list((await session.scalars(query)).all())
        assert left == ["booking.cancelled"]  # the one a pending delivery still sends
    finally:
        await down.stop()
