"""Limits that cannot be walked around: a body limit before parsing, one failure limit for
every credential-bearing endpoint (by address and by credential prefix), X-Forwarded-For only
from configured proxies, an in-memory limiter that forgets idle keys rather than everything,
and LiveKit webhook deduplication that survives a restart without Redis."""

from __future__ import annotations

import base64
import hashlib
import secrets
from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest
from fastapi import FastAPI
from google.protobuf import json_format
from livekit import api as lk
from livekit.protocol import models
from livekit.protocol.webhook import WebhookEvent
from sqlalchemy import select

from api.app import create_app
from core.accounts import Scope
from core.bookings import Booking
from core.clock import ManualClock
from core.ratelimit import MemoryRateLimiter
from core.runtime import Runtime
from core.settings import Settings
from tests.integration.test_join import clear_of_window_edges
from tests.support.bookings import bearer, book, booking_body, credential_of, row_counts
from tests.support.consent_bookings import seed_booking
from tests.support.databases import REDIS_URL
from tests.support.livekit import LiveKitServer

PROBLEM = "application/problem+json"


def client_at(app: FastAPI, address: str) -> httpx.AsyncClient:
    transport = httpx.ASGITransport(app=app, client=(address, 40000))
    return httpx.AsyncClient(transport=transport, base_url="http://testserver")


class TestBodyLimit:
    @pytest.fixture
    def settings_overrides(self) -> dict[str, Any]:
        return {"max_body_bytes": 64 * 1024}

    async def test_a_body_over_the_limit_is_413_before_it_is_parsed(
        self, client: httpx.AsyncClient, api_keys: dict[Scope, str], runtime: Runtime
    ) -> None:
        body = booking_body(runtime.clock.now(), stated_purpose="x" * 1000)
        body["padding"] = "y" * (100 * 1024)  # would be a 422 (extra field) once parsed
        headers = bearer(api_keys[Scope.SCHEDULER])
        declared = await client.post("/v1/bookings", json=body, headers=headers)
        assert declared.status_code == 413
        assert declared.headers["content-type"] == PROBLEM
        assert declared.json()["code"] == "payload_too_large"

        async def chunks() -> AsyncIterator[bytes]:  # no Content-Length: counted as it comes
            yield b'{"title": "'
            for _ in range(100):
                yield b"z" * 1024
            yield b'"}'

        streamed = await client.post(
            "/v1/bookings", content=chunks(),
            headers={**headers, "Content-Type": "application/json"},
        )
        assert streamed.status_code == 413
        assert streamed.json()["code"] == "payload_too_large"
        joined = await client.post("/v1/join", content=chunks(),
                                   headers={"Content-Type": "application/json"})
        assert joined.status_code == 413
        assert await row_counts(runtime) == (0, 0)
        small = await client.post("/v1/bookings", json=booking_body(runtime.clock.now()),
                                  headers=headers)
        assert small.status_code == 201


class TestCredentialLimit:
    @pytest.fixture(params=["memory", "redis"])
    def settings_overrides(self, request: pytest.FixtureRequest, redis_prefix: str) -> Any:
        values: dict[str, Any] = {"join_failures_per_minute": 3, "redis_prefix": redis_prefix}
        if request.param == "redis":
            values["redis_url"] = REDIS_URL
        return values

    async def test_guessing_through_the_consent_header_is_limited_but_a_valid_link_is_not(
        self, app: FastAPI, client: httpx.AsyncClient, api_keys: dict[Scope, str],
        clock: ManualClock,
    ) -> None:
        created = await book(client, api_keys[Scope.SCHEDULER], clock.now())
        good = credential_of(created["participants"][1])
        await clear_of_window_edges()
        async with client_at(app, "203.0.113.7") as guesser:
            for attempt in range(3):
                miss = await guesser.get("/v1/consent",
                                         headers={"X-Join-Credential": f"{attempt}" * 43})
                assert miss.status_code == 404
            # Every endpoint taking a credential counts against the same limit.
            limited = await guesser.get(f"/v1/bookings/{created['id']}/recordings",
                                        headers={"X-Join-Credential": "Q" * 43})
            assert limited.status_code == 429
            assert limited.headers["content-type"] == PROBLEM
            assert 1 <= int(limited.headers["retry-after"]) <= 60
            joined = await guesser.post("/v1/join", json={"credential": "R" * 43})
            assert joined.status_code == 429
            # The valid link from the same address still works.
            mine = await guesser.get("/v1/consent", headers={"X-Join-Credential": good})
            assert mine.status_code == 200
            assert (await guesser.post("/v1/join", json={"credential": good})).status_code == 200

    async def test_a_link_guessed_from_many_addresses_is_limited_by_its_prefix(
        self, app: FastAPI, client: httpx.AsyncClient, api_keys: dict[Scope, str],
        clock: ManualClock,
    ) -> None:
        created = await book(client, api_keys[Scope.SCHEDULER], clock.now())
        good = credential_of(created["participants"][1])
        await clear_of_window_edges()
        for index in range(3):
            guess = good[:8] + secrets.token_urlsafe(32)[:35]
            async with client_at(app, f"198.51.100.{index + 1}") as guesser:
                miss = await guesser.get("/v1/consent", headers={"X-Join-Credential": guess})
                assert miss.status_code == 404
        async with client_at(app, "198.51.100.99") as fresh:
            guess = good[:8] + secrets.token_urlsafe(32)[:35]
            refused = await fresh.get("/v1/consent", headers={"X-Join-Credential": guess})
            assert refused.status_code == 429
            other = credential_of(created["participants"][0])  # another prefix: unaffected
            assert other[:8] != good[:8]
            ok = await fresh.get("/v1/consent", headers={"X-Join-Credential": other})
            assert ok.status_code == 200


