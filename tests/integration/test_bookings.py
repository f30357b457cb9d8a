"""The scheduler API through the real app, on SQLite and PostgreSQL."""

from __future__ import annotations

import asyncio
import uuid
from datetime import datetime, timedelta
from typing import Any

import httpx
import pytest

from core.accounts import Scope
from core.bus import Topic
from core.clock import ManualClock
from core.events import BookingCancelled, BookingCreated
from core.runtime import Runtime
from tests.support.bookings import bearer, book, booking_body, credential_of, row_counts

pytestmark = pytest.mark.usefixtures("database_url")

PROBLEM = "application/problem+json"
FUTURE = datetime.fromisoformat("2030-01-01T10:00:00+00:00")


def unfold(ics: str) -> list[str]:
    """RFC 5545 section 3.1: a CRLF followed by one space continues the line."""
    return ics.replace("\r\n ", "").split("\r\n")


def prop(ics: str, name: str) -> str:
    for line in unfold(ics):
        key, _, value = line.partition(":")
        if key.split(";")[0] == name:
            return value
    raise AssertionError(f"{name} not in invite")


async def test_create_returns_links_and_get_shows_the_same(
    client: httpx.AsyncClient, api_keys: dict[Scope, str], clock: ManualClock
) -> None:
    key = api_keys[Scope.SCHEDULER]
    created = await book(client, key, clock.now() + timedelta(hours=1), clients=2)
    assert created["status"] == "scheduled"
    assert created["room"]["state"] == "not_needed"
    assert len(created["room"]["name"]) >= 32
    roles = [p["role"] for p in created["participants"]]
    assert roles == ["host", "client", "client"]
    for person in created["participants"]:
        assert person["join_url"].startswith("http://testserver/join/")
        assert len(credential_of(person)) == 43  # 256 bits, base64url
        assert person["invite_url"].endswith(f"/participants/{person['id']}/invite.ics")
        assert person["token_url"].endswith(f"/participants/{person['id']}/token")
    again = await client.get(f"/v1/bookings/{created['id']}", headers=bearer(key))
    assert again.status_code == 200
    assert again.headers["cache-control"] == "no-store"  # it carries join links
    assert again.json() == created
    assert created["stated_by"] == "client-1"  # the first client, unless the scheduler says
    named = await book(client, key, clock.now() + timedelta(hours=2), clients=2,
                       stated_by="client-2")
    assert named["stated_by"] == "client-2"
    unstated = await book(client, key, clock.now() + timedelta(hours=3), stated_purpose=None)
    assert unstated["stated_by"] is None


async def test_booking_events_are_published(
    client: httpx.AsyncClient, api_keys: dict[Scope, str], clock: ManualClock, runtime: Runtime
) -> None:
    key = api_keys[Scope.SCHEDULER]
    async with runtime.bus.subscribe(Topic.BOOKING_CREATED, Topic.BOOKING_CANCELLED) as events:
        created = await book(client, key, clock.now() + timedelta(hours=1))
        await client.delete(f"/v1/bookings/{created['id']}", headers=bearer(key))
        stream = aiter(events)
        first, second = await anext(stream), await anext(stream)
    assert isinstance(first, BookingCreated)
    assert isinstance(second, BookingCancelled)
    assert first.booking_id == second.booking_id == uuid.UUID(created["id"])


def endpoints(booking: str, participant: str) -> list[tuple[str, str, dict[str, Any] | None]]:
    base = f"/v1/bookings/{booking}"
    window = {"starts_at": "2030-01-01T10:00:00Z", "ends_at": "2030-01-01T11:00:00Z"}
    return [
        ("POST", "/v1/bookings", booking_body(FUTURE)),
        ("GET", "/v1/bookings", None),
        ("GET", base, None),
        ("PATCH", base, window),
        ("DELETE", base, None),
        ("GET", f"{base}/participants/{participant}/invite.ics", None),
        ("POST", f"{base}/participants/{participant}/token", None),
        ("POST", f"{base}/participants/{participant}/revoke", None),
    ]


