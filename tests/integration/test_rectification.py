"""Rectification and age: a scheduler or an admin corrects a person's display name and age;
the age is a band (adult, minor, child) with a minimum age below which nobody is booked."""

from __future__ import annotations

import io
import json
import zipfile
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import pytest
from fastapi import FastAPI

from api.services import Services
from consent.gate import Reason
from consent.live import LiveGate
from core.accounts import Scope
from core.purposes import Purpose
from core.runtime import Runtime
from tests.integration.test_minors import guardian
from tests.integration.test_signaling import ORIGIN
from tests.support.bookings import bearer, booking_body
from tests.support.consent import decide
from tests.support.privacy import Person, book, person
from tests.support.signaling import open_socket, receive, receive_type
from tests.support.waiting import eventually

PURPOSES = ["recording.audio"]
SOON = datetime.now(UTC) + timedelta(days=1)


@pytest.fixture
def settings_overrides() -> dict[str, Any]:
    return {"allowed_origins": [ORIGIN]}


def _people(**client: Any) -> dict[str, Any]:
    body = booking_body(SOON)
    body["clients"] = [{"external_id": "c-1", "display_name": "Cy", **client}]
    return body


async def _create(client: httpx.AsyncClient, keys: dict[Scope, str], body: dict[str, Any]) -> (
    httpx.Response
):
    return await client.post("/v1/bookings", json=body, headers=bearer(keys[Scope.SCHEDULER]))


async def test_age_bands_and_the_minimum_age(
    client: httpx.AsyncClient, api_keys: dict[Scope, str], runtime: Runtime
) -> None:
    assert runtime.settings.minimum_age == 13
    cases: list[tuple[dict[str, Any], str | list[str]]] = [
        ({"age": 15}, "minor"),
        ({"age": 40}, "adult"),
        ({"age_band": "minor"}, "minor"),
        ({"adult": False}, "minor"),  # the older flag
        ({"adult": True}, "adult"),
        ({"age": 12}, ["body", "clients", 0, "age"]),  # under the minimum age
        ({"age_band": "child"}, ["body", "clients", 0, "age_band"]),
        ({"age": 15, "age_band": "adult"}, ["body", "clients", 0, "age_band"]),
        ({"age": 30, "adult": False}, ["body", "clients", 0, "adult"]),
        ({}, ["body", "clients", 0, "age_band"]),
    ]
    for stated, expected in cases:
        response = await _create(client, api_keys, _people(**stated))
        if isinstance(expected, str):
            assert response.status_code == 201, (stated, response.text)
            participant = response.json()["participants"][1]
            assert participant["age_band"] == expected, stated
            assert participant["age"] == stated.get("age")
            assert participant["adult"] is (expected == "adult")
        else:
            assert response.status_code == 422, (stated, response.text)
            assert response.headers["content-type"].startswith("application/problem+json")
            assert expected in [e["loc"] for e in response.json()["errors"]], response.text
    minor_host = booking_body(SOON)
    minor_host["host"] = {"external_id": "h", "display_name": "H", "age": 16}
    refused = await _create(client, api_keys, minor_host)
    assert refused.status_code == 422
    assert ["body", "host", "age_band"] in [e["loc"] for e in refused.json()["errors"]]


@pytest.mark.parametrize("settings_overrides", [{"minimum_age": 6}])
async def test_a_lower_minimum_age_lets_children_be_booked_with_their_age(
    client: httpx.AsyncClient, api_keys: dict[Scope, str]
) -> None:
    child = await _create(client, api_keys, _people(age=9))
    assert child.status_code == 201, child.text
    assert child.json()["participants"][1]["age_band"] == "child"
    too_young = await _create(client, api_keys, _people(age=5))
    assert too_young.status_code == 422
    unknown = await _create(client, api_keys, _people(age_band="child"))
    assert unknown.status_code == 422
    assert "state the age" in unknown.json()["detail"]