class TestForwardedFor:
    @pytest.fixture
    def settings_overrides(self) -> dict[str, Any]:
        return {"join_failures_per_minute": 3}

    async def test_rotating_x_forwarded_for_does_not_dodge_the_limit_by_default(
        self, client: httpx.AsyncClient
    ) -> None:
        await clear_of_window_edges()
        statuses = []
        for index in range(5):
            response = await client.post(
                "/v1/join", json={"credential": f"{index}" * 43},
                headers={"X-Forwarded-For": f"192.0.2.{index}"},
            )
            statuses.append(response.status_code)
        assert statuses == [404, 404, 404, 429, 429]


class TestTrustedProxy:
    @pytest.fixture
    def settings_overrides(self) -> dict[str, Any]:
        return {"join_failures_per_minute": 3, "trusted_proxies": ["10.0.0.0/8"]}

    async def test_the_forwarded_client_counts_only_behind_a_configured_proxy(
        self, app: FastAPI
    ) -> None:
        await clear_of_window_edges()
        async with client_at(app, "10.1.2.3") as proxy:
            for index in range(3):
                response = await proxy.post(
                    "/v1/join", json={"credential": f"{index}" * 43},
                    headers={"X-Forwarded-For": "192.0.2.10"},
                )
                assert response.status_code == 404
            limited = await proxy.post("/v1/join", json={"credential": "A" * 43},
                                       headers={"X-Forwarded-For": "192.0.2.10"})
            assert limited.status_code == 429
            # Another client behind the same proxy is its own address; a spoofed hop in
            # front of the real one does not help the limited client either.
            other = await proxy.post("/v1/join", json={"credential": "B" * 43},
                                     headers={"X-Forwarded-For": "192.0.2.11"})
            assert other.status_code == 404
            spoofed = await proxy.post("/v1/join", json={"credential": "C" * 43},
                                       headers={"X-Forwarded-For": "192.0.2.77, 192.0.2.10"})
            assert spoofed.status_code == 429
        async with client_at(app, "203.0.113.50") as direct:  # not a proxy: header ignored
            for index in range(3):
                await direct.post("/v1/join", json={"credential": f"{index + 5}" * 43},
                                  headers={"X-Forwarded-For": f"192.0.2.{100 + index}"})
            limited = await direct.post("/v1/join", json={"credential": "D" * 43},
                                        headers={"X-Forwarded-For": "192.0.2.200"})
            assert limited.status_code == 429


async def test_the_memory_limiter_forgets_idle_keys_not_busy_ones() -> None:
    limiter = MemoryRateLimiter(max_keys=4)
    window = 10**9  # one window for the whole test
    for _ in range(3):
        await limiter.hit("busy", 2, window)
    for index in range(50):  # a flood of new keys
        await limiter.hit(f"new-{index}", 2, window)
        await limiter.hit("busy", 2, window)
    assert not (await limiter.peek("busy", 2, window)).allowed
    assert (await limiter.peek("new-0", 2, window)).count == 0  # forgotten, not leaked


class TestWebhookReplay:
    @pytest.fixture
    def settings_overrides(self, livekit_server: LiveKitServer) -> dict[str, Any]:
        return {
            "media_mode": "livekit",
            "livekit_url": livekit_server.url,
            "livekit_api_key": livekit_server.key,
            "livekit_api_secret": livekit_server.secret,
            "livekit_timeout_s": 2,
        }

    async def test_a_replayed_webhook_is_a_duplicate_after_a_restart_without_redis(
        self, client: httpx.AsyncClient, runtime: Runtime, settings: Settings,
        clock: ManualClock, livekit_server: LiveKitServer,
    ) -> None:
        assert settings.redis_url is None
        seeded = await seed_booking(runtime)
        async with runtime.db.session() as session:
            room = await session.scalar(
                select(Booking.room_name).where(Booking.id == seeded.booking_id)
            )
        assert room is not None
        event = WebhookEvent(
            event="participant_joined", id=f"EV_{secrets.token_hex(6)}",
            room=models.Room(name=room),
            participant=models.ParticipantInfo(identity=str(seeded.people[1].id)),
        )
        body = json_format.MessageToJson(event).encode()
        digest = base64.b64encode(hashlib.sha256(body).digest()).decode()
        token = lk.AccessToken(livekit_server.key, livekit_server.secret).with_sha256(
            digest
        ).to_jwt()
        headers = {"Authorization": token, "Content-Type": "application/webhook+json"}
        first = await client.post("/v1/livekit/webhook", content=body, headers=headers)
        assert first.json() == {"status": "ok", "id": event.id}

        restarted = create_app(settings, clock=clock)
        async with restarted.router.lifespan_context(restarted):
            transport = httpx.ASGITransport(app=restarted)
            async with httpx.AsyncClient(transport=transport, base_url="http://t") as again:
                replay = await again.post("/v1/livekit/webhook", content=body, headers=headers)
        assert replay.status_code == 200
        assert replay.json() == {"status": "duplicate", "id": event.id}