async def test_every_endpoint_needs_a_scheduler_key(
    client: httpx.AsyncClient, api_keys: dict[Scope, str], clock: ManualClock, runtime: Runtime
) -> None:
    created = await book(client, api_keys[Scope.SCHEDULER], clock.now() + timedelta(hours=1))
    before = await row_counts(runtime)
    for method, path, body in endpoints(created["id"], created["participants"][0]["id"]):
        missing = await client.request(method, path, json=body)
        assert missing.status_code == 401, (method, path)
        assert missing.headers["content-type"] == PROBLEM
        assert missing.json()["code"] == "unauthenticated"
        for scope in (Scope.ADMIN, Scope.AUDITOR):
            wrong = await client.request(method, path, json=body, headers=bearer(api_keys[scope]))
            assert wrong.status_code == 403, (method, path, scope)
            assert wrong.json()["code"] == "forbidden"
        bogus = await client.request(method, path, json=body, headers=bearer("cg_nope_nope"))
        assert bogus.status_code == 401
    assert await row_counts(runtime) == before
    still = await client.get(
        f"/v1/bookings/{created['id']}", headers=bearer(api_keys[Scope.SCHEDULER])
    )
    assert still.json() == created


BAD_BODIES: list[tuple[str, dict[str, Any], list[Any]]] = [
    ("end before start", {"ends_at": "2030-01-01T09:00:00+00:00"}, ["body", "ends_at"]),
    ("too long", {"ends_at": "2030-01-01T18:00:01+00:00"}, ["body", "ends_at"]),
    ("naive start", {"starts_at": "2030-01-01T10:00:00"}, ["body", "starts_at"]),
    ("no clients", {"clients": []}, ["body", "clients"]),
    (
        "too many clients",
        {"clients": [{"external_id": f"c{i}", "display_name": "C", "adult": True}
                     for i in range(3)]},
        ["body", "clients"],
    ),
    (
        "duplicate participant",
        {"clients": [{"external_id": "host-1", "display_name": "Twin", "adult": True}]},
        ["body", "clients", 0, "external_id"],
    ),
    (
        "minor host",
        {"host": {"external_id": "h", "display_name": "Kid", "adult": False}},
        ["body", "host", "adult"],
    ),
    (
        "summary without transcription",
        {"requested_purposes": ["recording.audio", "ai.summary"]},
        ["body", "requested_purposes"],
    ),
    (
        "unknown purpose",
        {"requested_purposes": ["mind.reading"]},
        ["body", "requested_purposes", 0],
    ),
    ("stated by the host", {"stated_by": "host-1"}, ["body", "stated_by"]),
    ("stated by a stranger", {"stated_by": "client-9"}, ["body", "stated_by"]),
    (
        "stated by someone, no purpose",
        {"stated_purpose": None, "stated_by": "client-1"},
        ["body", "stated_by"],
    ),
    ("unknown policy", {"recording_policy": "sometimes"}, ["body", "recording_policy"]),
    ("missing title", {"title": None}, ["body", "title"]),
    ("unknown field", {"colour": "red"}, ["body", "colour"]),
]


@pytest.fixture
def settings_overrides() -> dict[str, Any]:
    return {"max_clients": 2, "max_booking_hours": 8}


@pytest.mark.parametrize(("case", "change", "loc"), BAD_BODIES, ids=[c[0] for c in BAD_BODIES])
async def test_bad_bookings_name_the_field_and_write_nothing(
    client: httpx.AsyncClient,
    api_keys: dict[Scope, str],
    runtime: Runtime,
    case: str,
    change: dict[str, Any],
    loc: list[Any],
) -> None:
    body = booking_body(FUTURE)
    body.update(change)
    body = {k: v for k, v in body.items() if v is not None}
    before = await row_counts(runtime)
    response = await client.post(
        "/v1/bookings", json=body, headers=bearer(api_keys[Scope.SCHEDULER])
    )
    assert response.status_code == 422, response.text
    assert response.headers["content-type"] == PROBLEM
    problem = response.json()
    assert problem["code"] == "invalid_input"
    assert loc in [e["loc"] for e in problem["errors"]], problem
    assert str(loc[-1]) in problem["detail"]
    assert await row_counts(runtime) == before