async def test_a_correction_shows_at_once_and_changes_nothing_else(
    client: httpx.AsyncClient, api_keys: dict[Scope, str], runtime: Runtime, ws_base: str,
    app: FastAPI,
) -> None:
    booked = await book(
        client, api_keys, runtime.clock.now() + timedelta(minutes=5),
        person("tutor-9", "Tess Tutor"), [person("pupil-9", "Pip Typo")], PURPOSES,
    )
    host, guest = booked.people
    sockets = []
    for who in (host, guest):
        joined = await client.post("/v1/join", json={"credential": who.credential})
        assert joined.status_code == 200, joined.text
        grant = joined.json()["builtin"]
        room = grant["ws_url"].rsplit("/", 2)[-2]
        ws = await open_socket(ws_base, room, grant["ticket"], ORIGIN)
        assert (await receive(ws))["type"] == "welcome"
        sockets.append(ws)
    await receive_type(sockets[0], "peer-joined")
    await decide(client, guest, "recording.audio", "granted")
    path = f"/v1/bookings/{booked.booking_id}/participants/{guest.id}"

    corrected = await client.patch(path, json={"display_name": "Pip Typist"},
                                   headers=bearer(api_keys[Scope.SCHEDULER]))
    assert corrected.status_code == 200, corrected.text
    assert corrected.json()["display_name"] == "Pip Typist"
    for ws in sockets:  # both pages, at once
        updated = await receive_type(ws, "peer-updated")
        assert updated["peer"] == {"id": str(guest.id), "name": "Pip Typist", "role": "client"}

    invite = await client.get(f"{path}/invite.ics", headers=bearer(api_keys[Scope.SCHEDULER]))
    assert "Pip Typist" in invite.text
    assert "Pip Typo" not in invite.text
    # The same link, the same role and consent: nothing else changed.
    rejoined = await client.post("/v1/join", json={"credential": guest.credential})
    assert rejoined.status_code == 200
    assert rejoined.json()["participant"]["display_name"] == "Pip Typist"
    overview = (await client.get("/v1/consent", headers=guest.headers)).json()
    decided = {p["purpose"]: p.get("decision") for p in overview["purposes"]}
    assert decided["recording.audio"] == "granted", overview
    assert corrected.json()["join_url"].endswith(guest.credential)

    # An admin may correct too; the log (which fields, by which key) is in the export.
    admin = bearer(api_keys[Scope.ADMIN])
    aged = await client.patch(path, json={"age": 35}, headers=admin)
    assert aged.status_code == 200, aged.text
    assert (aged.json()["age_band"], aged.json()["age"]) == ("adult", 35)
    exported = await client.post("/v1/admin/subjects/pupil-9/export", headers=admin)
    with zipfile.ZipFile(io.BytesIO(exported.content)) as bundle:
        log = [json.loads(x) for x in bundle.read("corrections.jsonl").decode().splitlines()]
    assert [entry["fields"] for entry in log] == [["display_name"], ["age"]]
    assert "Pip Typo" not in json.dumps(log)
    for ws in sockets:
        await ws.close()


async def test_a_band_change_applies_the_guardian_rule_and_bad_corrections_change_nothing(
    client: httpx.AsyncClient, api_keys: dict[Scope, str], runtime: Runtime, services: Services
) -> None:
    booked = await book(
        client, api_keys, runtime.clock.now() + timedelta(minutes=5),
        person("tutor-8", "Tia Tutor"), [person("pupil-8", "Pia Pupil")], PURPOSES,
    )
    host, guest = booked.people
    gate = services.gate
    assert isinstance(gate, LiveGate)
    await gate.ensure_booking(booked.booking_id)
    await decide(client, guest, "recording.audio", "granted")

    def verdict(who: Person) -> Reason:
        return gate.explain(booked.booking_id, who.id, Purpose.RECORDING_AUDIO).reason

    await eventually(lambda: verdict(guest) is Reason.GRANTED, "an adult decides alone")
    scheduler = bearer(api_keys[Scope.SCHEDULER])
    path = f"/v1/bookings/{booked.booking_id}/participants/{guest.id}"
    minor = await client.patch(path, json={"age_band": "minor"}, headers=scheduler)
    assert minor.status_code == 200, minor.text
    await eventually(lambda: verdict(guest) is Reason.GUARDIAN, "a minor needs the guardian")
    assert (await guardian(client, api_keys, guest, "recording.audio")).status_code == 201
    await eventually(lambda: verdict(guest) is Reason.GRANTED, "with the guardian's grant")

    before = (await client.get(f"/v1/bookings/{booked.booking_id}", headers=scheduler)).json()
    host_path = f"/v1/bookings/{booked.booking_id}/participants/{host.id}"
    for target, body, status in [
        (path, {}, 422),
        (path, {"nickname": "x"}, 422),
        (path, {"age": 11}, 422),  # under the minimum age
        (path, {"age": 15, "age_band": "adult"}, 422),
        (path, {"display_name": ""}, 422),
        (host_path, {"age_band": "minor"}, 422),  # the host stays an adult
    ]:
        refused = await client.patch(target, json=body, headers=scheduler)
        assert refused.status_code == status, (body, refused.text)
        assert refused.headers["content-type"].startswith("application/problem+json")
    auditor = await client.patch(path, json={"display_name": "X"},
                                 headers=bearer(api_keys[Scope.AUDITOR]))
    assert auditor.status_code == 403
    after = (await client.get(f"/v1/bookings/{booked.booking_id}", headers=scheduler)).json()
    assert after == before

    admin = bearer(api_keys[Scope.ADMIN])
    erased = await client.post("/v1/admin/subjects/pupil-8/erase", headers=admin,
                               json={"confirm": "pupil-8"})
    assert erased.status_code == 200
    gone = await client.patch(path, json={"display_name": "Back"}, headers=scheduler)
    assert gone.status_code == 410
