"""The ledger's promises, checked against real databases: append-only, gap-free under
concurrency, and every kind of tampering found at the entry where it happened."""

from __future__ import annotations

import asyncio
import json
import os
import sys
import uuid
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from sqlalchemy import select, text
from sqlalchemy.exc import DBAPIError

from consent import walk
from consent.checkpoints import Signer, do_checkpoint, verify
from consent.ledger import GENESIS, Entry, NewDecision, do_append, hash_of
from consent.notices import seed_notices
from consent.purposes import Decision, Purpose
from consent.walk import ChainMemory
from consent.writer import LedgerWriter
from core.database import Database
from core.runtime import build_keyring
from core.settings import Settings
from tests import support
from tests.support.ledger import KEYRING, SEAL_KEY, raw, unprotected

T0 = datetime(2026, 11, 22, 8, 0, tzinfo=UTC)


@pytest.fixture
async def db(settings: Settings) -> AsyncIterator[Database]:
    database = Database(settings.database_url)
    yield database
    await database.close()


@pytest.fixture
def signer(settings: Settings) -> Signer:
    return Signer.from_keyring(build_keyring(settings))


def decision(n: int) -> NewDecision:
    return NewDecision(
        booking_id=uuid.UUID(int=1 + n % 3),
        subject_id=uuid.UUID(int=100 + n % 5),
        purpose=list(Purpose)[n % len(Purpose)],
        decision=list(Decision)[n % len(Decision)],
        notice_id=uuid.UUID(int=999),
        notice_sha256="ab" * 32,
    )


async def append(db: Database, count: int) -> None:
    for n in range(count):
        async with db.session() as session:
            await do_append(session, decision(n), T0 + timedelta(seconds=n), SEAL_KEY)


async def test_update_and_delete_are_refused_by_the_database(
    db: Database, settings: Settings
) -> None:
    await append(db, 3)
    assert await seed_notices(db, settings, T0) == len(Purpose)
    for statement in (
        "UPDATE consent_ledger SET decision = 'granted' WHERE seq = 2",
        "DELETE FROM consent_ledger WHERE seq = 3",
        "UPDATE consent_notices SET text = 'x'",
        "DELETE FROM consent_notices",
    ):
        with pytest.raises(DBAPIError, match="append-only"):
            await raw(db, statement)
    async with db.engine.connect() as conn:
        count = (await conn.execute(text("SELECT count(*) FROM consent_ledger"))).scalar_one()
        texts = (await conn.execute(text("SELECT text FROM consent_notices"))).scalars().all()
    assert count == 3
    assert len(texts) == len(Purpose)
    assert "x" not in texts


async def test_truncate_is_refused_on_postgres(pg_url: str) -> None:
    database = Database(pg_url)
    try:
        await append(database, 1)
        with pytest.raises(DBAPIError, match="append-only"):
            await raw(database, "TRUNCATE consent_ledger")
    finally:
        await database.close()


async def test_concurrent_appends_make_one_gap_free_chain(pg_url: str, settings: Settings) -> None:
    database = Database(pg_url)
    signer = Signer.from_keyring(build_keyring(settings))
    tasks, per_task = 24, 5

    async def writer(task: int) -> None:
        for n in range(per_task):
            async with database.session() as session:
                await do_append(session, decision(task * per_task + n), T0, SEAL_KEY)

    try:
        await asyncio.gather(*(writer(t) for t in range(tasks)))
        report = await verify(database, signer)
        async with database.engine.connect() as conn:
            rows = (await conn.execute(text("SELECT seq, prev_hash FROM consent_ledger"))).all()
    finally:
        await database.close()
    assert report.ok, report.view()
    assert report.entries == tasks * per_task
    assert sorted(seq for seq, _ in rows) == list(range(1, tasks * per_task + 1))
    prevs = [prev for _, prev in rows]
    assert len(set(prevs)) == len(prevs)  # no two entries chained to the same parent: no fork


async def test_intact_chain_verifies_and_extends_its_checkpoint(
    db: Database, signer: Signer
) -> None:
    empty = await verify(db, signer)
    assert empty.ok
    assert empty.head_seq == 0
    assert empty.head_hash == GENESIS
    await append(db, 5)
    checkpoint = await do_checkpoint(db, signer, T0 + timedelta(hours=1))
    await append(db, 3)
    report = await verify(db, signer)
    assert report.ok
    assert report.entries == 8
    assert checkpoint.seq == 5
    assert report.checkpoints[0]["seq"] == 5
    assert report.checkpoints[0]["extended_by_chain"] is True


