"""Tampering with the ledger is found by the running server within a minute (its own timer,
driven by the test's clock), on SQLite and PostgreSQL, and capture fails closed until an admin
acknowledges it."""

from __future__ import annotations

import uuid
from collections.abc import Awaitable, Callable
from datetime import timedelta
from typing import Any

import httpx
import pytest
from fastapi import FastAPI
from sqlalchemy import select, text
from structlog.testing import capture_logs

from consent.gate import Reason
from consent.ledger import Entry, body_hash_of, hash_of, link
from consent.live import LiveGate
from consent.purposes import Decision, Purpose
from consent.walk import BODY_HASH_SQL
from core.accounts import Scope
from core.clock import ManualClock
from core.runtime import Runtime
from summaries.consents import LedgerConsent
from tests.support.bookings import bearer
from tests.support.consent import decide
from tests.support.consent_bookings import Seeded, seed_booking
from tests.support.ledger import unprotected
from tests.support.waiting import eventually


@pytest.fixture
def settings_overrides() -> dict[str, Any]:
    return {"consent_integrity_poll_s": 0.02, "consent_verify_interval_s": 30}



@pytest.fixture
def gate(app: FastAPI) -> LiveGate:
    live: LiveGate | None = app.state.services.gate
    assert live is not None
    return live

@pytest.fixture
async def world(client: httpx.AsyncClient, runtime: Runtime, clock: ManualClock) -> Seeded:
    """One booking, eight decisions through the API (seq 1..8); the host keeps audio granted."""
    seeded = await seed_booking(runtime, [Purpose.RECORDING_AUDIO, Purpose.AI_SUMMARY])
    host, guest = seeded.people
    steps = [
        (guest, "recording.audio", "granted"), (guest, "ai.summary", "denied"),
        (guest, "recording.audio", "withdrawn"), (guest, "ai.summary", "granted"),
        (guest, "recording.audio", "granted"), (guest, "recording.audio", "denied"),
        (guest, "ai.summary", "withdrawn"), (host, "recording.audio", "granted"),
    ]
    for person, purpose, decision in steps:
        await decide(client, person, purpose, decision)
        clock.advance(timedelta(seconds=1))
    return seeded


async def integrity(client: httpx.AsyncClient, keys: dict[Scope, str]) -> dict[str, Any]:
    response = await client.get(
        "/v1/admin/consent-log/integrity", headers=bearer(keys[Scope.AUDITOR])
    )
    assert response.status_code == 200, response.text
    body: dict[str, Any] = response.json()
    return body


async def forged_append(runtime: Runtime) -> None:
    """INSERT is allowed: add a well-linked, correctly hashed "granted" after the head."""
    async with runtime.db.session() as session:
        head = await session.get(Entry, 8)
        assert head is not None
        forged = Entry(
            seq=9, id=uuid.uuid4(), at=head.at, booking_id=head.booking_id,
            subject_id=head.subject_id, purpose=Purpose.AI_SUMMARY, decision=Decision.GRANTED,
            notice_id=head.notice_id, notice_sha256=head.notice_sha256, method=head.method,
            actor=head.actor, prev_hash=head.entry_hash, entry_mac="0" * 64,
        )
        forged.entry_hash = hash_of(forged)
        session.add(forged)


async def rehash_from(runtime: Runtime, seq: int) -> None:
    """Change entry `seq` and recompute its hash and every later link and hash."""
    async with runtime.db.session() as session:
        rows = [e for s in range(1, 9) if (e := await session.get(Entry, s)) is not None]
        for entry in rows:
            session.expunge(entry)
    statements, prev = [], rows[seq - 2].entry_hash if seq > 1 else "0" * 64
    for entry in rows[seq - 1 :]:
        if entry.seq == seq:
            entry.decision = Decision.GRANTED
        entry.prev_hash = prev
        entry.entry_hash = hash_of(entry)
        prev = entry.entry_hash
        statements.append(
            f"UPDATE consent_ledger SET decision = '{entry.decision.value}', "  # noqa: S608
            f"prev_hash = '{entry.prev_hash}', entry_hash = '{entry.entry_hash}' "
            f"WHERE seq = {entry.seq}"
        )
    await unprotected(runtime.db, *statements)


