"""POST /v1/join as served ahead of FastAPI (api/routers/join.py): bodies it does not take as
is still get the route's problem+json, failures are counted and limited as before, the answer
is exactly what the JoinGrant model writes, and the route stays documented and measured."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from datetime import timedelta
from typing import Any

import httpx
import pytest
from livekit import api as lk

from core.accounts import Scope
from core.clock import ManualClock
from signaling.join import JoinGrant
from tests.integration.test_join import clear_of_window_edges
from tests.support.bookings import bearer, book, credential_of
from tests.support.livekit import LK_KEY, LK_SECRET, LiveKitServer

pytestmark = pytest.mark.usefixtures("database_url")

PROBLEM = "application/problem+json"


@pytest.fixture
def settings_overrides() -> dict[str, Any]:
    return {"join_failures_per_minute": 3}


async def post(
    client: httpx.AsyncClient, content: bytes, content_type: str | None = "application/json",
    **headers: str,
) -> httpx.Response:
    if content_type is not None:
        headers["content-type"] = content_type
    return await client.post("/v1/join", content=content, headers=headers)


@pytest.mark.parametrize(
    ("content", "content_type", "loc"),
    [
        (b'{"credential": "abc", "extra": 1}', "application/json", ["body", "extra"]),
        (b'{"credential": ""}', "application/json", ["body", "credential"]),
        (b'{"credential": null}', "application/json", ["body", "credential"]),
        (b'{"credential": ["abc"]}', "application/json", ["body", "credential"]),
        (json.dumps({"credential": "x" * 201}).encode(), "application/json",
         ["body", "credential"]),
        (json.dumps({"credential": "x" * 5000}).encode(), "application/json",
         ["body", "credential"]),
        (b'["credential"]', "application/json", ["body"]),
        (b'{"credential": "abc"', "application/json", ["body", 20]),
        (b"credential=abc", "application/x-www-form-urlencoded", ["body"]),
        (b'{"credential": "abc"}', "text/plain", ["body"]),
        (b'{"credential": "abc"}', None, ["body"]),
    ],
)
async def test_bodies_not_taken_as_is_get_the_routes_422(
    client: httpx.AsyncClient, content: bytes, content_type: str | None, loc: list[Any]
) -> None:
    response = await post(client, content, content_type)
    assert response.status_code == 422, response.text
    assert response.headers["content-type"] == PROBLEM
    problem = response.json()
    assert problem["code"] == "invalid_input"
    assert problem["instance"] == "/v1/join"
    assert problem["errors"][0]["loc"] == loc
    assert "x-request-id" in response.headers


async def test_malformed_bodies_do_not_count_as_failed_joins(
    client: httpx.AsyncClient, api_keys: dict[Scope, str], clock: ManualClock
) -> None:
    created = await book(client, api_keys[Scope.SCHEDULER], clock.now())
    await clear_of_window_edges()
    for _ in range(5):
        assert (await post(client, b'{"credential": 7}')).status_code == 422
    good = credential_of(created["participants"][1])
    assert (await post(client, json.dumps({"credential": good}).encode())).status_code == 200


async def test_unknown_links_404_then_429_with_the_request_id(
    client: httpx.AsyncClient, api_keys: dict[Scope, str], clock: ManualClock
) -> None:
    created = await book(client, api_keys[Scope.SCHEDULER], clock.now())
    await clear_of_window_edges()
    for attempt in range(3):
        miss = await post(
            client, json.dumps({"credential": f"{attempt}" * 43}).encode(),
            **{"x-request-id": f"req-{attempt}"},
        )
        assert miss.status_code == 404
        assert miss.headers["content-type"] == PROBLEM
        assert miss.headers["x-request-id"] == f"req-{attempt}"
        assert miss.json() == {
            "type": "urn:callgate:problem:not_found", "title": "Not found", "status": 404,
            "detail": "this join link is not valid", "code": "not_found",
            "instance": "/v1/join",
        }
    blocked = await post(client, json.dumps({"credential": "Z" * 43}).encode())
    assert blocked.status_code == 429
    assert blocked.headers["content-type"] == PROBLEM
    assert blocked.json()["code"] == "rate_limited"
    assert 1 <= int(blocked.headers["retry-after"]) <= 60
    good = credential_of(created["participants"][0])  # a valid link is not locked out
    assert (await post(client, json.dumps({"credential": good}).encode())).status_code == 200


async def test_a_body_in_several_chunks_joins(
    client: httpx.AsyncClient, api_keys: dict[Scope, str], clock: ManualClock
) -> None:
    created = await book(client, api_keys[Scope.SCHEDULER], clock.now())
    body = json.dumps({"credential": credential_of(created["participants"][0])}).encode()

    async def chunks() -> AsyncIterator[bytes]:
        for start in range(0, len(body), 7):
            yield body[start:start + 7]

    response = await client.post(
        "/v1/join", content=chunks(), headers={"content-type": "application/json"}
    )
    assert response.status_code == 200, response.text
    assert response.json()["participant"]["id"] == created["participants"][0]["id"]


async def test_builtin_grant_is_exactly_what_the_model_writes(
    client: httpx.AsyncClient, api_keys: dict[Scope, str], clock: ManualClock
) -> None:
    created = await book(client, api_keys[Scope.SCHEDULER], clock.now() + timedelta(minutes=3))
    response = await client.post(
        "/v1/join", json={"credential": credential_of(created["participants"][0])}
    )
    assert response.status_code == 200
    assert response.headers["content-type"] == "application/json"
    assert response.headers["cache-control"] == "no-store"
    assert response.headers["content-length"] == str(len(response.content))
    model = JoinGrant.model_validate_json(response.content)
    assert model.model_dump_json().encode() == response.content


async def test_join_is_counted_under_its_route(
    client: httpx.AsyncClient, api_keys: dict[Scope, str], clock: ManualClock
) -> None:
    created = await book(client, api_keys[Scope.SCHEDULER], clock.now())
    credential = credential_of(created["participants"][0])
    assert (await client.post("/v1/join", json={"credential": credential})).status_code == 200
    assert (await client.post("/v1/join", json={"credential": "B" * 43})).status_code == 404
    text = (await client.get("/metrics", headers=bearer(api_keys[Scope.METRICS]))).text
    for status in ("200", "404"):
        line = f'callgate_http_requests_total{{method="POST",route="/v1/join",status="{status}"}}'
        assert f"{line} 1.0" in text


async def test_openapi_documents_the_join(client: httpx.AsyncClient) -> None:
    spec = (await client.get("/openapi.json")).json()
    operation = spec["paths"]["/v1/join"]["post"]
    body = operation["requestBody"]["content"]["application/json"]["schema"]
    assert body["$ref"].endswith("/JoinRequest")
    ok = operation["responses"]["200"]["content"]["application/json"]["schema"]
    assert ok["$ref"].endswith("/JoinGrant")
    assert {"403", "404", "410", "422", "429"} <= operation["responses"].keys()
    assert operation["responses"]["404"]["content"].keys() == {PROBLEM}
    assert spec["components"]["schemas"]["JoinRequest"]["properties"]["credential"][
        "maxLength"
    ] == 200


class TestLiveKit:
    @pytest.fixture
    def settings_overrides(self, livekit_server: LiveKitServer) -> dict[str, Any]:
        return {
            "media_mode": "livekit",
            "livekit_url": livekit_server.url,
            "livekit_api_key": LK_KEY,
            "livekit_api_secret": LK_SECRET,
        }

    async def test_livekit_grant_is_exactly_what_the_model_writes(
        self, client: httpx.AsyncClient, api_keys: dict[Scope, str], clock: ManualClock
    ) -> None:
        created = await book(client, api_keys[Scope.SCHEDULER], clock.now(), minutes=30)
        host = created["participants"][0]
        response = await client.post("/v1/join", json={"credential": credential_of(host)})
        assert response.status_code == 200, response.text
        model = JoinGrant.model_validate_json(response.content)
        assert model.model_dump_json().encode() == response.content
        assert model.livekit is not None
        claims = lk.TokenVerifier(LK_KEY, LK_SECRET).verify(model.livekit.token)
        assert claims.identity == host["id"]
        assert claims.video is not None
        assert claims.video.room == created["room"]["name"]
        assert claims.video.room_admin is True