@pytest.mark.parametrize(
    ("tamper", "bad_seq", "problem"),
    [
        ("UPDATE consent_ledger SET decision = 'granted' WHERE seq = 5", 5, "hash_mismatch"),
        ("UPDATE consent_ledger SET subject_id = booking_id WHERE seq = 2", 2, "hash_mismatch"),
        ("DELETE FROM consent_ledger WHERE seq = 4", 4, "missing_entry"),
        ("DELETE FROM consent_ledger WHERE seq = 1", 1, "missing_entry"),
    ],
    ids=["changed-decision", "changed-subject", "deleted-row", "deleted-first"],
)
async def test_tampering_is_found_at_the_right_entry(
    db: Database, signer: Signer, tamper: str, bad_seq: int, problem: str
) -> None:
    await append(db, 8)
    await unprotected(db, tamper)
    report = await verify(db, signer)
    assert not report.ok
    assert report.first_bad_seq == bad_seq
    assert report.problem == problem
    assert report.entries == bad_seq - 1


async def test_reordered_rows_are_found(db: Database, signer: Signer) -> None:
    await append(db, 8)
    await unprotected(
        db,
        "UPDATE consent_ledger SET seq = 1000 WHERE seq = 3",
        "UPDATE consent_ledger SET seq = 3 WHERE seq = 4",
        "UPDATE consent_ledger SET seq = 4 WHERE seq = 1000",
    )
    report = await verify(db, signer)
    assert report.first_bad_seq == 3
    assert report.problem == "broken_link"


async def test_truncated_tail_is_found_against_the_checkpoint(
    db: Database, signer: Signer
) -> None:
    await append(db, 10)
    await do_checkpoint(db, signer, T0 + timedelta(hours=1))
    await unprotected(db, "DELETE FROM consent_ledger WHERE seq >= 8")
    report = await verify(db, signer)
    assert not report.ok
    assert report.problem == "truncated"
    assert report.first_bad_seq == 8
    assert report.checkpoints[0]["extended_by_chain"] is False


async def test_rewritten_and_rehashed_head_is_found_by_the_checkpoint(
    db: Database, signer: Signer
) -> None:
    """An intruder who recomputes the hash of the entry they changed cannot make its seal."""
    await append(db, 6)
    await do_checkpoint(db, signer, T0 + timedelta(hours=1))
    async with db.session() as session:
        entry = await session.get(Entry, 6)
        assert entry is not None
        session.expunge(entry)
    entry.decision = Decision.GRANTED if entry.decision != Decision.GRANTED else Decision.DENIED
    forged = hash_of(entry)
    await unprotected(
        db,
        f"UPDATE consent_ledger SET decision = '{entry.decision.value}', "  # noqa: S608
        f"entry_hash = '{forged}' WHERE seq = 6",
    )
    report = await verify(db, signer)
    assert report.first_bad_seq == 6
    assert report.problem == "bad_seal"


async def test_forged_checkpoint_is_found(db: Database, signer: Signer) -> None:
    await append(db, 3)
    await do_checkpoint(db, signer, T0 + timedelta(hours=1))
    await unprotected(db, "UPDATE consent_checkpoints SET entry_hash = '" + "f" * 64 + "'")
    report = await verify(db, signer)
    assert not report.ok
    assert report.problem == "bad_checkpoint_signature"


async def test_cli_verify_and_checkpoint(
    db: Database, settings: Settings, tmp_path: Path
) -> None:
    await append(db, 4)
    env = {
        **os.environ,
        "CALLGATE_DATABASE_URL": settings.database_url,
        "CALLGATE_DATA_DIR": str(tmp_path / "cli"),
        "CALLGATE_SECRET_KEY": support.SECRET,
        "CALLGATE_MASTER_KEY": support.MASTER,
        "CALLGATE_LOG_LEVEL": "WARNING",
    }

    async def callgate(*args: str) -> tuple[int, str]:
        process = await asyncio.create_subprocess_exec(
            sys.executable, "-c", "from api.cli import main; main()", *args,
            env=env, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
        )
        out, _ = await process.communicate()
        assert process.returncode is not None
        return process.returncode, out.decode()

    code, out = await callgate("ledger", "checkpoint")
    assert code == 0
    assert json.loads(out)["seq"] == 4
    code, out = await callgate("ledger", "verify")
    assert code == 0
    assert json.loads(out)["ok"] is True
    await unprotected(db, "UPDATE consent_ledger SET purpose = 'ai.agenda' WHERE seq = 2")
    code, out = await callgate("ledger", "verify")
    assert code == 1
    assert json.loads(out)["first_bad_seq"] == 2