TAMPERING: dict[str, tuple[Callable[[Runtime], Awaitable[None]], int, str]] = {
    "change": (
        lambda rt: unprotected(
            rt.db, "UPDATE consent_ledger SET decision = 'granted' WHERE seq = 3"
        ),
        3, "hash_mismatch",
    ),
    "delete-middle": (
        lambda rt: unprotected(rt.db, "DELETE FROM consent_ledger WHERE seq = 4"),
        4, "missing_entry",
    ),
    "delete-newest": (
        lambda rt: unprotected(rt.db, "DELETE FROM consent_ledger WHERE seq >= 7"),
        7, "truncated",
    ),
    "insert": (forged_append, 9, "bad_seal"),
    "reorder": (
        lambda rt: unprotected(
            rt.db,
            "UPDATE consent_ledger SET seq = 1000 WHERE seq = 5",
            "UPDATE consent_ledger SET seq = 5 WHERE seq = 6",
            "UPDATE consent_ledger SET seq = 6 WHERE seq = 1000",
        ),
        5, "broken_link",
    ),
    "change-and-rehash": (lambda rt: rehash_from(rt, 2), 2, "bad_seal"),
}


@pytest.mark.parametrize("kind", list(TAMPERING))
async def test_tampering_is_found_within_a_minute_and_capture_fails_closed(
    client: httpx.AsyncClient, runtime: Runtime, clock: ManualClock, world: Seeded,
    api_keys: dict[Scope, str], kind: str,
    gate: LiveGate,
) -> None:
    host = world.people[0]
    ready = await client.get("/readyz")
    assert ready.status_code == 200
    assert ready.json()["checks"]["consent_ledger"] == "ok"
    await gate.ensure_booking(world.booking_id)
    assert gate.allows(world.booking_id, host.id, Purpose.RECORDING_AUDIO)
    jobs = LedgerConsent(runtime.db, runtime.clock, runtime.keys)  # what AI jobs ask
    assert (host.id, Purpose.RECORDING_AUDIO) in await jobs.grants(world.booking_id)

    tamper, bad_seq, problem = TAMPERING[kind]
    with capture_logs() as logs:
        await tamper(runtime)
        clock.advance(timedelta(seconds=60))  # the server's own timer does the rest

        async def found() -> bool:
            return (await client.get("/readyz")).status_code == 503

        await eventually(found, f"{kind} detected")
    errors = [e for e in logs if e["log_level"] == "error"]
    assert errors[0]["event"] == "consent_ledger.tampered"
    assert (errors[0]["first_bad_seq"], errors[0]["problem"]) == (bad_seq, problem)

    ready = (await client.get("/readyz")).json()
    assert f"entry {bad_seq} ({problem})" in ready["checks"]["consent_ledger"]
    metrics = (await client.get("/metrics", headers=bearer(api_keys[Scope.METRICS]))).text
    assert "callgate_consent_ledger_tampered 1.0" in metrics
    assert f"callgate_consent_ledger_first_bad_seq {float(bad_seq)}" in metrics
    state = await integrity(client, api_keys)
    assert state["status"] == "tampered"
    assert (state["alarm"]["first_bad_seq"], state["alarm"]["problem"]) == (bad_seq, problem)
    verdict = gate.explain(world.booking_id, host.id, Purpose.RECORDING_AUDIO)
    assert (verdict.allowed, verdict.reason) == (False, Reason.TAMPERED)
    assert await jobs.grants(world.booking_id) == {}
    admin = bearer(api_keys[Scope.ADMIN])
    refused = await client.post("/v1/admin/consent-log/checkpoints", headers=admin)
    assert refused.status_code == 409
    assert refused.json()["code"] == "ledger_tampered"

    auditor = bearer(api_keys[Scope.AUDITOR])
    forbidden = await client.post("/v1/admin/consent-log/integrity/acknowledge", headers=auditor)
    assert forbidden.status_code == 403
    done = await client.post("/v1/admin/consent-log/integrity/acknowledge", headers=admin)
    assert done.status_code == 200
    assert (await client.get("/readyz")).status_code == 200
    assert (await integrity(client, api_keys))["status"] == "ok"
    if kind not in ("change-and-rehash", "reorder"):  # the host's grant was left untouched
        assert gate.allows(world.booking_id, host.id, Purpose.RECORDING_AUDIO)
    clock.advance(timedelta(seconds=60))  # the same finding is not raised again
    later = clock.now().isoformat()

    async def checked_again() -> bool:
        return (await integrity(client, api_keys))["last_check_at"] == later

    await eventually(checked_again, "a later check ran")
    assert (await client.get("/readyz")).status_code == 200
    assert len((await integrity(client, api_keys))["alarms"]) == 1


