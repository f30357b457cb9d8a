"""Organizations through the public API: the operator manages them, each organization's own
settings hold for its bookings and notices, webhook events go only to their organization's
endpoints, and a database from before organizations migrates into the default one."""

from __future__ import annotations

import hashlib
import uuid
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest
from alembic import command
from sqlalchemy import Connection, text

from api.app import create_app
from core.accounts import KEY_PREFIX, Scope
from core.clock import ManualClock
from core.database import create_engine
from core.migrate import alembic_config
from core.runtime import Runtime
from core.settings import Settings
from tests import support
from tests.support.bookings import bearer, booking_body, credential_of, operator_key
from tests.support.waiting import eventually, services_ready


@pytest.fixture
def settings_overrides() -> dict[str, Any]:
    return {"webhook_allow_private_targets": True, "consent_operator_name": "Deployment Inc"}



async def new_org(
    client: httpx.AsyncClient, operator: dict[str, str], org_id: str, **settings: Any
) -> dict[str, str]:
    """Create an organization; its admin and scheduler keys."""
    made = await client.post("/v1/operator/orgs", headers=operator,
                             json={"id": org_id, "name": org_id.title(), "settings": settings})
    assert made.status_code == 201, made.text
    keys = {}
    for scope in ("admin", "scheduler"):
        answer = await client.post(f"/v1/operator/orgs/{org_id}/keys", headers=operator,
                                   json={"scope": scope, "label": "first"})
        assert answer.status_code == 201, answer.text
        assert answer.json()["org_id"] == org_id
        keys[scope] = answer.json()["key"]
    return keys


async def test_the_operator_manages_organizations_and_nothing_else(
    client: httpx.AsyncClient, runtime: Runtime, api_keys: dict[Scope, str]
) -> None:
    operator = await operator_key(runtime)
    await new_org(client, operator, "acme", minimum_age=16)
    again = await client.post("/v1/operator/orgs", headers=operator,
                              json={"id": "acme", "name": "Other"})
    assert again.status_code == 409
    listed = (await client.get("/v1/operator/orgs", headers=operator)).json()["items"]
    assert {o["id"]: o["settings"]["minimum_age"] for o in listed} == {
        "default": None, "acme": 16
    }
    changed = await client.patch("/v1/operator/orgs/acme", headers=operator,
                                 json={"settings": {"minimum_age": None, "operator_name": "Acme"}})
    assert changed.status_code == 200, changed.text
    assert changed.json()["settings"]["minimum_age"] is None
    assert changed.json()["settings"]["operator_name"] == "Acme"
    for method, path, body in (
        ("GET", "/v1/operator/orgs/nope", None),
        ("POST", "/v1/operator/orgs/nope/keys", {"scope": "admin"}),
    ):
        answer = await client.request(method, path, headers=operator, json=body)
        assert answer.status_code == 404, answer.text
    refused = await client.post("/v1/operator/orgs/acme/keys", headers=operator,
                                json={"scope": "operator"})
    assert refused.status_code == 422
    bad = await client.post("/v1/operator/orgs", headers=operator,
                            json={"id": "-Bad Id-", "name": "x"})
    assert bad.status_code == 422
    # an admin of an organization is not an operator, and an operator reads no bookings
    admin = bearer(api_keys[Scope.ADMIN])
    assert (await client.get("/v1/operator/orgs", headers=admin)).status_code == 403
    assert (await client.get("/v1/bookings", headers=operator)).status_code == 403
    assert (await client.get("/v1/admin/subjects?q=a", headers=operator)).status_code == 403