async def test_entry_times_never_go_backwards(db: Database, signer: Signer) -> None:
    """A node whose clock is behind still appends after the head in time, so a time range of
    the log is a seq range."""
    async with db.session() as session:
        ahead = await do_append(session, decision(1), T0 + timedelta(seconds=10), SEAL_KEY)
    async with db.session() as session:
        behind = await do_append(session, decision(2), T0, SEAL_KEY)
    assert behind.seq == ahead.seq + 1
    assert behind.at == ahead.at
    assert (await verify(db, signer)).ok


async def legacy(db: Database, seq: int) -> None:
    """An entry as written before sealing (migration 0008): prev inside the hash, no seal."""
    async with db.session() as session:
        prev = (await session.get(Entry, seq - 1)) if seq > 1 else None
        d = decision(seq)
        entry = Entry(
            seq=seq, id=uuid.uuid4(), at=T0, booking_id=d.booking_id, subject_id=d.subject_id,
            purpose=d.purpose, decision=d.decision, notice_id=d.notice_id,
            notice_sha256=d.notice_sha256, method=d.method, actor=d.actor,
            prev_hash=prev.entry_hash if prev is not None else GENESIS, entry_mac=None,
        )
        entry.entry_hash = hash_of(entry)
        session.add(entry)


async def test_unsealed_entries_verify_only_before_the_first_sealed_one(
    db: Database, signer: Signer
) -> None:
    for seq in (1, 2, 3):
        await legacy(db, seq)
    await append(db, 2)  # sealed, seq 4 and 5
    report = await verify(db, signer)
    assert report.ok, report.view()
    assert report.entries == 5
    await legacy(db, 6)  # an intruder's entry without a seal, after sealed ones
    report = await verify(db, signer)
    assert (report.first_bad_seq, report.problem) == (6, "unsealed_entry")


async def test_two_nodes_group_committing_make_one_gap_free_chain(pg_url: str) -> None:
    """Two processes' writers (two Database engines, as two nodes have) batch concurrently on
    one PostgreSQL: the chain order comes from the database's lock, whole batches interleave,
    every writer is answered with a durable entry, and the chain verifies."""
    nodes = [Database(pg_url), Database(pg_url)]
    writers = [LedgerWriter(db, SEAL_KEY) for db in nodes]
    per_node = 60
    try:
        entries = await asyncio.gather(*(
            writers[n % 2].append(decision(n), T0) for n in range(2 * per_node)
        ))
        report = await verify(nodes[0], Signer.from_keyring(KEYRING))
        async with nodes[0].engine.connect() as conn:
            rows = (await conn.execute(text("SELECT seq, prev_hash FROM consent_ledger"))).all()
    finally:
        for db in nodes:
            await db.close()
    assert report.ok, report.view()
    assert sorted(e.seq for e in entries) == list(range(1, 2 * per_node + 1))
    assert sorted(seq for seq, _ in rows) == list(range(1, 2 * per_node + 1))
    assert len({prev for _, prev in rows}) == len(rows)  # no fork
    assert sum(w.batches for w in writers) < 2 * per_node  # batched, not one commit each


async def test_a_writer_whose_head_another_node_moved_hashes_again(pg_url: str) -> None:
    """A writer hashes a batch on the head its last commit made; when another node appended
    since, the one-statement insert writes nothing and the batch is hashed again on the real
    head, in the same transaction (no gap, no fork)."""
    nodes = [Database(pg_url), Database(pg_url)]
    first, second = (LedgerWriter(db, SEAL_KEY) for db in nodes)
    try:
        one = await first.append(decision(1), T0)
        two = await second.append(decision(2), T0)
        three = await first.append(decision(3), T0)  # first still remembers seq 1 as the head
        four = await first.append(decision(4), T0)  # and now seq 3: the one-statement way
        report = await verify(nodes[0], Signer.from_keyring(KEYRING))
    finally:
        for db in nodes:
            await db.close()
    assert [e.seq for e in (one, two, three, four)] == [1, 2, 3, 4]
    assert (three.prev_hash, four.prev_hash) == (two.entry_hash, three.entry_hash)
    assert (first.redone, second.redone) == (1, 0)
    assert (report.ok, report.entries) == (True, 4), report.view()


