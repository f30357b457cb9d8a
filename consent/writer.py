"""Group commit for the ledger: many waiting decisions, one transaction, one fsync.

A chain admits one appender at a time (each entry names the hash of the one before), so one
commit per entry makes every writer queue behind the previous writer's fsync. Instead each
process keeps one queue: the first writer to find no batch in flight starts one, which takes
every decision waiting at that moment, appends them in order under the chain lock (PostgreSQL's
advisory lock across nodes, SQLite's write lock), commits once, and only then answers each
writer with its entry. Writers arriving meanwhile form the next batch. No gaps and no forks (the
head is read under the lock, so the order comes from the database, not this process), durable
before any answer, and a failed commit fails every writer in that batch, none half-written.
"""

from __future__ import annotations

import asyncio
import contextlib
import weakref
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime

from sqlalchemy.ext.asyncio import AsyncSession

from consent.checkpoints import Signer
from consent.ledger import Entry, NewDecision, append_batch
from core.database import Database
from core.runtime import Runtime

MAX_BATCH = 512


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
        self.batches = 0  # commits made (for the benchmark and metrics)
        self.appended = 0  # entries committed

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
        try:
            async with self.db.session() as session:
                entries = await append_batch(
                    session, [(w.new, w.at) for w in batch], self._seal_key
                )
                for waiting, entry in zip(batch, entries, strict=True):
                    if waiting.effect is not None:
                        waiting.effect(session, entry)
        except Exception as exc:
            for waiting in batch:
                if not waiting.done.done():
                    waiting.done.set_exception(exc)
            return
        self.batches += 1
        self.appended += len(entries)
        for watcher in self._watchers:
            watcher(entries)
        for waiting, entry in zip(batch, entries, strict=True):
            if not waiting.done.done():
                waiting.done.set_result(entry)


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
