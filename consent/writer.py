"""Group commit for the ledger: many waiting decisions, one transaction, one fsync.

A chain admits one appender at a time (each entry names the hash of the one before), so one
commit per entry makes every writer queue behind the previous writer's fsync. Instead each
process keeps one queue: the first writer to find no batch in flight starts one, which takes
every decision waiting at that moment, appends them in order under the chain lock (PostgreSQL's
advisory lock across nodes, SQLite's write lock), commits once, and only then answers each
writer with its entry. Writers arriving meanwhile form the next batch. No gaps and no forks (the
head is read under the lock, so the order comes from the database, not this process), durable
before any answer, and a failed commit fails every writer in that batch, none half-written.

On PostgreSQL a batch costs one statement besides BEGIN and COMMIT: the writer remembers the
head its last commit made, so the entries are hashed and sealed before the database is touched,
and one INSERT takes the chain lock, checks that the remembered head is still the newest entry's
(seq and hash) and inserts every row (unnest of arrays). Another node may have appended since:
then the check inserts nothing, or the primary key on seq refuses the duplicate, and the batch
is redone the slow way (lock, read the head, hash again). The primary key is what forbids a
fork; the check forbids a gap; the answer still waits for the commit.
"""

from __future__ import annotations

import asyncio
import contextlib
import weakref
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import text
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncSession

from consent.checkpoints import Signer
from consent.ledger import (
    CHAIN_LOCK,
    Entry,
    Head,
    NewDecision,
    append_batch,
    chain_entries,
)
from core.database import Database
from core.runtime import Runtime

MAX_BATCH = 512

# The chain lock for the rest of the transaction, then every row, only if the head is the one
# the entries were hashed on: that entry is there with that hash and nothing after it (the CTE
# is materialized: the lock is taken once). The check may read a snapshot taken before the lock
# was granted; a row committed since then at the same seq is still refused by the primary key,
# so a stale head never forks the chain.
PG_APPEND = text(
    "WITH chain AS MATERIALIZED (SELECT pg_advisory_xact_lock(:lock) AS held) "
    "INSERT INTO consent_ledger (seq, id, at, booking_id, subject_id, purpose, decision, "
    "notice_id, notice_sha256, method, actor, prev_hash, entry_hash, entry_mac) "
    "SELECT r.* FROM unnest(CAST(:seq AS bigint[]), CAST(:id AS uuid[]), "
    "CAST(:at AS timestamptz[]), CAST(:booking AS uuid[]), CAST(:subject AS uuid[]), "
    "CAST(:purpose AS text[]), CAST(:decision AS text[]), CAST(:notice AS uuid[]), "
    "CAST(:notice_sha256 AS text[]), CAST(:method AS text[]), CAST(:actor AS text[]), "
    "CAST(:prev AS text[]), CAST(:hash AS text[]), CAST(:mac AS text[])) AS r "
    "CROSS JOIN chain "
    "WHERE NOT EXISTS (SELECT 1 FROM consent_ledger WHERE seq > CAST(:head_seq AS bigint)) "
    "AND (CAST(:head_seq AS bigint) = 0 OR EXISTS (SELECT 1 FROM consent_ledger "
    "WHERE seq = CAST(:head_seq AS bigint) AND entry_hash = CAST(:head_hash AS text)))"
)


Effect = Callable[[AsyncSession, Entry], None]
"""What else an append writes in the same transaction (e.g. the webhook outbox row)."""


@dataclass
class _Waiting:
    new: NewDecision
    at: datetime
    done: asyncio.Future[Entry]
    effect: Effect | None = None