async def test_a_seq_taken_between_the_check_and_the_lock_is_refused_then_redone(
    pg_url: str,
) -> None:
    """The race the head check cannot see: another transaction holds the chain lock with the
    next entry uncommitted while the writer's insert starts; once it commits, the primary key
    refuses the writer's copy of that seq, and the batch is redone on the new head."""
    db, other = Database(pg_url), Database(pg_url)
    writer = LedgerWriter(db, SEAL_KEY)
    try:
        await writer.append(decision(1), T0)
        async with other.session() as session:
            taken = await do_append(session, decision(2), T0, SEAL_KEY)  # holds the lock
            pending = asyncio.ensure_future(writer.append(decision(3), T0))

            async def waiting_for_the_lock() -> bool:
                async with other.engine.connect() as conn:
                    query = text(
                        "SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' "
                        "AND NOT granted AND database = "
                        "(SELECT oid FROM pg_database WHERE datname = current_database())"
                    )
                    return bool((await conn.execute(query)).scalar_one())

            await support.eventually(waiting_for_the_lock, "the writer waits for the lock")
        third = await pending
        report = await verify(db, Signer.from_keyring(KEYRING))
    finally:
        await db.close()
        await other.close()
    assert (taken.seq, third.seq, third.prev_hash) == (2, 3, taken.entry_hash)
    assert writer.redone == 1
    assert (report.ok, report.entries) == (True, 3), report.view()


WALK_TAMPERING = {
    "change": (["UPDATE consent_ledger SET decision = 'granted' WHERE seq = 6"], 6,
               "hash_mismatch"),
    "delete-at-a-chunk-end": (["DELETE FROM consent_ledger WHERE seq = 8"], 8, "missing_entry"),
    "delete-a-whole-chunk": (["DELETE FROM consent_ledger WHERE seq BETWEEN 5 AND 8"], 5,
                             "missing_entry"),
    "reorder-across-chunks": ([
        "UPDATE consent_ledger SET seq = 1000 WHERE seq = 8",
        "UPDATE consent_ledger SET seq = 8 WHERE seq = 9",
        "UPDATE consent_ledger SET seq = 9 WHERE seq = 1000",
    ], 8, "broken_link"),
    "change-a-seal": (["UPDATE consent_ledger SET entry_mac = 'é' || substr(entry_mac, 2) "
                       "WHERE seq = 10"], 10, "bad_seal"),
}


@pytest.mark.parametrize("kind", list(WALK_TAMPERING))
async def test_the_remembering_walk_finds_edits_in_chunks_it_passed_before(
    pg_url: str, monkeypatch: pytest.MonkeyPatch, kind: str
) -> None:
    """The integrity watch's walk passes chunks whose stored bytes it checked before: an edit
    anywhere (inside a chunk, at a chunk's end, a whole chunk, across two chunks) changes the
    bytes, and the next walk checks that chunk entry by entry and names the entry."""
    monkeypatch.setattr(walk, "CHUNK", 4)  # chunks 1-4, 5-8, 9-12, 13-14
    db, signer, memory = Database(pg_url), Signer.from_keyring(KEYRING), ChainMemory()
    try:
        await append(db, 14)
        first = await verify(db, signer, memory=memory)
        again = await verify(db, signer, memory=memory)
        reused = memory.reused
        statements, bad_seq, problem = WALK_TAMPERING[kind]
        await unprotected(db, *statements)
        report = await verify(db, signer, memory=memory)
        plain = await verify(db, signer)
    finally:
        await db.close()
    assert (first.ok, again.ok, again.entries) == (True, True, 14), again.view()
    assert reused == 14  # nothing changed: every chunk passed by its bytes
    assert (report.first_bad_seq, report.problem) == (bad_seq, problem), report.view()
    assert (plain.first_bad_seq, plain.problem) == (bad_seq, problem)  # same as a full walk


