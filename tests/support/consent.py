"""Decisions through the real participant consent API, as the call page makes them."""

from __future__ import annotations

from typing import Any, Protocol

import httpx


class Holder(Protocol):
    """Anyone the tests let in by join link (every test `Person` has these headers)."""

    @property
    def headers(self) -> dict[str, str]: ...


async def decide(
    client: httpx.AsyncClient, who: Holder, purpose: str, decision: str = "granted"
) -> dict[str, Any]:
    """Record `decision` on `purpose`, naming the notice the API shows for it; the new ledger
    entry (asserting 201)."""
    overview = (await client.get("/v1/consent", headers=who.headers)).json()
    notice = next(p["notice"] for p in overview["purposes"] if p["purpose"] == purpose)
    body = {"purpose": purpose, "decision": decision, "notice_sha256": notice["sha256"]}
    response = await client.post("/v1/consent", headers=who.headers, json=body)
    assert response.status_code == 201, response.text
    entry: dict[str, Any] = response.json()
    return entry
