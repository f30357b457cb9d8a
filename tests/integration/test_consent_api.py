"""The participant consent API and the live gate that obeys it, on SQLite and PostgreSQL."""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import uuid
from collections.abc import AsyncIterator
from datetime import datetime
from pathlib import Path
from typing import Any

import httpx
import pytest
from fastapi import FastAPI

from api.app import create_app
from consent.decisions import DecisionRequest, do_decide
from consent.live import LiveGate
from consent.notices import current_notice
from consent.purposes import Actor, Decision, Purpose, RecordingPolicy
from core.accounts import Scope
from core.bookings import BookingStatus
from core.bus import BusEvent, InProcessBus, Subscription, Topic, decode, encode
from core.clock import ManualClock
from core.events import ConsentChanged
from core.runtime import Runtime
from core.settings import Settings
from tests.support.bookings import bearer
from tests.support.consent_bookings import seed_booking
from tests.support.waiting import eventually


async def decide(
    client: httpx.AsyncClient, headers: dict[str, str], purpose: str, decision: str
) -> httpx.Response:
    overview = (await client.get("/v1/consent", headers=headers)).json()
    notice = next(p["notice"] for p in overview["purposes"] if p["purpose"] == purpose)
    body = {"purpose": purpose, "decision": decision, "notice_sha256": notice["sha256"]}
    return await client.post("/v1/consent", headers=headers, json=body)


async def test_get_lists_requested_purposes_with_their_notices(
    client: httpx.AsyncClient, runtime: Runtime
) -> None:
    seeded = await seed_booking(runtime, [Purpose.RECORDING_AUDIO, Purpose.AI_SUMMARY])
    response = await client.get("/v1/consent", headers=seeded.people[1].headers)
    assert response.status_code == 200
    body = response.json()
    assert body["booking_id"] == str(seeded.booking_id)
    assert body["subject_id"] == str(seeded.people[1].id)
    assert [p["purpose"] for p in body["purposes"]] == ["recording.audio", "ai.summary"]
    for item in body["purposes"]:
        notice = item["notice"]
        assert notice["sha256"] == hashlib.sha256(notice["text"].encode()).hexdigest()
        assert notice["language"] == "en"
        assert notice["version"] == 1
        assert item["decision"] is None
        assert item["decided_at"] is None
    summary = body["purposes"][1]["notice"]["text"]
    assert "OpenAI" in summary  # no AI provider configured: whom AI jobs talk to by default
    assert "kept for 90 days" in summary
    assert "withdraw" in summary


async def test_decision_is_recorded_published_and_shown(
    client: httpx.AsyncClient, runtime: Runtime, clock: ManualClock
) -> None:
    seeded = await seed_booking(runtime)
    person = seeded.people[1]
    async with runtime.bus.subscribe(Topic.CONSENT_CHANGED.value) as subscription:
        response = await decide(client, person.headers, "recording.audio", "granted")
        event = await asyncio.wait_for(anext(aiter(subscription)), 5)
    assert response.status_code == 201
    entry = response.json()
    assert entry["seq"] == 1
    assert entry["subject_id"] == str(person.id)
    assert entry["decision"] == "granted"
    assert entry["method"] == "web_dialog"
    assert entry["actor"] == "subject"
    assert entry["prev_hash"] == "0" * 64
    assert event == ConsentChanged(
        booking_id=seeded.booking_id,
        subject_id=person.id,
        purpose=Purpose.RECORDING_AUDIO,
        decision=Decision.GRANTED,
        entry_id=uuid.UUID(entry["id"]),
        seq=1,
        at=datetime.fromisoformat(entry["at"]),
        actor=Actor.SUBJECT,
        notice_id=uuid.UUID(entry["notice_id"]),
    )
    assert decode(encode(event)) == event  # what another node receives over Redis
    overview = (await client.get("/v1/consent", headers=person.headers)).json()
    audio = overview["purposes"][0]
    assert audio["decision"] == "granted"
    assert audio["decided_at"] == clock.now().isoformat()
    withdrawn = await decide(client, person.headers, "recording.audio", "withdrawn")
    assert withdrawn.status_code == 201
    assert withdrawn.json()["prev_hash"] == entry["entry_hash"]
    overview = (await client.get("/v1/consent", headers=person.headers)).json()
    assert overview["purposes"][0]["decision"] == "withdrawn"