async def test_clearing_the_alarm_in_the_database_does_not_clear_it(
    client: httpx.AsyncClient, runtime: Runtime, clock: ManualClock, world: Seeded,
    api_keys: dict[Scope, str],
    gate: LiveGate,
) -> None:
    await unprotected(runtime.db, "DELETE FROM consent_ledger WHERE seq = 2")
    clock.advance(timedelta(seconds=60))

    async def found() -> bool:
        return (await client.get("/readyz")).status_code == 503

    await eventually(found, "deletion detected")
    await unprotected(
        runtime.db,
        "UPDATE consent_alarms SET acknowledged_at = detected_at, acknowledged_by = 'intruder',"
        " acknowledgement_mac = '" + "0" * 64 + "'",
    )
    await gate.integrity.refresh()  # what every poll does
    assert (await client.get("/readyz")).status_code == 503
    assert (await integrity(client, api_keys))["status"] == "tampered"


async def test_an_intact_ledger_is_witnessed_and_signed_periodically(
    client: httpx.AsyncClient, runtime: Runtime, clock: ManualClock, world: Seeded,
    api_keys: dict[Scope, str],
) -> None:
    clock.advance(timedelta(seconds=runtime.settings.consent_checkpoint_interval_s + 1))

    async def signed() -> bool:
        listed = await client.get(
            "/v1/admin/consent-log/checkpoints", headers=bearer(api_keys[Scope.AUDITOR])
        )
        items = listed.json()["items"]
        return bool(items) and items[0]["seq"] == 8

    await eventually(signed, "a checkpoint of the verified head")
    witness = (runtime.settings.data_dir / "consent-witness.jsonl").read_text()
    assert '"seq": 8' in witness
    assert (await client.get("/readyz")).status_code == 200


async def hide_behind_the_digest(runtime: Runtime) -> None:
    """Change entry 3, then redefine the generated digest so entry 3's is the original again."""
    original = await stored_digest(runtime, 3)
    await unprotected(
        runtime.db,
        "UPDATE consent_ledger SET decision = 'granted' WHERE seq = 3",
        "ALTER TABLE consent_ledger DROP COLUMN body_sha256",
        "ALTER TABLE consent_ledger ADD COLUMN body_sha256 text GENERATED ALWAYS AS (CASE WHEN"
        f" seq = 3 THEN '{original}' ELSE {BODY_HASH_SQL} END) STORED",
    )


async def stored_digest(runtime: Runtime, seq: int) -> str:
    async with runtime.db.engine.connect() as conn:
        found = await conn.execute(
            text("SELECT body_sha256 FROM consent_ledger WHERE seq = :seq"), {"seq": seq}
        )
        return str(found.scalar_one())


BODY_TRICKS: dict[str, Callable[[Runtime], Awaitable[None]]] = {
    "expression-dropped": lambda rt: unprotected(
        rt.db,
        "ALTER TABLE consent_ledger ALTER COLUMN body_sha256 DROP EXPRESSION",
        "UPDATE consent_ledger SET decision = 'granted' WHERE seq = 3",
    ),
    "expression-replaced": hide_behind_the_digest,
}


