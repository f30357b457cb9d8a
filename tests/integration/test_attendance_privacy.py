"""Attendance is personal data: in the person's export, gone with their erasure, and purged
after its own retention period (`attendance_retention_days`)."""

from __future__ import annotations

import io
import json
import zipfile
from datetime import timedelta
from typing import Any

import httpx
import pytest
from sqlalchemy import select

from core.accounts import Scope
from core.clock import ManualClock
from core.outbox import OutboxEvent
from core.runtime import Runtime
from tests.support.bookings import bearer, book
from tests.support.lifecycle import enter
from tests.support.waiting import eventually


@pytest.fixture
def settings_overrides() -> dict[str, Any]:
    return {"lifecycle_sweep_interval_s": 0.05, "retention_interval_s": 0}


async def stays(
    client: httpx.AsyncClient, keys: dict[Scope, str], booking_id: str
) -> dict[str, int]:
    response = await client.get(
        f"/v1/bookings/{booking_id}/attendance", headers=bearer(keys[Scope.ADMIN])
    )
    return {p["participant_id"]: len(p["stays"]) for p in response.json()["people"]}


async def visit(
    client: httpx.AsyncClient, keys: dict[Scope, str], ws_base: str, booking_id: str,
    person: dict[str, Any],
) -> None:
    ws = await enter(client, ws_base, person)
    await ws.send(json.dumps({"type": "bye"}))
    await ws.wait_closed()

    async def recorded() -> bool:
        return (await stays(client, keys, booking_id))[person["id"]] == 1

    await eventually(recorded, "recorded")


async def test_attendance_is_exported_erased_and_purged(
    client: httpx.AsyncClient, api_keys: dict[Scope, str], clock: ManualClock, ws_base: str,
    runtime: Runtime,
) -> None:
    booked = await book(client, api_keys[Scope.SCHEDULER], clock.now())
    host, guest = booked["participants"]
    await visit(client, api_keys, ws_base, booked["id"], host)
    await visit(client, api_keys, ws_base, booked["id"], guest)
    admin = bearer(api_keys[Scope.ADMIN])

    exported = await client.post(f"/v1/admin/subjects/{host['external_id']}/export", headers=admin)
    assert exported.status_code == 200
    archive = zipfile.ZipFile(io.BytesIO(exported.content))
    (name,) = [n for n in archive.namelist() if n.endswith("attendance.jsonl")]
    (line,) = [json.loads(x) for x in archive.read(name).decode().splitlines()]
    assert line["participant_id"] == host["id"]
    assert line["how"] == "left"

    erased = await client.post(
        f"/v1/admin/subjects/{host['external_id']}/erase", headers=admin,
        json={"confirm": host["external_id"]},
    )
    assert erased.status_code == 200, erased.text
    assert erased.json()["counts"]["signaling"]["attendance_deleted"] == 1
    assert await stays(client, api_keys, booked["id"]) == {host["id"]: 0, guest["id"]: 1}
    async with runtime.db.session() as session:
        events = (await session.scalars(select(OutboxEvent))).all()
    erased = [e.payload["data"] for e in events if e.type == "subject.erased"]
    assert erased == [{"participant_ids": [host["id"]], "at": erased[0]["at"]}]
    assert host["external_id"] not in json.dumps([e.payload for e in events])
    assert guest["external_id"] in json.dumps([e.payload for e in events])

    clock.advance(timedelta(days=89))
    run = await client.post("/v1/admin/retention/run", headers=admin, params={"dry_run": "false"})
    assert run.json()["counts"]["attendance"] == 0
    clock.advance(timedelta(days=2))
    run = await client.post("/v1/admin/retention/run", headers=admin, params={"dry_run": "false"})
    assert run.json()["counts"]["attendance"] == 1
    assert await stays(client, api_keys, booked["id"]) == {host["id"]: 0, guest["id"]: 0}
