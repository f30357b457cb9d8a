"""Operations endpoints and the error format, as an operator or client sees them."""

from __future__ import annotations

import httpx

from core.accounts import Scope
from tests.support.bookings import bearer


async def test_healthz_and_readyz_report_ok(client: httpx.AsyncClient) -> None:
    assert (await client.get("/healthz")).json() == {"status": "ok"}
    ready = await client.get("/readyz")
    assert ready.status_code == 200
    assert ready.json()["checks"] == {"database": "ok", "consent_ledger": "ok"}


async def test_unknown_route_is_problem_json_with_request_id(client: httpx.AsyncClient) -> None:
    response = await client.get("/nope", headers={"X-Request-ID": "abc-123"})
    assert response.status_code == 404
    assert response.headers["content-type"] == "application/problem+json"
    assert response.headers["x-request-id"] == "abc-123"
    body = response.json()
    assert body["status"] == 404
    assert body["code"] == "not_found"


async def test_metrics_need_a_metrics_or_admin_key(
    client: httpx.AsyncClient, api_keys: dict[Scope, str]
) -> None:
    await client.get("/healthz")
    anonymous = await client.get("/metrics")
    assert anonymous.status_code == 401
    assert anonymous.headers["content-type"] == "application/problem+json"
    scheduler = await client.get("/metrics", headers=bearer(api_keys[Scope.SCHEDULER]))
    assert scheduler.status_code == 403
    for scope in (Scope.METRICS, Scope.ADMIN):
        text = (await client.get("/metrics", headers=bearer(api_keys[scope]))).text
        assert 'callgate_http_requests_total{method="GET",route="/healthz",status="200"}' in text
    denied = await client.get("/v1/bookings", headers=bearer(api_keys[Scope.METRICS]))
    assert denied.status_code == 403


async def test_openapi_is_served(client: httpx.AsyncClient) -> None:
    spec = (await client.get("/openapi.json")).json()
    assert spec["info"]["title"] == "callgate"
    assert "/readyz" in spec["paths"]