@pytest.mark.parametrize("backend", ["postgres"])
@pytest.mark.parametrize("trick", list(BODY_TRICKS))
async def test_a_change_hidden_behind_the_stored_digest_is_still_found(
    client: httpx.AsyncClient, runtime: Runtime, clock: ManualClock, world: Seeded, trick: str,
) -> None:
    """PostgreSQL keeps the digest of each entry's body (a generated column) and walks link it
    instead of rendering and hashing the body; an intruder who stops the database from keeping
    it, or has it keep the original digest for a changed entry, makes the walk render and hash
    every body again."""
    before = await stored_digest(runtime, 3)
    await BODY_TRICKS[trick](runtime)
    assert await stored_digest(runtime, 3) == before  # the stored digest still reads as before
    clock.advance(timedelta(seconds=60))

    async def found() -> bool:
        return (await client.get("/readyz")).status_code == 503

    await eventually(found, f"a change behind the digest ({trick}) detected")
    ready = (await client.get("/readyz")).json()
    assert "entry 3 (hash_mismatch)" in ready["checks"]["consent_ledger"]


@pytest.mark.parametrize("backend", ["postgres"])
async def test_the_stored_digest_is_that_of_what_each_entry_hash_covers(
    client: httpx.AsyncClient, runtime: Runtime, clock: ManualClock, world: Seeded,
) -> None:
    """The digest PostgreSQL keeps is the SHA-256 of the canonical JSON callgate hashed when it
    appended the entry, and each entry's hash links the previous hash to it."""
    clock.advance(timedelta(microseconds=123_457))  # a time whose microseconds all show
    await decide(client, world.people[1], "recording.audio", "granted")
    async with runtime.db.session() as session:
        entries = list(await session.scalars(select(Entry).order_by(Entry.seq)))
    assert [e.seq for e in entries] == list(range(1, 10))
    assert entries[-1].at.microsecond == 123_457
    for entry in entries:
        digest = await stored_digest(runtime, entry.seq)
        assert digest == body_hash_of(entry)
        assert link(entry.prev_hash, digest) == entry.entry_hash


@pytest.mark.parametrize("backend", ["postgres"])
async def test_a_function_put_before_pg_catalog_cannot_render_the_old_body(
    client: httpx.AsyncClient, runtime: Runtime, clock: ManualClock, world: Seeded,
) -> None:
    """Anyone with the database credentials can create a function and put its schema before
    pg_catalog on the database's search path; walks still use the built-in functions."""
    async with runtime.db.session() as session:
        entry = await session.get(Entry, 3)
        assert entry is not None
        database = (await session.execute(text("SELECT current_database()"))).scalar_one()
    before = f'"decision":"{entry.decision.value}","id":"{entry.id}"'
    after = f'"decision":"granted","id":"{entry.id}"'
    await unprotected(
        runtime.db,
        "ALTER TABLE consent_ledger ALTER COLUMN body_sha256 DROP EXPRESSION",
        "UPDATE consent_ledger SET decision = 'granted' WHERE seq = 3",
        "CREATE SCHEMA intruder",
        # The body of entry 3 rendered as it was before the change.
        "CREATE FUNCTION intruder.convert_to(text, name) RETURNS bytea LANGUAGE sql AS "
        f"$$SELECT pg_catalog.convert_to(pg_catalog.replace($1, '{after}', '{before}'), $2)$$",
        f'ALTER DATABASE "{database}" SET search_path = intruder, pg_catalog, public',
    )
    await runtime.db.engine.dispose()  # every connection from now on has that path
    async with runtime.db.engine.connect() as conn:
        lying = await conn.execute(text(
            "SELECT convert_to('" + after + "', 'UTF8') = convert_to('" + before + "', 'UTF8')"
        ))
        assert lying.scalar_one() is True  # unqualified, the intruder's function answers
    clock.advance(timedelta(seconds=60))

    async def found() -> bool:
        return (await client.get("/readyz")).status_code == 503

    await eventually(found, "the change detected")
    ready = (await client.get("/readyz")).json()
    assert "entry 3 (hash_mismatch)" in ready["checks"]["consent_ledger"]