async def test_malformed_json_is_a_problem_not_a_crash(
    client: httpx.AsyncClient, api_keys: dict[Scope, str], runtime: Runtime
) -> None:
    before = await row_counts(runtime)
    response = await client.post(
        "/v1/bookings",
        content=b"{not json",
        headers={**bearer(api_keys[Scope.SCHEDULER]), "Content-Type": "application/json"},
    )
    assert response.status_code == 422
    assert response.headers["content-type"] == PROBLEM
    assert response.json()["errors"][0]["loc"][0] == "body"
    assert await row_counts(runtime) == before


async def test_idempotency_key_replays_or_conflicts(
    client: httpx.AsyncClient, api_keys: dict[Scope, str], clock: ManualClock, runtime: Runtime
) -> None:
    headers = {**bearer(api_keys[Scope.SCHEDULER]), "Idempotency-Key": "order-77"}
    body = booking_body(clock.now() + timedelta(days=1))
    first = await client.post("/v1/bookings", json=body, headers=headers)
    second = await client.post("/v1/bookings", json=body, headers=headers)
    assert (first.status_code, second.status_code) == (201, 200)
    assert first.json()["id"] == second.json()["id"]
    assert await row_counts(runtime) == (1, 2)
    other = await client.post(
        "/v1/bookings", json={**body, "title": "Something else"}, headers=headers
    )
    assert other.status_code == 409
    assert other.json()["code"] == "conflict"
    assert other.json()["booking_id"] == first.json()["id"]
    fresh = await client.post(
        "/v1/bookings", json=body, headers={**headers, "Idempotency-Key": "order-78"}
    )
    assert fresh.status_code == 201
    assert fresh.json()["id"] != first.json()["id"]
    assert await row_counts(runtime) == (2, 4)


async def test_list_filters_and_cursor_pagination(
    client: httpx.AsyncClient, api_keys: dict[Scope, str], clock: ManualClock
) -> None:
    key = api_keys[Scope.SCHEDULER]
    start = clock.now() + timedelta(days=1)
    made = [await book(client, key, start + timedelta(hours=2 * i)) for i in range(5)]
    special = await book(
        client, key, start + timedelta(hours=3),
        clients=1, host={"external_id": "mentor-9", "display_name": "M", "adult": True},
    )
    await client.delete(f"/v1/bookings/{made[4]['id']}", headers=bearer(key))
    seen: list[str] = []
    cursor = None
    while True:
        params = {"limit": 2, **({"cursor": cursor} if cursor else {})}
        page = (await client.get("/v1/bookings", params=params, headers=bearer(key))).json()
        assert len(page["items"]) <= 2
        seen += [b["id"] for b in page["items"]]
        cursor = page["next_cursor"]
        if cursor is None:
            break
    by_start = [made[0], made[1], special, made[2], made[3], made[4]]
    assert seen == [b["id"] for b in by_start]

    async def ids(**params: Any) -> list[str]:
        response = await client.get("/v1/bookings", params=params, headers=bearer(key))
        assert response.status_code == 200, response.text
        return [b["id"] for b in response.json()["items"]]

    assert await ids(status="cancelled") == [made[4]["id"]]
    assert await ids(participant="mentor-9") == [special["id"]]
    window = {
        "from": (start + timedelta(hours=2, minutes=30)).isoformat(),
        "to": (start + timedelta(hours=4)).isoformat(),
    }
    assert await ids(**window) == [made[1]["id"], special["id"]]
    bad = await client.get("/v1/bookings", params={"cursor": "garbage!"}, headers=bearer(key))
    assert bad.status_code == 422
    assert bad.json()["errors"][0]["loc"] == ["query", "cursor"]
    naive = await client.get(
        "/v1/bookings", params={"from": "2030-01-01T00:00:00"}, headers=bearer(key)
    )
    assert naive.status_code == 422
    assert naive.json()["errors"][0]["loc"] == ["query", "from"]


