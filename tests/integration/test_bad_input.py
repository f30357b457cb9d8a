"""Bad input everywhere gets a clear 4xx problem+json and changes nothing: no 500 for a booking
that does not exist, dates the database cannot keep, control characters, bodies that are not
JSON; and every answer is what the OpenAPI document says it is."""

from __future__ import annotations

import uuid
from datetime import timedelta
from typing import Any

import httpx
import pytest

from core.accounts import Scope
from core.clock import ManualClock
from core.runtime import Runtime
from tests.support.bookings import bearer, book, booking_body, credential_of, row_counts

PROBLEM = "application/problem+json"


def assert_problem(response: httpx.Response, status: int, code: str | None = None) -> None:
    assert response.status_code == status, response.text
    assert response.headers["content-type"] == PROBLEM
    if code is not None:
        assert response.json()["code"] == code


class TestRecordingSwitch:
    async def test_a_booking_that_does_not_exist_is_404_not_500(
        self, client: httpx.AsyncClient, api_keys: dict[Scope, str]
    ) -> None:
        admin = bearer(api_keys[Scope.ADMIN])
        missing = uuid.uuid4()
        for action in ("start", "stop"):
            response = await client.post(f"/v1/bookings/{missing}/recording/{action}",
                                         headers=admin)
            assert_problem(response, 404, "not_found")
        listed = await client.get(f"/v1/bookings/{missing}/recordings", headers=admin)
        assert_problem(listed, 404, "not_found")

    async def test_cancelled_is_410_and_ended_is_403_for_host_and_admin(
        self, client: httpx.AsyncClient, api_keys: dict[Scope, str], clock: ManualClock
    ) -> None:
        key = api_keys[Scope.SCHEDULER]
        cancelled = await book(client, key, clock.now())
        ended = await book(client, key, clock.now(), minutes=30)
        assert (await client.delete(f"/v1/bookings/{cancelled['id']}",
                                    headers=bearer(key))).status_code == 200
        host = {"X-Join-Credential": credential_of(cancelled["participants"][0])}
        admin = bearer(api_keys[Scope.ADMIN])
        for who in (host, admin):
            response = await client.post(f"/v1/bookings/{cancelled['id']}/recording/start",
                                         headers=who)
            assert_problem(response, 410, "gone")
        clock.advance(timedelta(minutes=31))
        host = {"X-Join-Credential": credential_of(ended["participants"][0])}
        for who in (host, admin):
            response = await client.post(f"/v1/bookings/{ended['id']}/recording/start",
                                         headers=who)
            assert_problem(response, 403, "forbidden")
        listed = await client.get(f"/v1/bookings/{ended['id']}/recordings", headers=admin)
        assert listed.json()["recording"] is False  # nothing was switched on


class TestDates:
    @pytest.mark.parametrize(
        "starts_at", ["9999-12-31T22:00:00-05:00", "0001-01-01T00:00:00+05:00"]
    )
    async def test_dates_at_the_edge_of_the_calendar_are_422(
        self, client: httpx.AsyncClient, api_keys: dict[Scope, str], runtime: Runtime,
        starts_at: str,
    ) -> None:
        body = booking_body(runtime.clock.now())
        body["starts_at"] = starts_at
        body["ends_at"] = starts_at
        response = await client.post("/v1/bookings", json=body,
                                     headers=bearer(api_keys[Scope.SCHEDULER]))
        assert_problem(response, 422, "invalid_input")
        assert await row_counts(runtime) == (0, 0)

    async def test_a_booking_in_the_past_is_refused_and_so_is_a_reschedule_into_it(
        self, client: httpx.AsyncClient, api_keys: dict[Scope, str], runtime: Runtime,
        clock: ManualClock,
    ) -> None:
        key = bearer(api_keys[Scope.SCHEDULER])
        past = booking_body(clock.now() - timedelta(days=365 * 25))
        response = await client.post("/v1/bookings", json=past, headers=key)
        assert_problem(response, 422, "invalid_input")
        assert response.json()["errors"][0]["loc"] == ["body", "ends_at"]
        assert await row_counts(runtime) == (0, 0)
        created = await book(client, api_keys[Scope.SCHEDULER], clock.now() + timedelta(hours=1))
        back = clock.now() - timedelta(hours=3)
        moved = await client.patch(
            f"/v1/bookings/{created['id']}", headers=key,
            json={"starts_at": back.isoformat(),
                  "ends_at": (back + timedelta(hours=1)).isoformat()},
        )
        assert_problem(moved, 422, "invalid_input")
        kept = (await client.get(f"/v1/bookings/{created['id']}", headers=key)).json()
        assert kept["starts_at"] == created["starts_at"]
        assert kept["sequence"] == created["sequence"]

    @pytest.mark.parametrize("value", ["0.5", "1700000000", "99999999999999999999", "-1"])
    async def test_numbers_are_not_date_times_in_queries(
        self, client: httpx.AsyncClient, api_keys: dict[Scope, str], value: str
    ) -> None:
        cases = [
            ("/v1/bookings", "from", Scope.SCHEDULER),
            ("/v1/bookings", "to", Scope.SCHEDULER),
            ("/v1/admin/processing", "before", Scope.ADMIN),
            ("/v1/admin/consent-log", "from", Scope.ADMIN),
        ]
        for path, name, scope in cases:
            response = await client.get(path, params={name: value},
                                        headers=bearer(api_keys[scope]))
            assert_problem(response, 422, "invalid_input")
        edge = await client.get("/v1/bookings", params={"to": "9999-12-31T23:59:59-05:00"},
                                headers=bearer(api_keys[Scope.SCHEDULER]))
        assert_problem(edge, 422, "invalid_input")