async def test_a_new_mark_in_a_remembered_chunk_is_checked(
    pg_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A witnessed head or checkpoint inside a chunk passed before makes that chunk checked
    entry by entry again, so a mark that disagrees with the entry is found."""
    monkeypatch.setattr(walk, "CHUNK", 4)
    db, signer, memory = Database(pg_url), Signer.from_keyring(KEYRING), ChainMemory()
    try:
        await append(db, 10)
        assert (await verify(db, signer, memory=memory)).ok
        report = await verify(db, signer, {6: "f" * 64}, memory=memory)
    finally:
        await db.close()
    assert (report.first_bad_seq, report.problem) == (6, "checkpoint_mismatch"), report.view()


async def recompute_from(db: Database, first: int) -> None:
    """Change entry `first` and recompute the hash of it and every later entry, each linked
    to the one before (what an intruder without the seal key can do)."""
    async with db.session() as session:
        entries = list((await session.execute(
            select(Entry).where(Entry.seq >= first).order_by(Entry.seq)
        )).scalars())
        for entry in entries:
            session.expunge(entry)
    prev = entries[0].prev_hash
    statements = []
    for entry in entries:
        if entry.seq == first:
            entry.decision = (
                Decision.DENIED if entry.decision == Decision.GRANTED else Decision.GRANTED
            )
        entry.prev_hash = prev
        prev = hash_of(entry)
        statements.append(
            f"UPDATE consent_ledger SET decision = '{entry.decision.value}', "  # noqa: S608
            f"prev_hash = '{entry.prev_hash}', entry_hash = '{prev}' WHERE seq = {entry.seq}"
        )
    await unprotected(db, *statements)


RANGE_TAMPERING = {
    **WALK_TAMPERING,
    "change-a-range-start": (["UPDATE consent_ledger SET method = 'api' WHERE seq = 9"], 9,
                             "hash_mismatch"),
    "quote-in-a-text-field": (["UPDATE consent_ledger SET purpose = 'a\",\"b' WHERE seq = 3"],
                              3, "hash_mismatch"),
    "delete-the-last-range": (["DELETE FROM consent_ledger WHERE seq BETWEEN 9 AND 12"], 9,
                              "missing_entry"),
}


@pytest.mark.parametrize("kind", [*RANGE_TAMPERING, "change-and-recompute", "delete-newest"])
async def test_the_full_walk_reads_ranges_in_parallel_and_names_the_bad_entry(
    pg_url: str, monkeypatch: pytest.MonkeyPatch, kind: str
) -> None:
    """`callgate ledger verify` on PostgreSQL reads seq ranges over several connections at
    once and checks them in order, each from the previous range's last entry: an edit at a
    range's edge, a whole range gone, a reorder across two ranges, a rewrite rehashed to the
    head, a deleted tail are each found at the same entry, as the same problem, as the walk
    entry by entry finds them."""
    monkeypatch.setattr(walk, "VERIFY_BATCH", 4)  # ranges 1-4, 5-8, 9-12, 13-16
    monkeypatch.setattr(walk, "READERS", 3)
    db, signer = Database(pg_url), Signer.from_keyring(KEYRING)
    try:
        await append(db, 14)
        intact = await verify(db, signer)
        if kind == "change-and-recompute":
            await recompute_from(db, 6)
            bad_seq, problem = 6, "bad_seal"
        elif kind == "delete-newest":
            await do_checkpoint(db, signer, T0 + timedelta(hours=1))
            await unprotected(db, "DELETE FROM consent_ledger WHERE seq >= 12")
            bad_seq, problem = 12, "truncated"
        else:
            statements, bad_seq, problem = RANGE_TAMPERING[kind]
            await unprotected(db, *statements)
        report = await verify(db, signer)
        monkeypatch.setattr(walk, "VERIFY_BATCH", 1000)  # one range: the batch path
        monkeypatch.setattr(walk, "READERS", 1)
        whole = await verify(db, signer)
    finally:
        await db.close()
    assert (intact.ok, intact.entries, intact.head_seq) == (True, 14, 14), intact.view()
    assert (report.first_bad_seq, report.problem) == (bad_seq, problem), report.view()
    assert (whole.first_bad_seq, whole.problem) == (bad_seq, problem), whole.view()
    assert report.entries == whole.entries