async def test_each_organization_books_and_informs_under_its_own_settings(
    client: httpx.AsyncClient, runtime: Runtime, clock: ManualClock, api_keys: dict[Scope, str]
) -> None:
    operator = await operator_key(runtime)
    acme = await new_org(client, operator, "acme", minimum_age=16,
                         operator_name="Acme Tutoring Ltd", ai_provider_name="Acme AI")
    start = clock.now() + timedelta(minutes=5)
    teen = {"external_id": "teen", "display_name": "Teen", "age": 15}
    body = booking_body(start)
    body["clients"] = [teen]
    refused = await client.post("/v1/bookings", headers=bearer(acme["scheduler"]), json=body)
    assert refused.status_code == 422, refused.text
    assert "16" in refused.json()["detail"]
    ours = await client.post("/v1/bookings", headers=bearer(api_keys[Scope.SCHEDULER]),
                             json=body)
    assert ours.status_code == 201, ours.text  # the deployment's minimum: 13
    theirs = await client.post("/v1/bookings", headers=bearer(acme["scheduler"]),
                               json=booking_body(start))
    assert theirs.status_code == 201, theirs.text

    async def notice_of(booking: dict[str, Any]) -> str:
        who = {"X-Join-Credential": credential_of(booking["participants"][0])}
        overview = (await client.get("/v1/consent", headers=who)).json()
        return str(overview["purposes"][0]["notice"]["text"])

    acme_text, default_text = await notice_of(theirs.json()), await notice_of(ours.json())
    assert "Acme Tutoring Ltd" in acme_text
    acme_ai = (await client.get("/v1/admin/consent-notices", headers=bearer(acme["admin"])))
    summary = next(n for n in acme_ai.json()["items"] if n["purpose"] == "ai.summary")
    assert "Acme AI" in summary["text"]
    assert "Deployment Inc" in default_text
    assert "Acme" not in default_text
    # an organization's own notice version stays in its set
    published = await client.post(
        "/v1/admin/consent-notices", headers=bearer(acme["admin"]),
        json={"purpose": "recording.audio", "language": "en", "text": "Acme's own words."},
    )
    assert published.status_code == 201, published.text
    assert await notice_of(theirs.json()) == "Acme's own words.\n"
    assert await notice_of(ours.json()) == default_text
    versions = await client.get("/v1/admin/consent-notices/versions?purpose=recording.audio",
                                headers=bearer(api_keys[Scope.ADMIN]))
    assert "Acme's own words.\n" not in [v["text"] for v in versions.json()["items"]]


async def test_webhook_events_reach_only_their_organizations_endpoints(
    client: httpx.AsyncClient, runtime: Runtime, clock: ManualClock, api_keys: dict[Scope, str]
) -> None:
    acme = await new_org(client, await operator_key(runtime), "acme")
    endpoints = {}
    for name, key in (("default", api_keys[Scope.SCHEDULER]), ("acme", acme["scheduler"])):
        made = await client.post("/v1/webhooks/endpoints", headers=bearer(key),
                                 json={"url": f"http://127.0.0.1:9/{name}"})
        assert made.status_code == 201, made.text
        endpoints[name] = (made.json()["id"], bearer(key))
        listed = (await client.get("/v1/webhooks/endpoints", headers=bearer(key))).json()
        assert [e["id"] for e in listed] == [made.json()["id"]]

    async def deliveries(name: str) -> list[dict[str, Any]]:
        endpoint, headers = endpoints[name]
        answer = await client.get(f"/v1/webhooks/endpoints/{endpoint}/deliveries",
                                  headers=headers)
        assert answer.status_code == 200, answer.text
        items: list[dict[str, Any]] = answer.json()["items"]
        return items

    start = clock.now() + timedelta(hours=1)
    await client.post("/v1/bookings", headers=bearer(api_keys[Scope.SCHEDULER]),
                      json=booking_body(start))
    await eventually(lambda: deliveries("default"),
                     "the default organization's endpoint got booking.created")
    # the same dispatch saw both endpoints: acme's got nothing
    assert await deliveries("acme") == []
    await client.post("/v1/bookings", headers=bearer(acme["scheduler"]), json=booking_body(start))

    async def acme_got_one() -> bool:
        return len(await deliveries("acme")) == 1

    await eventually(acme_got_one, "acme's endpoint got its booking.created")
    assert len(await deliveries("default")) == 1


@pytest.fixture
async def empty_database_url(backend: str, tmp_path: Path) -> AsyncIterator[str]:
    if backend == "sqlite":
        yield f"sqlite+aiosqlite:///{tmp_path / 'old.db'}"
        return
    name = f"cg_t_{uuid.uuid4().hex[:12]}"
    await support.databases._admin(f'CREATE DATABASE "{name}"')
    yield support.pg_url(name)
    await support.drop_pg(name)


def _migrate(connection: Connection, *targets: str) -> None:
    config = alembic_config()
    config.attributes["connection"] = connection
    for target in targets:
        command.upgrade(config, target)


