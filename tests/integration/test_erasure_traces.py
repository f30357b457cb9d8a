"""After an erasure nothing readable of the person is left anywhere callgate keeps data: not in
any column of any table (SQLite and PostgreSQL), not in any file of the data folder or the
SQLite database and its WAL, not in the Idempotency-Key fingerprint (which answers no
guesses), not in the purpose they stated, not in the scheduler's view of the booking."""

from __future__ import annotations

import json
from datetime import timedelta
from pathlib import Path
from typing import Any

import httpx

from core.accounts import Scope
from core.crypto import sha256_hex
from core.runtime import Runtime
from core.settings import Settings
from signaling.bookings import BookingRequest
from tests.integration.test_erasure import database_bytes, found, storage_bytes
from tests.support.bookings import bearer, booking_body, credential_of
from tests.support.consent import decide

NAME = "Ysolde Varnhagen-Pike"
EXTERNAL = "member-yvp-55120"
WORDS = "rehearse the Quillmarsh acquisition pitch"


class Link:
    def __init__(self, credential: str) -> None:
        self.headers = {"X-Join-Credential": credential}


def the_body(runtime: Runtime, name: str = NAME) -> dict[str, Any]:
    body = booking_body(
        runtime.clock.now() + timedelta(minutes=5),
        purposes=["recording.audio", "transcription", "ai.agenda"],
        stated_purpose=WORDS, stated_by=EXTERNAL,
    )
    body["clients"] = [{"external_id": EXTERNAL, "display_name": name, "adult": True}]
    return body


def plain_fingerprint(body: dict[str, Any]) -> str:
    """What the fingerprint used to be: SHA-256 anyone can recompute from a guess."""
    request = BookingRequest.model_validate(body).model_dump(mode="json")
    return sha256_hex(json.dumps(request, sort_keys=True, separators=(",", ":")))


async def test_erasure_leaves_nothing_readable_and_no_oracle(
    client: httpx.AsyncClient, api_keys: dict[Scope, str], runtime: Runtime,
    settings: Settings, tmp_path: Path,
) -> None:
    headers = {**bearer(api_keys[Scope.SCHEDULER]), "Idempotency-Key": "order-9931"}
    body = the_body(runtime)
    created = await client.post("/v1/bookings", json=body, headers=headers)
    assert created.status_code == 201, created.text
    booking = created.json()
    assert booking["stated_by"] == EXTERNAL
    ysolde = next(p for p in booking["participants"] if p["external_id"] == EXTERNAL)
    credential = credential_of(ysolde)
    await decide(client, Link(credential), "recording.audio")
    replay = await client.post("/v1/bookings", json=body, headers=headers)
    assert replay.status_code == 200  # before the erasure the key replays as documented

    async with runtime.db.engine.connect() as conn:
        keyed = (await conn.exec_driver_sql("SELECT request_hash FROM bookings")).scalar_one()
    guessable = plain_fingerprint(body).encode()
    assert found(await database_bytes(runtime), [guessable]) == []  # keyed: no recomputing
    needles = [NAME.encode(), EXTERNAL.encode(), WORDS.encode(),
               sha256_hex(credential).encode(), credential.encode(), keyed.encode()]
    # The scans see the person before (so they can see them after).
    assert found(await database_bytes(runtime), needles)

    admin = bearer(api_keys[Scope.ADMIN])
    erased = await client.post(f"/v1/admin/subjects/{EXTERNAL}/erase", headers=admin,
                               json={"confirm": EXTERNAL})
    assert erased.status_code == 200, erased.text

    assert found(await database_bytes(runtime), needles) == []
    folders = [settings.data_dir]
    if runtime.db.dialect == "sqlite":
        folders.append(Path(settings.database_url.split(":///", 1)[1]).parent)
    for folder in folders:
        assert found(storage_bytes(folder), needles) == []

    # A replay tells nothing: the original body and a guess at another name answer alike.
    same = await client.post("/v1/bookings", json=body, headers=headers)
    other = await client.post("/v1/bookings", json=the_body(runtime, "Someone Else"),
                              headers=headers)
    assert same.status_code == other.status_code == 409
    assert same.json()["detail"] == other.json()["detail"]

    shown = (await client.get(f"/v1/bookings/{booking['id']}", headers=headers)).json()
    assert shown["stated_purpose"] is None
    assert shown["stated_by"] is None
    gone = next(p for p in shown["participants"] if p["id"] == ysolde["id"])
    assert gone["erased"] is True
    assert gone["display_name"] == "Erased participant"
    assert gone["join_url"] is gone["invite_url"] is gone["token_url"] is None
    host = next(p for p in shown["participants"] if p["role"] == "host")
    assert host["erased"] is False
    assert host["join_url"]
    invite = await client.get(
        f"/v1/bookings/{booking['id']}/participants/{ysolde['id']}/invite.ics", headers=headers
    )
    assert invite.status_code == 410