class TestPastImports:
    @pytest.fixture
    def settings_overrides(self) -> dict[str, Any]:
        return {"allow_past_bookings": True}

    async def test_operators_may_allow_past_sessions_for_imports(
        self, client: httpx.AsyncClient, api_keys: dict[Scope, str], clock: ManualClock
    ) -> None:
        past = booking_body(clock.now() - timedelta(days=30))
        response = await client.post("/v1/bookings", json=past,
                                     headers=bearer(api_keys[Scope.SCHEDULER]))
        assert response.status_code == 201, response.text


class TestControlCharacters:
    @pytest.mark.parametrize(
        ("field", "value"),
        [
            (("title",), "Mentoring\x00session"),
            (("host", "display_name"), "Ada\x00"),
            (("clients", 0, "external_id"), "user\x1b[31m"),
            (("stated_purpose",), "plan\x00"),
            (("clients", 0, "display_name"), "Line\nbreak"),
        ],
    )
    async def test_control_characters_in_text_fields_are_422(
        self, client: httpx.AsyncClient, api_keys: dict[Scope, str], runtime: Runtime,
        field: tuple[Any, ...], value: str,
    ) -> None:
        body = booking_body(runtime.clock.now())
        target: Any = body
        for part in field[:-1]:
            target = target[part]
        target[field[-1]] = value
        response = await client.post("/v1/bookings", json=body,
                                     headers=bearer(api_keys[Scope.SCHEDULER]))
        assert_problem(response, 422, "invalid_input")
        locs = [e["loc"] for e in response.json()["errors"]]
        assert ["body", *field] in locs
        assert await row_counts(runtime) == (0, 0)

    async def test_a_purpose_may_have_line_breaks(
        self, client: httpx.AsyncClient, api_keys: dict[Scope, str], runtime: Runtime
    ) -> None:
        body = booking_body(runtime.clock.now(), stated_purpose="First:\n\tthe plan\r\n")
        response = await client.post("/v1/bookings", json=body,
                                     headers=bearer(api_keys[Scope.SCHEDULER]))
        assert response.status_code == 201, response.text

    async def test_a_nul_in_a_search_matches_nobody_it_is_refused(
        self, client: httpx.AsyncClient, api_keys: dict[Scope, str], clock: ManualClock
    ) -> None:
        await book(client, api_keys[Scope.SCHEDULER], clock.now())
        admin = bearer(api_keys[Scope.ADMIN])
        for q in ("\x00", "client\x00"):
            response = await client.get("/v1/admin/subjects", params={"q": q}, headers=admin)
            assert_problem(response, 422, "invalid_input")
        listed = await client.get("/v1/bookings", params={"participant": "host-1\x00"},
                                  headers=bearer(api_keys[Scope.SCHEDULER]))
        assert_problem(listed, 422, "invalid_input")


class TestAnswersMatchTheDocument:
    async def test_errors_are_documented_as_problem_json(self, client: httpx.AsyncClient) -> None:
        spec = (await client.get("/openapi.json")).json()
        documented_json = []
        for path, item in spec["paths"].items():
            for method, operation in item.items():
                for status, answer in operation["responses"].items():
                    if status.startswith(("4", "5")) and path != "/readyz":
                        types = set(answer.get("content", {}))
                        if types and types != {PROBLEM}:
                            documented_json.append(f"{method} {path} {status}")
        assert documented_json == []
        assert "HTTPValidationError" not in spec.get("components", {}).get("schemas", {})
        export = spec["paths"]["/v1/admin/consent-log/export"]["get"]["responses"]["200"]
        assert set(export["content"]) == {"text/csv", "application/x-ndjson"}

    async def test_an_undecodable_body_is_422_like_any_bad_json(
        self, client: httpx.AsyncClient, api_keys: dict[Scope, str], runtime: Runtime
    ) -> None:
        headers = {**bearer(api_keys[Scope.SCHEDULER]), "Content-Type": "application/json"}
        for raw in (b"\xff\xfe{", b"{not json", b'{"title": "\xc3\x28"}'):
            response = await client.post("/v1/bookings", content=raw, headers=headers)
            assert_problem(response, 422, "invalid_input")
        assert await row_counts(runtime) == (0, 0)

    async def test_405_allows_every_method_of_the_path(
        self, client: httpx.AsyncClient, api_keys: dict[Scope, str], clock: ManualClock
    ) -> None:
        created = await book(client, api_keys[Scope.SCHEDULER], clock.now())
        response = await client.put(f"/v1/bookings/{created['id']}",
                                    headers=bearer(api_keys[Scope.SCHEDULER]))
        assert_problem(response, 405, "method_not_allowed")
        allowed = {m.strip() for m in response.headers["allow"].split(",")}
        assert allowed == {"GET", "PATCH", "DELETE"}
        collection = await client.put("/v1/bookings")
        assert {m.strip() for m in collection.headers["allow"].split(",")} == {"GET", "POST"}
