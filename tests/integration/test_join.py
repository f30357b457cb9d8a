"""POST /v1/join (and the scheduler's token endpoint): window, cancellation, unknown vs revoked,
rate limits, built-in tickets and ICE, LiveKit tokens checked with livekit-api's TokenVerifier."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import time
from datetime import UTC, datetime, timedelta
from typing import Any

import asyncpg
import httpx
import jwt
import pytest
from livekit import api as lk

from core.accounts import Scope
from core.clock import ManualClock
from core.runtime import Runtime
from signaling.credentials import FAILURE_WINDOW_S
from signaling.tickets import redeem_ticket
from tests.support import PG_DSN, REDIS_URL
from tests.support.bookings import bearer, book, credential_of
from tests.support.livekit import LK_KEY, LK_SECRET, LiveKitServer

pytestmark = pytest.mark.usefixtures("database_url")

TURN_SECRET = "turn-shared-secret-for-tests"


def parse_time(value: str) -> datetime:
    return datetime.fromisoformat(value.replace("Z", "+00:00"))


@pytest.fixture
def settings_overrides() -> dict[str, Any]:
    return {
        "stun_urls": ["stun:stun.example.org:3478"],
        "turn_urls": ["turn:turn.example.org:3478?transport=udp"],
        "turn_secret": TURN_SECRET,
        "turn_credential_ttl_s": 3600,
        "join_failures_per_minute": 3,
    }


async def join(client: httpx.AsyncClient, credential: str) -> httpx.Response:
    return await client.post("/v1/join", json={"credential": credential})


async def test_builtin_join_inside_the_window(
    client: httpx.AsyncClient, api_keys: dict[Scope, str], clock: ManualClock, runtime: Runtime
) -> None:
    created = await book(
        client, api_keys[Scope.SCHEDULER], clock.now() + timedelta(minutes=5), minutes=30
    )
    person = created["participants"][1]
    response = await join(client, credential_of(person))
    assert response.status_code == 200, response.text
    assert response.headers["cache-control"] == "no-store"
    body = response.json()
    assert body["mode"] == "builtin"
    assert body["livekit"] is None
    assert body["participant"] == {
        "id": person["id"], "display_name": person["display_name"], "role": "client"
    }
    assert body["booking"]["id"] == created["id"]
    assert body["booking"]["requested_purposes"] == ["recording.audio"]
    closes = parse_time(body["window"]["closes_at"])
    assert closes == parse_time(created["ends_at"])
    assert parse_time(body["window"]["opens_at"]) == parse_time(created["starts_at"]) - timedelta(
        minutes=10
    )
    builtin = body["builtin"]
    assert builtin["ws_url"] == f"ws://testserver/v1/rooms/{created['room']['name']}/ws"
    expires = parse_time(builtin["ticket_expires_at"])
    assert clock.now() < expires <= clock.now() + timedelta(seconds=60)
    claims = await redeem_ticket(runtime.db, runtime.keys, builtin["ticket"], clock.now())
    assert str(claims.participant_id) == person["id"]
    assert str(claims.booking_id) == created["id"]

    stun, turn = builtin["ice_servers"]
    assert stun == {"urls": ["stun:stun.example.org:3478"], "username": None, "credential": None}
    assert turn["urls"] == ["turn:turn.example.org:3478?transport=udp"]
    expiry, _, user = turn["username"].partition(":")
    assert user == person["id"]
    assert int(expiry) <= closes.timestamp()  # 35 min left: the window end, not the 1 h TTL
    assert int(expiry) == int(closes.timestamp())
    mac = hmac.new(TURN_SECRET.encode(), turn["username"].encode(), hashlib.sha1).digest()
    assert turn["credential"] == base64.b64encode(mac).decode()


async def test_turn_credential_uses_the_ttl_when_the_window_is_longer(
    client: httpx.AsyncClient, api_keys: dict[Scope, str], clock: ManualClock
) -> None:
    created = await book(client, api_keys[Scope.SCHEDULER], clock.now(), minutes=180)
    body = (await join(client, credential_of(created["participants"][0]))).json()
    turn = body["builtin"]["ice_servers"][1]
    expiry = int(turn["username"].split(":")[0])
    assert expiry == int((clock.now() + timedelta(hours=1)).timestamp())


async def test_before_the_window_403_with_its_times_after_it_403(
    client: httpx.AsyncClient, api_keys: dict[Scope, str], clock: ManualClock
) -> None:
    starts = clock.now() + timedelta(hours=2)
    created = await book(client, api_keys[Scope.SCHEDULER], starts, minutes=30)
    credential = credential_of(created["participants"][0])
    early = await join(client, credential)
    assert early.status_code == 403
    assert early.headers["content-type"] == "application/problem+json"
    problem = early.json()
    assert problem["code"] == "outside_join_window"
    assert parse_time(problem["starts_at"]) == starts
    assert parse_time(problem["opens_at"]) == starts - timedelta(minutes=10)
    assert parse_time(problem["closes_at"]) == starts + timedelta(minutes=30)

    clock.set(starts - timedelta(minutes=10))
    assert (await join(client, credential)).status_code == 200
    clock.set(starts + timedelta(minutes=30))
    late = await join(client, credential)
    assert late.status_code == 403
    assert late.json()["code"] == "outside_join_window"


async def test_cancelled_410_unknown_and_revoked_identical_404(
    client: httpx.AsyncClient, api_keys: dict[Scope, str], clock: ManualClock
) -> None:
    key = api_keys[Scope.SCHEDULER]
    created = await book(client, key, clock.now(), clients=2)
    host, first, second = created["participants"]
    revoked = await client.post(
        f"/v1/bookings/{created['id']}/participants/{first['id']}/revoke", headers=bearer(key)
    )
    assert revoked.status_code == 200
    old = await join(client, credential_of(first))
    never = await join(client, "A" * 43)
    assert old.status_code == never.status_code == 404
    assert old.json() == never.json()
    assert old.headers.keys() - {"x-request-id"} == never.headers.keys() - {"x-request-id"}

    await client.delete(f"/v1/bookings/{created['id']}", headers=bearer(key))
    gone = await join(client, credential_of(second))
    assert gone.status_code == 410
    assert gone.json()["code"] == "gone"
    token = await client.post(
        f"/v1/bookings/{created['id']}/participants/{host['id']}/token", headers=bearer(key)
    )
    assert token.status_code == 410


async def test_malformed_join_bodies_are_422(client: httpx.AsyncClient) -> None:
    for body in ({}, {"credential": ""}, {"credential": 42}, {"credential": "x" * 201}):
        response = await client.post("/v1/join", json=body)
        assert response.status_code == 422, body
        assert response.json()["errors"][0]["loc"] == ["body", "credential"]


async def test_scheduler_token_endpoint_gives_the_join_payload(
    client: httpx.AsyncClient, api_keys: dict[Scope, str], clock: ManualClock
) -> None:
    key = api_keys[Scope.SCHEDULER]
    created = await book(client, key, clock.now())
    host = created["participants"][0]
    via_api = await client.post(
        f"/v1/bookings/{created['id']}/participants/{host['id']}/token", headers=bearer(key)
    )
    via_link = await join(client, credential_of(host))
    assert via_api.status_code == via_link.status_code == 200
    a, b = via_api.json(), via_link.json()
    assert a["participant"] == b["participant"]
    assert a["booking"] == b["booking"]
    assert a["window"] == b["window"]
    assert a["builtin"]["ws_url"] == b["builtin"]["ws_url"]
    assert a["builtin"]["ticket"] != b["builtin"]["ticket"]  # each is single-use


async def clear_of_window_edges(window_s: int = FAILURE_WINDOW_S, margin_s: int = 15) -> None:
    """Wait until neither fixed-window counter (monotonic: memory, wall clock: Redis) is
    about to roll over, so the failures of one test land in one window."""
    for _ in range(window_s):
        edges = (time.monotonic() % window_s, time.time() % window_s)
        if all(position < window_s - margin_s for position in edges):
            return
        await asyncio.sleep(1)


class TestRateLimit:
    @pytest.fixture(params=["memory", "redis"])
    def settings_overrides(self, request: pytest.FixtureRequest, redis_prefix: str) -> Any:
        values: dict[str, Any] = {"join_failures_per_minute": 3, "redis_prefix": redis_prefix}
        if request.param == "redis":
            values["redis_url"] = REDIS_URL
        return values

    async def test_repeated_failures_from_one_address_get_429_but_not_a_valid_link(
        self, client: httpx.AsyncClient, api_keys: dict[Scope, str], clock: ManualClock
    ) -> None:
        created = await book(client, api_keys[Scope.SCHEDULER], clock.now())
        await clear_of_window_edges()
        good = credential_of(created["participants"][0])
        assert (await join(client, good)).status_code == 200  # successes are not counted
        for attempt in range(3):
            miss = await join(client, f"{attempt}" * 43)
            assert miss.status_code == 404
        blocked = await join(client, "Z" * 43)
        assert blocked.status_code == 429
        assert blocked.json()["code"] == "rate_limited"
        assert 1 <= int(blocked.headers["retry-after"]) <= 60
        # A valid link from a limited address still works (one NAT, many people).
        assert (await join(client, good)).status_code == 200


class TestLiveKit:
    @pytest.fixture
    def settings_overrides(self, livekit_server: LiveKitServer) -> dict[str, Any]:
        return {
            "media_mode": "livekit",
            "livekit_url": livekit_server.url,
            "livekit_api_key": LK_KEY,
            "livekit_api_secret": LK_SECRET,
        }

    async def test_tokens_pass_the_verifier_with_identity_room_grants_and_expiry(
        self, client: httpx.AsyncClient, api_keys: dict[Scope, str], clock: ManualClock
    ) -> None:
        key = api_keys[Scope.SCHEDULER]
        created = await book(client, key, clock.now() + timedelta(minutes=5), minutes=45)
        other = await book(client, key, clock.now(), minutes=45)
        verifier = lk.TokenVerifier(LK_KEY, LK_SECRET)
        ends = parse_time(created["ends_at"])
        admin_flags = []
        for person in created["participants"]:
            response = await join(client, credential_of(person))
            assert response.status_code == 200, response.text
            body = response.json()
            assert body["mode"] == "livekit"
            assert body["builtin"] is None
            grant = body["livekit"]
            claims = verifier.verify(grant["token"])
            assert claims.identity == person["id"]
            assert claims.name == person["display_name"]
            assert claims.video is not None
            assert claims.video.room_join is True
            assert claims.video.room == created["room"]["name"]
            assert claims.video.room != other["room"]["name"]
            assert claims.video.can_update_own_metadata is not True
            admin_flags.append(bool(claims.video.room_admin))
            exp = jwt.decode(grant["token"], options={"verify_signature": False})["exp"]
            assert exp <= ends.timestamp()
            assert exp == int(ends.timestamp())
            assert parse_time(grant["expires_at"]) == ends
        assert admin_flags == [True, False]  # host moderates, the client does not

    async def test_forged_and_expired_tokens_are_refused(
        self, client: httpx.AsyncClient, api_keys: dict[Scope, str], clock: ManualClock
    ) -> None:
        verifier = lk.TokenVerifier(LK_KEY, LK_SECRET)
        created = await book(client, api_keys[Scope.SCHEDULER], clock.now())
        token = (await join(client, credential_of(created["participants"][1]))).json()
        forged = lk.AccessToken(LK_KEY, "not-the-secret-" + "x" * 32).with_identity(
            created["participants"][1]["id"]
        ).with_grants(lk.VideoGrants(room_join=True, room=created["room"]["name"])).to_jwt()
        with pytest.raises(jwt.InvalidSignatureError):
            verifier.verify(forged)
        header, payload, signature = token["livekit"]["token"].split(".")
        tampered = ".".join([header, payload[:-2] + ("AA" if payload[-2:] != "AA" else "BB"),
                             signature])
        with pytest.raises(jwt.PyJWTError):
            verifier.verify(tampered)

        # A session that ended two hours ago, joined (on the clock) while it ran: the token
        # carries the real window end, so the verifier refuses it now.
        past = datetime.now(UTC).replace(microsecond=0) - timedelta(hours=3)
        clock.set(past + timedelta(minutes=30))  # booked while it was still to come
        old = await book(client, api_keys[Scope.SCHEDULER], past, minutes=60)
        stale = (await join(client, credential_of(old["participants"][0]))).json()
        with pytest.raises(jwt.ExpiredSignatureError):
            verifier.verify(stale["livekit"]["token"])

    async def test_rescheduled_window_bounds_new_tokens(
        self, client: httpx.AsyncClient, api_keys: dict[Scope, str], clock: ManualClock
    ) -> None:
        key = api_keys[Scope.SCHEDULER]
        created = await book(client, key, clock.now(), minutes=120)
        new_end = clock.now() + timedelta(minutes=20)
        moved = await client.patch(
            f"/v1/bookings/{created['id']}",
            json={"starts_at": clock.now().isoformat(), "ends_at": new_end.isoformat()},
            headers=bearer(key),
        )
        assert moved.status_code == 200
        host = created["participants"][0]
        for response in (
            await join(client, credential_of(host)),
            await client.post(
                f"/v1/bookings/{created['id']}/participants/{host['id']}/token",
                headers=bearer(key),
            ),
        ):
            token = response.json()["livekit"]["token"]
            claims = lk.TokenVerifier(LK_KEY, LK_SECRET).verify(token)
            assert claims.identity == host["id"]
            exp = jwt.decode(token, options={"verify_signature": False})["exp"]
            assert exp <= new_end.timestamp()


class TestDatabaseRestart:
    @pytest.fixture
    def backend(self) -> str:
        return "postgres"

    async def test_join_recovers_when_database_connections_are_killed(
        self, client: httpx.AsyncClient, api_keys: dict[Scope, str], clock: ManualClock,
        settings: Any,
    ) -> None:
        created = await book(client, api_keys[Scope.SCHEDULER], clock.now())
        credential = credential_of(created["participants"][0])
        assert (await join(client, credential)).status_code == 200
        dbname = settings.database_url.rsplit("/", 1)[1]
        admin = await asyncpg.connect(PG_DSN)
        try:
            killed = await admin.fetchval(
                "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity "
                "WHERE datname = $1 AND pid <> pg_backend_pid()",
                dbname,
            )
        finally:
            await admin.close()
        assert killed >= 1
        again = await join(client, credential)
        assert again.status_code == 200, again.text
        assert again.json()["participant"]["id"] == created["participants"][0]["id"]