async def test_unrequested_purpose_is_refused_and_nothing_is_logged(
    client: httpx.AsyncClient, runtime: Runtime, api_keys: dict[Scope, str]
) -> None:
    seeded = await seed_booking(runtime, [Purpose.RECORDING_AUDIO])
    notices = (await client.get("/v1/admin/consent-notices", headers=bearer(api_keys[Scope.ADMIN])))
    video = next(n for n in notices.json()["items"] if n["purpose"] == "recording.video")
    response = await client.post(
        "/v1/consent",
        headers=seeded.people[0].headers,
        json={
            "purpose": "recording.video", "decision": "granted", "notice_sha256": video["sha256"]
        },
    )
    assert response.status_code == 422
    assert response.headers["content-type"] == "application/problem+json"
    assert response.json()["code"] == "purpose_not_requested"
    assert response.json()["requested_purposes"] == ["recording.audio"]
    log = await client.get("/v1/admin/consent-log", headers=bearer(api_keys[Scope.ADMIN]))
    assert log.json()["items"] == []


async def test_stale_and_wrong_notice_hashes_are_refused(
    client: httpx.AsyncClient, runtime: Runtime, api_keys: dict[Scope, str]
) -> None:
    seeded = await seed_booking(runtime, [Purpose.RECORDING_AUDIO])
    headers = seeded.people[0].headers
    old = (await client.get("/v1/consent", headers=headers)).json()["purposes"][0]["notice"]
    published = await client.post(
        "/v1/admin/consent-notices",
        headers=bearer(api_keys[Scope.ADMIN]),
        json={"purpose": "recording.audio", "language": "en", "text": "New audio notice text."},
    )
    assert published.status_code == 201
    assert published.json()["version"] == 2
    body = {"purpose": "recording.audio", "decision": "granted", "notice_sha256": old["sha256"]}
    stale = await client.post("/v1/consent", headers=headers, json=body)
    assert stale.status_code == 409
    assert stale.json()["code"] == "notice_outdated"
    assert stale.json()["current_notice_sha256"] == published.json()["sha256"]
    wrong = await client.post(
        "/v1/consent", headers=headers, json={**body, "notice_sha256": "a" * 64}
    )
    assert wrong.status_code == 422
    assert wrong.json()["code"] == "notice_mismatch"
    malformed = await client.post(
        "/v1/consent", headers=headers, json={**body, "notice_sha256": "x"}
    )
    assert malformed.status_code == 422
    assert malformed.json()["code"] == "invalid_input"
    current = await decide(client, headers, "recording.audio", "granted")
    assert current.status_code == 201
    assert current.json()["notice_sha256"] == published.json()["sha256"]
    assert current.json()["notice_id"] == published.json()["id"]


async def test_cancelled_booking_is_gone_and_unknown_link_not_found(
    client: httpx.AsyncClient, runtime: Runtime
) -> None:
    seeded = await seed_booking(runtime, status=BookingStatus.CANCELLED)
    got = await client.get("/v1/consent", headers=seeded.people[0].headers)
    assert got.status_code == 410
    assert got.json()["code"] == "gone"
    body = {"purpose": "recording.audio", "decision": "granted", "notice_sha256": "0" * 64}
    posted = await client.post("/v1/consent", headers=seeded.people[0].headers, json=body)
    assert posted.status_code == 410
    unknown = await client.get("/v1/consent", headers={"X-Join-Credential": "A" * 43})
    assert unknown.status_code == 404
    assert unknown.json()["code"] == "not_found"


async def test_notice_follows_booking_language_with_english_fallback(
    settings: Settings, clock: ManualClock
) -> None:
    folder = settings.data_dir / "notices"
    folder.mkdir(parents=True)
    (folder / "recording.audio.de.md").write_text("Wir zeichnen Ihre Stimme auf.\n")
    app = create_app(settings, clock=clock)
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://t") as client:
            runtime: Runtime = app.state.runtime
            austrian = await seed_booking(
                runtime, [Purpose.RECORDING_AUDIO, Purpose.AI_AGENDA], language="de-AT"
            )
            body = (await client.get("/v1/consent", headers=austrian.people[0].headers)).json()
    audio, agenda = body["purposes"]
    assert audio["notice"]["language"] == "de"
    assert audio["notice"]["text"] == "Wir zeichnen Ihre Stimme auf.\n"
    assert agenda["notice"]["language"] == "en"


# -- the live gate -----------------------------------------------------------------------------


def gate_of(app: FastAPI) -> LiveGate:
    gate = app.state.services.gate
    assert isinstance(gate, LiveGate)
    return gate


