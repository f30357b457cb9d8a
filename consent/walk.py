"""The integrity watch's walk: every entry every time, without hashing again what did not change.

The watch walks the whole chain every `consent_verify_interval_s`. On PostgreSQL it goes chunk by
chunk (CHUNK seqs): it reads the chunk's rows exactly as stored (COPY in binary: every column,
nothing rendered) and hashes those bytes itself (SHA-256, in this process). A chunk whose bytes
hash to what they were when this process last checked every entry of it, entry by entry, is
unchanged, so it passes again, as long as the walk reaches it with the same previous hash, no
new signed or witnessed mark falls inside it, and it holds no unsealed entry after a sealed
one. Any other chunk (the growing tail, any edited chunk, every chunk of the first walk) is
checked entry by entry (ledger.check_rows: link, hash, seal, marks). Both reads of a chunk
happen in one REPEATABLE READ snapshot, so the bytes remembered are the bytes that were checked.

What this trusts is what the full walk trusts: PostgreSQL hands over the stored values (it
renders the canonical JSON of a checked entry; callgate computes every hash). An edit changes
stored bytes, so its chunk is checked entry by entry on the next walk, and fails there.
The memory is per process (nothing to forge in the database) and keyed by the seal keys.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
from dataclasses import dataclass, field
from typing import Any

from consent.ledger import (
    GENESIS,
    PG_ROWS,
    ChainReport,
    Row,
    WalkRules,
    check_rows,
    walk_chain,
)
from core.database import Database

CHUNK = 8192

_RAW = (  # read through COPY ... TO STDOUT (FORMAT binary)
    "SELECT seq, id, at, booking_id, subject_id, purpose, decision, notice_id, "
    "notice_sha256, method, actor, prev_hash, entry_hash, entry_mac FROM consent_ledger "
    "WHERE seq >= {start} AND seq < {end} ORDER BY seq"
)
_RENDERED = PG_ROWS.replace(
    "WHERE seq >= $1 ORDER BY seq LIMIT $2", "WHERE seq >= $1 AND seq < $2 ORDER BY seq"
)


_Loaded = tuple[bytes, frozenset[tuple[int, str]], list[Row] | None]


@dataclass(frozen=True)
class _Checked:
    """A chunk whose every entry passed: its bytes' hash and what the walk carries past it."""

    fingerprint: bytes
    first_prev: str
    last_seq: int
    last_hash: str
    sealed: bool  # holds a sealed entry
    unsealed: bool  # holds an unsealed entry
    marks: frozenset[tuple[int, str]]  # the marks inside it that were checked


@dataclass
class ChainMemory:
    """Chunks this process checked entry by entry, by first seq (for one set of seal keys)."""

    keys: tuple[bytes, ...] = ()
    chunks: dict[int, _Checked] = field(default_factory=dict)
    rechecked: int = 0  # entries checked one by one in the last walk
    reused: int = 0  # entries passed by their chunk's unchanged bytes in the last walk


async def walk_remembering(
    db: Database, report: ChainReport, rules: WalkRules, memory: ChainMemory
) -> None:
    """Walk the whole chain like ledger.walk_chain, passing chunks unchanged since `memory`
    saw them intact (PostgreSQL, from seq 1; anything else is a plain walk)."""
    if db.dialect != "postgresql" or rules.start_seq != 1:
        await walk_chain(db, report, rules)
        return
    keys = (rules.seal_key, *rules.previous_seal_keys)
    if memory.keys != keys:
        memory.keys, memory.chunks = keys, {}
    memory.rechecked = memory.reused = 0
    async with db.engine.connect() as conn:
        raw = await conn.get_raw_connection()
        driver: Any = raw.driver_connection
        if driver is None:  # never for a connection checked out of the pool
            raise RuntimeError("no driver connection")
        async with driver.transaction(isolation="repeatable_read", readonly=True):
            last = await driver.fetchval("SELECT max(seq) FROM consent_ledger")
            await _walk(driver, report, rules, memory, int(last or 0))


async def _walk(
    driver: Any, report: ChainReport, rules: WalkRules, memory: ChainMemory, last: int
) -> None:
    expected, prev = 1, GENESIS
    report.sealed = False
    starts = range(1, last + 1, CHUNK)
    loading = asyncio.ensure_future(_load(driver, rules, memory, 1)) if starts else None
    for start in starts:
        if loading is None:  # never: one is started for every chunk up to the last
            raise RuntimeError("no chunk read")
        fingerprint, marks, rows = await loading
        # PostgreSQL reads the next chunk while this one is checked (one query at a time).
        following = start + CHUNK
        loading = (
            asyncio.ensure_future(_load(driver, rules, memory, following))
            if following <= last else None
        )
        await asyncio.sleep(0)  # let it send its query before the CPU work below
        known = memory.chunks.get(start)
        if rows is None and known is not None and expected == start and (
            known.first_prev == prev and not (report.sealed and known.unsealed)
        ):
            memory.reused += known.last_seq - start + 1
            report.entries += known.last_seq - start + 1
            report.sealed = report.sealed or known.sealed
            report.head_seq, report.head_hash = known.last_seq, known.last_hash
            expected, prev = known.last_seq + 1, known.last_hash
            continue
        memory.chunks.pop(start, None)
        if rows is None:  # unchanged, but reached differently: check it entry by entry
            ahead = await loading if loading is not None else None  # one query at a time
            rows = await driver.fetch(_RENDERED, start, start + CHUNK)
            loading = asyncio.ensure_future(_ready(ahead)) if ahead is not None else None
        if not rows or not check_rows(report, rows, expected, prev, rules):
            if not rows:
                report.fail(expected, "missing_entry", f"entry {expected} is missing")
            if loading is not None:
                # Let the query in flight finish: cancelling it mid-protocol would leave the
                # pooled connection unusable.
                with contextlib.suppress(Exception):
                    await loading
            return
        memory.rechecked += len(rows)
        memory.chunks[start] = _Checked(
            fingerprint, rows[0][2], rows[-1][0], rows[-1][3],
            any(r[4] is not None for r in rows), any(r[4] is None for r in rows), marks,
        )
        expected, prev = report.head_seq + 1, report.head_hash


async def _load(
    driver: Any, rules: WalkRules, memory: ChainMemory, start: int
) -> _Loaded:
    """The chunk from `start`: its bytes' hash, the marks inside it, and its rows rendered for
    a check entry by entry (None when memory says the same bytes passed with these marks)."""
    end = start + CHUNK
    digest = hashlib.sha256()
    await driver.copy_from_query(
        _RAW.format(start=int(start), end=int(end)), output=_feed(digest), format="binary"
    )
    fingerprint = digest.digest()
    marks = frozenset((s, h) for s, h in rules.marks.items() if start <= s < end)
    known = memory.chunks.get(start)
    if known is not None and known.fingerprint == fingerprint and marks <= known.marks:
        return fingerprint, marks, None
    rows: list[Row] = await driver.fetch(_RENDERED, start, end)
    return fingerprint, marks, rows


async def _ready(value: _Loaded) -> _Loaded:
    return value


def _feed(digest: Any) -> Any:
    async def output(data: bytes) -> None:
        digest.update(data)

    return output