async def test_reschedule_bumps_sequence_and_cancel_sends_method_cancel(
    client: httpx.AsyncClient, api_keys: dict[Scope, str], clock: ManualClock
) -> None:
    key = api_keys[Scope.SCHEDULER]
    created = await book(client, key, clock.now() + timedelta(days=1))
    host = created["participants"][0]
    ics_url = f"/v1/bookings/{created['id']}/participants/{host['id']}/invite.ics"
    first = await client.get(ics_url, headers=bearer(key))
    assert first.status_code == 200
    assert first.headers["content-type"].startswith("text/calendar")
    assert first.headers["cache-control"] == "no-store"
    assert prop(first.text, "METHOD") == "REQUEST"
    assert prop(first.text, "SEQUENCE") == "0"
    assert prop(first.text, "URL") == host["join_url"]

    new_start = clock.now() + timedelta(days=2)
    moved = await client.patch(
        f"/v1/bookings/{created['id']}",
        json={"starts_at": new_start.isoformat(),
              "ends_at": (new_start + timedelta(minutes=30)).isoformat()},
        headers=bearer(key),
    )
    assert moved.status_code == 200
    assert moved.json()["sequence"] == 1
    second = await client.get(ics_url, headers=bearer(key))
    assert prop(second.text, "SEQUENCE") == "1"
    assert prop(second.text, "DTSTART") == new_start.strftime("%Y%m%dT%H%M%SZ")
    assert prop(second.text, "UID") == prop(first.text, "UID")

    cancelled = await client.delete(f"/v1/bookings/{created['id']}", headers=bearer(key))
    assert cancelled.status_code == 200
    assert cancelled.json()["status"] == "cancelled"
    third = await client.get(ics_url, headers=bearer(key))
    assert prop(third.text, "METHOD") == "CANCEL"
    assert prop(third.text, "STATUS") == "CANCELLED"
    assert int(prop(third.text, "SEQUENCE")) > 1
    again = await client.delete(f"/v1/bookings/{created['id']}", headers=bearer(key))
    assert again.json()["sequence"] == cancelled.json()["sequence"]
    late = await client.patch(
        f"/v1/bookings/{created['id']}",
        json={"starts_at": new_start.isoformat(),
              "ends_at": (new_start + timedelta(minutes=30)).isoformat()},
        headers=bearer(key),
    )
    assert late.status_code == 410
    assert late.json()["code"] == "gone"


async def test_reschedule_rejects_bad_windows_and_changes_nothing(
    client: httpx.AsyncClient, api_keys: dict[Scope, str], clock: ManualClock
) -> None:
    key = api_keys[Scope.SCHEDULER]
    created = await book(client, key, clock.now() + timedelta(days=1))
    path = f"/v1/bookings/{created['id']}"
    start = clock.now() + timedelta(days=3)
    bodies = [
        ({"starts_at": start.isoformat(), "ends_at": start.isoformat()}, "ends_at"),
        ({"starts_at": start.isoformat(),
          "ends_at": (start + timedelta(hours=9)).isoformat()}, "ends_at"),
        ({"starts_at": "2030-01-01T10:00:00", "ends_at": "2030-01-01T11:00:00Z"}, "starts_at"),
        ({"starts_at": start.isoformat()}, "ends_at"),
    ]
    for body, field in bodies:
        response = await client.patch(path, json=body, headers=bearer(key))
        assert response.status_code == 422, body
        assert ["body", field] in [e["loc"] for e in response.json()["errors"]]
    assert (await client.get(path, headers=bearer(key))).json() == created
    missing = await client.patch(
        f"/v1/bookings/{uuid.uuid4()}",
        json={"starts_at": start.isoformat(), "ends_at": (start + timedelta(hours=1)).isoformat()},
        headers=bearer(key),
    )
    assert missing.status_code == 404
    bad_id = await client.get("/v1/bookings/not-a-uuid", headers=bearer(key))
    assert bad_id.status_code == 422
    assert bad_id.json()["errors"][0]["loc"] == ["path", "booking_id"]


