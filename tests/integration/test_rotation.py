"""Keys rotate without downtime. A new master key: recordings made before stay readable while
the old key is listed as previous, `callgate keys rotate-master` re-wraps every data key (and
can simply be run again), after which the old key is no longer needed. A new server secret:
links made under the old one keep working and are shown the same, replays of old requests are
still recognized, and checkpoints signed with the old checkpoint key still verify."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
from datetime import timedelta
from typing import Any

import httpx
import pytest
from pydantic import SecretStr

from core.accounts import Scope
from core.clock import ManualClock
from core.runtime import Runtime
from core.settings import Settings
from tests.support import databases as support
from tests.support.bookings import bearer, booking_body, credential_of
from tests.support.consent import decide
from tests.support.nodes import node
from tests.support.privacy import add_recording, audio, book, person
from tests.support.waiting import eventually
from tests.support.webhooks import Receiver

NEW_SECRET = "rotated-secret-" + "r" * 40


async def rotate_master(settings: Settings) -> str:
    """`callgate keys rotate-master` as an operator runs it, beside the running app: in a
    thread, so this process's app keeps its event loop (and can finish a transaction that
    holds SQLite's write lock) while the command waits for it."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("CALLGATE_")}
    env.update({
        "CALLGATE_DATABASE_URL": settings.database_url,
        "CALLGATE_DATA_DIR": str(settings.data_dir),
        "CALLGATE_SECRET_KEY": support.SECRET,
        "CALLGATE_MASTER_KEY": support.NEW_MASTER,
        "CALLGATE_PREVIOUS_MASTER_KEYS": json.dumps([support.MASTER]),
    })
    program = [sys.executable, "-c", "from api.cli import main; main()", "keys",
               "rotate-master"]
    done = await asyncio.to_thread(
        subprocess.run, program, env=env, capture_output=True, text=True, timeout=120,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    return done.stdout.strip()


@pytest.fixture
def settings_overrides() -> dict[str, Any]:
    return {"webhook_allow_private_targets": True, "webhook_poll_interval_s": 0.05}


async def test_a_new_master_key_rewraps_every_data_key_and_recordings_stay_readable(
    client: httpx.AsyncClient, api_keys: dict[Scope, str], runtime: Runtime,
    settings: Settings, clock: ManualClock,
) -> None:
    receiver = Receiver()
    await receiver.start()
    try:
        await rewrap_and_read(client, api_keys, runtime, settings, clock, receiver)
    finally:
        await receiver.stop()


async def rewrap_and_read(
    client: httpx.AsyncClient, api_keys: dict[Scope, str], runtime: Runtime,
    settings: Settings, clock: ManualClock, receiver: Receiver,
) -> None:
    scheduler = bearer(api_keys[Scope.SCHEDULER])
    hook = await client.post(
        "/v1/webhooks/endpoints", headers=scheduler, json={"url": receiver.url}
    )
    assert hook.status_code == 201, hook.text
    receiver.secrets.append(hook.json()["secret"])
    booked = await book(
        client, api_keys, clock.now() + timedelta(minutes=5), person("host-rm", "Rena Host"),
        [person("client-rm", "Cato Client")], ["recording.audio"],
    )
    plain = {p.external_id: audio(300 + 100 * i) for i, p in enumerate(booked.people)}
    rows = [await add_recording(runtime, booked.booking_id, p, plain[p.external_id])
            for p in booked.people]
    admin = bearer(api_keys[Scope.ADMIN])

    async def downloads(c: httpx.AsyncClient) -> list[bytes]:
        out = []
        for row in rows:
            got = await c.get(f"/v1/bookings/{booked.booking_id}/recordings/{row.id}",
                              headers=admin)
            assert got.status_code == 200, got.text
            out.append(got.content)
        return out

    expected = [plain[p.external_id] for p in booked.people]
    new, old = SecretStr(support.NEW_MASTER), SecretStr(support.MASTER)
    async with node(settings, clock, master_key=new, previous_master_keys=[old]) as c:
        assert await downloads(c) == expected  # no downtime: the old key still unwraps
    assert await rotate_master(settings) == (
        "re-wrapped 2 data keys (0 were already current), re-sealed 1 webhook secrets"
    )
    assert await rotate_master(settings) == (
        "re-wrapped 0 data keys (2 were already current), re-sealed 0 webhook secrets"
    )
    async with node(settings, clock, master_key=new, previous_master_keys=[]) as c:
        assert await downloads(c) == expected  # the old key is no longer needed
        # and the webhook secret, re-sealed, still signs what the receiver verifies
        made = await c.post("/v1/bookings", headers=scheduler, json=booking_body(clock.now()))
        assert made.status_code == 201, made.text

        async def signed() -> bool:
            return any(r.data.get("booking_id") == made.json()["id"] for r in receiver.received)

        await eventually(signed, "an event signed under the new master key")
    async with node(settings, clock, master_key=old, previous_master_keys=[]) as c:
        stale = await c.get(f"/v1/bookings/{booked.booking_id}/recordings/{rows[0].id}",
                            headers=admin)
        assert stale.status_code == 503  # nothing is readable under the retired key
        assert stale.json()["code"] == "unavailable"


async def test_a_new_server_secret_keeps_links_replays_and_checkpoints(
    client: httpx.AsyncClient, api_keys: dict[Scope, str], settings: Settings,
    clock: ManualClock,
) -> None:
    scheduler = {**bearer(api_keys[Scope.SCHEDULER]), "Idempotency-Key": "rotation-1"}
    body = booking_body(clock.now())
    created = (await client.post("/v1/bookings", json=body, headers=scheduler)).json()
    host, guest = created["participants"]
    await decide(client, _Link(credential_of(guest)), "recording.audio")
    admin = bearer(api_keys[Scope.ADMIN])
    signed = await client.post("/v1/admin/consent-log/checkpoints", headers=admin)
    assert signed.status_code == 201
    old_key_id = signed.json()["key_id"]

    rotated = {"secret_key": SecretStr(NEW_SECRET),
               "previous_secret_keys": [SecretStr(support.SECRET)]}
    async with node(settings, clock, **rotated) as c:
        shown = (await c.get(f"/v1/bookings/{created['id']}", headers=scheduler)).json()
        assert [p["join_url"] for p in shown["participants"]] == [
            host["join_url"], guest["join_url"]
        ]
        joined = await c.post("/v1/join", json={"credential": credential_of(host)})
        assert joined.status_code == 200
        replay = await c.post("/v1/bookings", json=body, headers=scheduler)
        assert replay.status_code == 200
        assert replay.json()["id"] == created["id"]
        fresh = await c.post("/v1/admin/consent-log/checkpoints", headers=admin)
        assert fresh.json()["key_id"] != old_key_id  # the checkpoint key rotated too
        report = (await c.get("/v1/admin/consent-log/verify", headers=admin)).json()
        assert report["ok"] is True, report
        # A link issued now is made under the new secret and works as well.
        renewed = await c.post(
            f"/v1/bookings/{created['id']}/participants/{host['id']}/revoke", headers=scheduler
        )
        assert renewed.status_code == 200
        again = await c.post("/v1/join", json={"credential": credential_of(renewed.json())})
        assert again.status_code == 200

    # Without the previous secret listed, its checkpoints are no longer this server's.
    async with node(settings, clock, secret_key=SecretStr(NEW_SECRET),
                    previous_secret_keys=[]) as c:
        report = (await c.get("/v1/admin/consent-log/verify", headers=admin)).json()
        assert report["ok"] is False


class _Link:
    def __init__(self, credential: str) -> None:
        self.headers = {"X-Join-Credential": credential}