async def test_live_gate_follows_decisions_from_the_bus(
    app: FastAPI, client: httpx.AsyncClient, runtime: Runtime
) -> None:
    gate = gate_of(app)
    seeded = await seed_booking(runtime, [Purpose.RECORDING_AUDIO, Purpose.RECORDING_VIDEO])
    host, guest = seeded.people
    await eventually(lambda: gate.healthy, "gate healthy")
    await gate.ensure_booking(seeded.booking_id)
    assert not gate.allows(seeded.booking_id, guest.id, Purpose.RECORDING_AUDIO)
    verdict = gate.explain(seeded.booking_id, guest.id, Purpose.RECORDING_AUDIO)
    assert verdict.reason == "no_decision"
    assert (await decide(client, guest.headers, "recording.audio", "granted")).status_code == 201
    await eventually(
        lambda: gate.allows(seeded.booking_id, guest.id, Purpose.RECORDING_AUDIO), "grant seen"
    )
    assert not gate.allows(seeded.booking_id, guest.id, Purpose.RECORDING_VIDEO)
    assert not gate.allows(seeded.booking_id, host.id, Purpose.RECORDING_AUDIO)
    assert not gate.allows(seeded.booking_id, guest.id, Purpose.AI_SUMMARY)
    assert (await decide(client, guest.headers, "recording.audio", "withdrawn")).status_code == 201
    await eventually(
        lambda: not gate.allows(seeded.booking_id, guest.id, Purpose.RECORDING_AUDIO),
        "withdrawal seen",
    )
    verdict = gate.explain(seeded.booking_id, guest.id, Purpose.RECORDING_AUDIO)
    assert verdict.reason == "withdrawn"


async def test_live_gate_all_or_nothing_counts_who_is_present(
    app: FastAPI, client: httpx.AsyncClient, runtime: Runtime
) -> None:
    gate = gate_of(app)
    seeded = await seed_booking(
        runtime, [Purpose.RECORDING_AUDIO], policy=RecordingPolicy.ALL_OR_NOTHING
    )
    host, guest = seeded.people
    await gate.ensure_booking(seeded.booking_id)
    gate.joined(seeded.booking_id, host.id)
    gate.joined(seeded.booking_id, guest.id)
    assert (await decide(client, host.headers, "recording.audio", "granted")).status_code == 201
    await eventually(
        lambda: gate.explain(seeded.booking_id, host.id, Purpose.RECORDING_AUDIO).reason
        == "someone_present_has_not_granted",
        "host's grant seen, guest still undecided",
    )
    gate.left(seeded.booking_id, guest.id)
    assert gate.allows(seeded.booking_id, host.id, Purpose.RECORDING_AUDIO)
    gate.joined(seeded.booking_id, guest.id)
    assert not gate.allows(seeded.booking_id, host.id, Purpose.RECORDING_AUDIO)
    assert (await decide(client, guest.headers, "recording.audio", "granted")).status_code == 201
    await eventually(
        lambda: gate.allows(seeded.booking_id, host.id, Purpose.RECORDING_AUDIO), "both granted"
    )


async def test_live_gate_rereads_the_ledger_when_it_loads_a_booking(
    app: FastAPI, client: httpx.AsyncClient, runtime: Runtime
) -> None:
    gate = gate_of(app)
    seeded = await seed_booking(runtime, [Purpose.RECORDING_AUDIO])
    guest = seeded.people[1]
    assert (await decide(client, guest.headers, "recording.audio", "granted")).status_code == 201
    # Not loaded yet: the answer is no, and asking starts the load from the ledger.
    first = gate.explain(seeded.booking_id, guest.id, Purpose.RECORDING_AUDIO)
    assert not first.allowed
    assert first.reason == "booking_not_loaded"
    await eventually(
        lambda: gate.allows(seeded.booking_id, guest.id, Purpose.RECORDING_AUDIO), "loaded"
    )


async def test_live_gate_fails_closed_when_the_bus_is_down(
    app: FastAPI, client: httpx.AsyncClient, runtime: Runtime
) -> None:
    gate = gate_of(app)
    seeded = await seed_booking(runtime, [Purpose.RECORDING_AUDIO])
    guest = seeded.people[1]
    assert (await decide(client, guest.headers, "recording.audio", "granted")).status_code == 201
    await gate.ensure_booking(seeded.booking_id)
    await eventually(
        lambda: gate.allows(seeded.booking_id, guest.id, Purpose.RECORDING_AUDIO), "yes"
    )
    await runtime.bus.close()
    assert not await gate.check_health()
    verdict = gate.explain(seeded.booking_id, guest.id, Purpose.RECORDING_AUDIO)
    assert not verdict.allowed
    assert verdict.reason == "consent_state_unconfirmed"
    assert "bus" in verdict.detail


@pytest.mark.redis
async def test_live_gate_fails_closed_when_redis_is_unreachable(
    tmp_path: Path, pg_url: str, clock: ManualClock
) -> None:
    from tests import support

    settings = Settings(
        database_url=pg_url,
        redis_url="redis://127.0.0.1:1/0",
        data_dir=tmp_path,
        secret_key=support.SECRET,
        master_key=support.MASTER,
        log_level="CRITICAL",
    )
    runtime = Runtime.open(settings, clock=clock)
    try:
        async with LiveGate(runtime, retry_s=0.05) as gate:
            await gate.check_health()
            verdict = gate.explain(uuid.uuid4(), uuid.uuid4(), Purpose.RECORDING_AUDIO)
    finally:
        await runtime.close()
    assert not verdict.allowed
    assert verdict.reason == "consent_state_unconfirmed"
    assert "bus" in verdict.detail