async def test_invite_folds_and_escapes(
    client: httpx.AsyncClient, api_keys: dict[Scope, str], clock: ManualClock
) -> None:
    key = api_keys[Scope.SCHEDULER]
    title = "Ünïcode; commas, and a backslash \\ " + "é" * 60
    created = await book(
        client, key, clock.now() + timedelta(days=1), title=title,
        host={"external_id": "h", "display_name": 'Dr. "Quote" Host', "adult": True},
    )
    host = created["participants"][0]
    ics = (
        await client.get(
            f"/v1/bookings/{created['id']}/participants/{host['id']}/invite.ics",
            headers=bearer(key),
        )
    ).text
    raw = ics.encode()
    assert raw.endswith(b"\r\n")
    for line in raw.split(b"\r\n"):
        assert len(line) <= 75
        line.decode()  # no line ends inside a UTF-8 sequence
    summary = prop(ics, "SUMMARY")
    assert summary == title.replace("\\", "\\\\").replace(";", "\\;").replace(",", "\\,")
    assert "\\nJoin: " in prop(ics, "DESCRIPTION")
    attendee = next(line for line in unfold(ics) if line.startswith("ATTENDEE"))
    assert 'CN="Dr. Quote Host"' in attendee
    assert attendee.endswith(f"urn:uuid:{host['id']}")


async def test_another_bookings_participant_is_not_found_here(
    client: httpx.AsyncClient, api_keys: dict[Scope, str], clock: ManualClock
) -> None:
    key = api_keys[Scope.SCHEDULER]
    mine = await book(client, key, clock.now() + timedelta(minutes=5))
    theirs = await book(client, key, clock.now() + timedelta(minutes=5))
    stranger = theirs["participants"][1]["id"]
    base = f"/v1/bookings/{mine['id']}/participants/{stranger}"
    for method, path in (
        ("GET", f"{base}/invite.ics"),
        ("POST", f"{base}/token"),
        ("POST", f"{base}/revoke"),
    ):
        response = await client.request(method, path, headers=bearer(key))
        assert response.status_code == 404, path
        assert response.json()["code"] == "not_found"
    joined = await client.post("/v1/join", json={"credential": credential_of(
        theirs["participants"][1])})
    assert joined.json()["booking"]["id"] == theirs["id"]
    assert mine["id"] not in joined.text
    assert mine["room"]["name"] not in joined.text


async def test_revoke_gives_a_new_link_and_kills_the_old_one(
    client: httpx.AsyncClient, api_keys: dict[Scope, str], clock: ManualClock
) -> None:
    key = api_keys[Scope.SCHEDULER]
    created = await book(client, key, clock.now() + timedelta(minutes=5))
    person = created["participants"][1]
    old = credential_of(person)
    revoked = await client.post(
        f"/v1/bookings/{created['id']}/participants/{person['id']}/revoke", headers=bearer(key)
    )
    assert revoked.status_code == 200
    new = credential_of(revoked.json())
    assert new != old
    assert (await client.post("/v1/join", json={"credential": old})).status_code == 404
    assert (await client.post("/v1/join", json={"credential": new})).status_code == 200
    shown = (await client.get(f"/v1/bookings/{created['id']}", headers=bearer(key))).json()
    assert shown["participants"][1]["join_url"] == revoked.json()["join_url"]


async def test_concurrent_retries_with_one_key_make_one_booking(
    client: httpx.AsyncClient, api_keys: dict[Scope, str], clock: ManualClock, runtime: Runtime
) -> None:
    headers = {**bearer(api_keys[Scope.SCHEDULER]), "Idempotency-Key": "burst-1"}
    body = booking_body(clock.now() + timedelta(days=1), clients=2)
    responses = await asyncio.gather(
        *(client.post("/v1/bookings", json=body, headers=headers) for _ in range(6))
    )
    assert sorted(r.status_code for r in responses) == [200] * 5 + [201]
    assert len({r.json()["id"] for r in responses}) == 1
    assert await row_counts(runtime) == (1, 3)