async def test_a_database_from_before_organizations_moves_into_the_default_one(
    empty_database_url: str, tmp_path: Path
) -> None:
    """Rows written before migration 0013 all belong to the default organization, and the
    deployment keeps working with its old key, with no step of its own."""
    engine = create_engine(empty_database_url)
    secret = "s" * 43
    booking_id = uuid.uuid4()
    async with engine.begin() as conn:
        await conn.run_sync(_migrate, "0011_hardening", "0005_privacy")
        now = datetime.now(UTC).replace(microsecond=0)
        await conn.execute(text(
            "INSERT INTO api_keys (id, secret_hash, scope, label, created_at) "
            "VALUES ('0123456789abcdef', :hash, 'scheduler', 'old', :now)"
        ), {"hash": hashlib.sha256(secret.encode()).hexdigest(), "now": now})
        await conn.execute(text(
            "INSERT INTO bookings (id, title, language, starts_at, ends_at, status, "
            "recording_policy, requested_purposes, record_automatically, room_name, "
            "room_state, room_attempts, sequence, created_by, created_at, updated_at) VALUES "
            "(:id, 'Old booking', 'en', :start, :end, 'scheduled', 'per_participant', '[]', "
            ":no, 'cg-old-room', 'not_needed', 0, 0, '0123456789abcdef', :now, :now)"
        ), {"id": booking_id if "postgresql" in empty_database_url else booking_id.hex,
            "start": now + timedelta(hours=1), "end": now + timedelta(hours=2), "now": now,
            "no": False})
        ids = {"b": booking_id, "p": uuid.uuid4()}
        if "postgresql" not in empty_database_url:  # SQLite stores a Uuid as 32 hex digits
            ids = {k: v.hex for k, v in ids.items()}
        await conn.execute(text(
            "INSERT INTO participants (id, booking_id, position, external_id, display_name, "
            "role, credential_hash, credential_generation, created_at) VALUES "
            "(:p, :b, 0, 'p-1', 'Old Host', 'host', :hash, 0, :now)"
        ), {**ids, "hash": "0" * 64, "now": now})
        await conn.execute(text(
            "INSERT INTO subject_restrictions (external_id, restricted_at) VALUES ('p-1', :now)"
        ), {"now": now})
        await conn.run_sync(_migrate, "heads")
        for table in ("api_keys", "bookings", "subject_restrictions"):
            orgs = (await conn.execute(text(f"SELECT org_id FROM {table}"))).scalars().all()  # noqa: S608
            assert orgs == ["default"], table
    await engine.dispose()
    settings = Settings(
        database_url=empty_database_url, data_dir=tmp_path / "data", secret_key=support.SECRET,
        master_key=support.MASTER, public_base_url="http://testserver", log_level="WARNING",
    )
    app = create_app(settings)
    async with app.router.lifespan_context(app):
        await services_ready(app.state.services)
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://testserver") as c:
            old_key = bearer(f"{KEY_PREFIX}_0123456789abcdef_{secret}")
            listed = await c.get("/v1/bookings", headers=old_key)
            assert listed.status_code == 200, listed.text
            assert [b["title"] for b in listed.json()["items"]] == ["Old booking"]


async def test_participants_read_their_session_for_their_organizations_number_of_days(
    client: httpx.AsyncClient, runtime: Runtime, clock: ManualClock, api_keys: dict[Scope, str]
) -> None:
    acme = await new_org(client, await operator_key(runtime), "acme", participant_access_days=1)
    start = clock.now() + timedelta(minutes=5)
    booked = {}
    for name, key in (("default", api_keys[Scope.SCHEDULER]), ("acme", acme["scheduler"])):
        made = await client.post("/v1/bookings", headers=bearer(key), json=booking_body(start))
        assert made.status_code == 201, made.text
        booked[name] = made.json()

    async def read(name: str) -> httpx.Response:
        booking = booked[name]
        who = {"X-Join-Credential": credential_of(booking["participants"][1])}
        return await client.get(f"/v1/bookings/{booking['id']}/recordings", headers=who)

    ends = start + timedelta(minutes=60)
    clock.advance(ends + timedelta(days=1) - clock.now())
    late = await read("acme")
    assert late.status_code == 403, late.text
    assert late.json()["access_ended_at"] == (ends + timedelta(days=1)).isoformat()
    assert (await read("default")).status_code == 200  # the deployment's 7 days