class FlakyBus:
    """An in-process bus whose subscriptions can be cut, losing what is published meanwhile
    (what a Redis pub/sub outage does)."""

    def __init__(self) -> None:
        self.inner = InProcessBus()
        self.down = asyncio.Event()

    async def publish(self, event: BusEvent) -> None:
        if not self.down.is_set():
            await self.inner.publish(event)

    @contextlib.asynccontextmanager
    async def subscribe(self, *topics: str) -> AsyncIterator[Subscription]:
        if self.down.is_set():
            raise ConnectionError("bus down")
        async with self.inner.subscribe(*topics) as subscription:
            yield self._cut(subscription)

    async def _cut(self, subscription: Subscription) -> AsyncIterator[BusEvent]:
        events = aiter(subscription)
        while True:
            next_event = asyncio.ensure_future(anext(events))
            cut = asyncio.ensure_future(self.down.wait())
            done, _ = await asyncio.wait({next_event, cut}, return_when=asyncio.FIRST_COMPLETED)
            if cut in done:
                next_event.cancel()
                raise ConnectionError("subscription lost")
            cut.cancel()
            yield next_event.result()

    async def ping(self) -> None:
        if self.down.is_set():
            raise ConnectionError("bus down")

    async def close(self) -> None:
        await self.inner.close()


async def test_live_gate_rereads_the_ledger_after_the_bus_comes_back(
    settings: Settings, clock: ManualClock
) -> None:
    runtime = Runtime.open(settings, clock=clock)
    bus = FlakyBus()
    runtime.bus = bus
    try:
        seeded = await seed_booking(runtime, [Purpose.RECORDING_AUDIO])
        guest = seeded.people[1]
        async with LiveGate(runtime, health_interval_s=0.05, retry_s=0.05) as gate:
            await eventually(lambda: gate.healthy, "gate healthy")
            await gate.ensure_booking(seeded.booking_id)
            bus.down.set()
            await eventually(lambda: not gate.healthy, "outage noticed")
            # Decided during the outage: committed to the ledger, its event lost.
            async with runtime.db.session() as session:
                notice = await current_notice(session, Purpose.RECORDING_AUDIO, "en", "default")
            request = DecisionRequest(Purpose.RECORDING_AUDIO, Decision.GRANTED, notice.sha256)
            await do_decide(gate.writer, runtime.bus, guest.id, request, clock.now())
            verdict = gate.explain(seeded.booking_id, guest.id, Purpose.RECORDING_AUDIO)
            assert verdict.reason == "consent_state_unconfirmed"
            bus.down.clear()
            await eventually(
                lambda: gate.allows(seeded.booking_id, guest.id, Purpose.RECORDING_AUDIO),
                "the lost grant read back from the ledger",
            )
    finally:
        await runtime.close()


async def test_live_gate_fails_closed_when_the_database_is_unreachable(
    tmp_path: Path, clock: ManualClock
) -> None:
    from tests import support

    settings = Settings(
        database_url="postgresql+asyncpg://postgres@127.0.0.1:1/nowhere",
        data_dir=tmp_path,
        secret_key=support.SECRET,
        master_key=support.MASTER,
    )
    runtime = Runtime.open(settings, clock=clock)
    try:
        async with LiveGate(runtime) as gate:
            assert not await gate.check_health()
            verdict = gate.explain(uuid.uuid4(), uuid.uuid4(), Purpose.RECORDING_AUDIO)
    finally:
        await runtime.close()
    assert not verdict.allowed
    assert verdict.reason == "consent_state_unconfirmed"


async def test_notices_are_published_once_the_database_answers(
    settings: Settings, clock: ManualClock, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A database outage at start-up only delays the default notices."""
    import consent.live

    real = consent.live.seed_all_notices
    calls: list[int] = []

    async def down_at_first(*args: Any) -> int:
        calls.append(1)
        if len(calls) == 1:
            raise ConnectionError("database down")
        return await real(*args)

    monkeypatch.setattr(consent.live, "seed_all_notices", down_at_first)
    runtime = Runtime.open(settings, clock=clock)
    try:
        async with LiveGate(runtime) as gate:
            assert await gate.check_health()
            async with runtime.db.session() as session:
                notice = await current_notice(session, Purpose.AI_SUMMARY, "en", "default")
            assert notice.version == 1
            assert len(calls) >= 2  # the failed start-up attempt, then a retry that worked
    finally:
        await runtime.close()