class LedgerWriter:
    """Appends decisions to the chain for one process; `append()` returns once committed."""

    def __init__(self, db: Database, seal_key: bytes, *, max_batch: int = MAX_BATCH) -> None:
        self.db = db
        self._seal_key = seal_key
        self._watchers: list[Callable[[list[Entry]], None]] = []
        self._max_batch = max_batch
        self._queue: list[_Waiting] = []
        self._flushing: asyncio.Task[None] | None = None
        self._head: Head | None = None  # what this writer's last commit made newest
        self.batches = 0  # commits made (for the benchmark and metrics)
        self.appended = 0  # entries committed
        self.redone = 0  # batches hashed again because another node had appended

    def watch(self, committed: Callable[[list[Entry]], None]) -> None:
        """Call `committed(entries)` after each commit (the integrity watch's witness)."""
        self._watchers.append(committed)

    async def append(
        self, new: NewDecision, at: datetime, *, effect: Effect | None = None
    ) -> Entry:
        """Put `new` on the chain; the entry (and what `effect` writes in the same
        transaction) is durable when this returns."""
        waiting = _Waiting(new, at, asyncio.get_running_loop().create_future(), effect)
        self._queue.append(waiting)
        if self._flushing is None:
            self._flushing = asyncio.create_task(self._flush(), name="consent-ledger-commit")
        # A writer that gives up still leaves its decision to the batch (it may be committed).
        return await asyncio.shield(waiting.done)

    async def close(self) -> None:
        task, self._flushing = self._flushing, None
        if task is not None:
            with contextlib.suppress(BaseException):
                await task

    async def _flush(self) -> None:
        try:
            while self._queue:
                batch, self._queue = (
                    self._queue[: self._max_batch], self._queue[self._max_batch :]
                )
                await self._commit(batch)
        finally:
            self._flushing = None

    async def _commit(self, batch: list[_Waiting]) -> None:
        items = [(w.new, w.at) for w in batch]
        try:
            try:
                entries = await self._append(batch, items, fast=True)
            except IntegrityError:
                # The primary key refused a seq another node took since our last commit.
                self._head, self.redone = None, self.redone + 1
                entries = await self._append(batch, items, fast=False)
        except Exception as exc:
            self._head = None  # the commit's outcome is unknown: read the head next time
            for waiting in batch:
                if not waiting.done.done():
                    waiting.done.set_exception(exc)
            return
        self._head = (entries[-1].seq, entries[-1].entry_hash, entries[-1].at)
        self.batches += 1
        self.appended += len(entries)
        for watcher in self._watchers:
            watcher(entries)
        for waiting, entry in zip(batch, entries, strict=True):
            if not waiting.done.done():
                waiting.done.set_result(entry)

    async def _append(
        self, batch: list[_Waiting], items: list[tuple[NewDecision, datetime]], *, fast: bool
    ) -> list[Entry]:
        """One transaction: the entries, then each writer's effect; committed on return."""
        head = self._head if fast and self.db.dialect == "postgresql" else None
        async with self.db.session() as session:
            entries = None
            if head is not None:
                entries = chain_entries(items, head, self._seal_key)
                if not await _insert_after(session, head, entries):
                    self.redone += 1  # another node appended: hash again on its head
                    entries = None
            if entries is None:
                entries = await append_batch(session, items, self._seal_key)
            for waiting, entry in zip(batch, entries, strict=True):
                if waiting.effect is not None:
                    waiting.effect(session, entry)
        return entries


async def _insert_after(session: AsyncSession, head: Head, entries: list[Entry]) -> bool:
    """Insert `entries` (hashed on `head`) in one statement if `head` is still the newest
    entry; False, with nothing written, if it is not."""
    columns: dict[str, list[object]] = {
        "seq": [], "id": [], "at": [], "booking": [], "subject": [], "purpose": [],
        "decision": [], "notice": [], "notice_sha256": [], "method": [], "actor": [],
        "prev": [], "hash": [], "mac": [],
    }
    for e in entries:
        for name, value in zip(columns, (
            e.seq, e.id, e.at, e.booking_id, e.subject_id, e.purpose.value, e.decision.value,
            e.notice_id, e.notice_sha256, e.method.value, e.actor.value, e.prev_hash,
            e.entry_hash, e.entry_mac,
        ), strict=True):
            columns[name].append(value)
    result = await session.execute(
        PG_APPEND, {**columns, "lock": CHAIN_LOCK, "head_seq": head[0], "head_hash": head[1]}
    )
    inserted = getattr(result, "rowcount", -1)
    if inserted == len(entries):
        return True
    if inserted != 0:
        raise RuntimeError(f"the ledger took {inserted} of {len(entries)} entries")
    return False


_WRITERS: weakref.WeakKeyDictionary[Database, LedgerWriter] = weakref.WeakKeyDictionary()


def ledger_writer(runtime: Runtime) -> LedgerWriter:
    """The writer of `runtime`'s database in this process: one queue per database, so every
    caller (the consent API, privacy's withdraw-and-delete, the live gate's witness) shares
    the same group commit."""
    writer = _WRITERS.get(runtime.db)
    if writer is None:
        writer = LedgerWriter(runtime.db, Signer.from_keyring(runtime.keys).seal_key)
        _WRITERS[runtime.db] = writer
    return writer
