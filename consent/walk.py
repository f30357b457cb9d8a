"""Walking the chain: checking every entry, and the integrity watch's walk.

`walk_chain` checks every entry from a seq on (`callgate ledger verify`, a checkpoint's walk):
contiguous seqs, each link, hash and seal, the signed and witnessed marks. Verification is done
here, never by asking the database for a hash: PostgreSQL hands over the stored values (the
canonical JSON of each entry rendered from its columns) and this process hashes them. On
PostgreSQL it reads seq ranges over READERS connections at once (one snapshot), each range
checked in order from the previous range's last entry.

`walk_remembering` is the integrity watch's walk of the whole chain (every
`consent_verify_interval_s`), without hashing again what did not change. On PostgreSQL it goes
chunk by chunk (CHUNK seqs): it reads the chunk's rows exactly as stored (COPY in binary: every
column, nothing rendered) and hashes those bytes itself (SHA-256, in this process). A chunk
whose bytes hash to what they were when this process last checked it entry by entry is
unchanged, so it passes again, as long as the walk reaches it with the same previous hash, no
new signed or witnessed mark falls inside it, and it holds no unsealed entry after a sealed
one. Any other chunk (the growing tail, any edited chunk, every chunk of the first walk) is
checked entry by entry (check_rows: link, hash, seal, marks). Both reads of a chunk happen in
one REPEATABLE READ snapshot, so the bytes remembered are the bytes that were checked; READERS
connections share that snapshot (pg_export_snapshot), each reading a chunk ahead.

What this trusts is what walk_chain trusts: PostgreSQL hands over the stored values (it
renders the canonical JSON of a checked entry; callgate computes every hash). An edit changes
stored bytes, so its chunk is checked entry by entry on the next walk, and fails there.
The memory is per process (nothing to forge in the database) and keyed by the seal keys.

Size (over 400 lines): both walks share the snapshot readers, the read-ahead, the row shapes
and the checks, the hot path.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import hmac
import re
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, Generic, TypeVar

from sqlalchemy import select

from consent.ledger import GENESIS, Entry, canonical_text, json_string, seal, timestamp
from core.database import Database

VERIFY_BATCH = 5000  # seqs per range read by walk_chain
CHUNK = 8192  # seqs per chunk of the remembering walk
READERS = 3  # connections reading ranges or chunks at once, in one snapshot (both walks)
_SNAPSHOT_ID = re.compile(r"[0-9A-Fa-f-]{1,64}")
_T = TypeVar("_T")

@dataclass
class ChainReport:
    """What walking the chain found; `first_bad_seq` names the first entry that fails."""

    ok: bool = True
    entries: int = 0
    head_seq: int = 0
    head_hash: str = GENESIS
    first_bad_seq: int | None = None
    problem: str | None = None
    detail: str | None = None
    checkpoints: list[dict[str, Any]] = field(default_factory=list)
    sealed: bool = False  # a sealed entry was passed

    def fail(self, seq: int, problem: str, detail: str) -> None:
        if self.ok:
            self.ok, self.first_bad_seq, self.problem, self.detail = False, seq, problem, detail

    def view(self) -> dict[str, Any]:
        return {
            "ok": self.ok,
            "entries": self.entries,
            "head": {"seq": self.head_seq, "entry_hash": self.head_hash},
            "first_bad_seq": self.first_bad_seq,
            "problem": self.problem,
            "detail": self.detail,
            "checkpoints": self.checkpoints,
        }


@dataclass(frozen=True)
class WalkRules:
    """What a walk checks besides the links: the seal key, hashes that must stand at given
    seqs (signed checkpoints, witnessed heads), and where to start (seq 1, or just past a
    trusted checkpoint; `sealed` when the chain is already sealed there)."""

    seal_key: bytes
    marks: Mapping[int, str] = field(default_factory=dict)
    previous_seal_keys: tuple[bytes, ...] = ()
    start_seq: int = 1
    start_prev: str = GENESIS
    sealed: bool = False


Row = tuple[Any, ...]
"""(seq, body, prev_hash, entry_hash, entry_mac): `body` is the UTF-8 canonical JSON of the
entry's fields without "prev" (a sealed entry's body; an unsealed entry's input has "prev"
inserted before "purpose")."""

# PostgreSQL renders the canonical JSON itself (uuid text, the time) and hands over its bytes:
# no Python object per field, no decoding, which was most of the cost of a walk. One concat()
# builds it (each || copied the growing text: twice the database's time), and the five
# free-text fields go between quotes as stored, unescaped (to_json was a third of the render).
# That is still exact: legitimate values (purposes, decisions, methods, actors, hex digests)
# hold no quote, backslash or non-ASCII character, so json.dumps writes them the same; and an
# edited row cannot render the bytes an entry was hashed over, because those hold the
# template's quotes only: a value with a quote adds one, and without one each value is exactly
# the text between two of the template's quotes, so equal bytes mean equal values (typed
# columns render one way). Any other value is an edit and fails its hash either way.
PG_ROWS = (
    "SELECT seq, convert_to(concat('{\"actor\":\"', actor, '\",\"at\":\"', "
    "to_char(at AT TIME ZONE 'UTC', 'YYYY-MM-DD\"T\"HH24:MI:SS.US\"Z\"'), "
    "'\",\"booking\":\"', booking_id, '\",\"decision\":\"', decision, "
    "'\",\"id\":\"', id, '\",\"method\":\"', method, '\",\"notice_id\":\"', notice_id, "
    "'\",\"notice_sha256\":\"', notice_sha256, '\",\"purpose\":\"', purpose, "
    "'\",\"seq\":', seq, ',\"subject\":\"', subject_id, '\"}'), 'UTF8'), "
    "prev_hash, entry_hash, entry_mac FROM consent_ledger "
    "WHERE seq >= $1 AND seq < $2 ORDER BY seq"
)

async def _sqlite_rows(db: Database, from_seq: int) -> list[Row]:
    columns = [getattr(Entry, name) for name in (*HASHED, "entry_hash", "entry_mac")]
    async with db.session() as session:
        query = select(*columns).where(Entry.seq >= from_seq).order_by(Entry.seq)
        result = await session.execute(query.limit(VERIFY_BATCH))
        return [
            (r[0], canonical_text(
                r[0], str(r[1]), timestamp(r[2]), str(r[3]), str(r[4]), str(r[5]), str(r[6]),
                str(r[7]), r[8], str(r[9]), str(r[10]), None,
            ), r[11], r[12], r[13])
            for r in result
        ]


async def walk_chain(db: Database, report: ChainReport, rules: WalkRules) -> None:
    """Check every entry from `rules.start_seq` in seq order: contiguous seq, prev hash =
    previous entry's hash, stored hash = recomputed hash, a valid seal (unsealed entries only
    before the first sealed one), and the hash at each seq in `rules.marks`. Constant memory
    (READERS + 1 batches at a time).

    On PostgreSQL the chain is read in seq ranges of VERIFY_BATCH, as it stood when the walk
    began (one REPEATABLE READ snapshot shared by READERS connections, each rendering a range
    ahead while this process hashes the current one: the database's side is the slower one).
    Ranges are checked strictly in order, each from the previous range's last entry, by the
    same check_rows: a range missing rows fails at the first missing seq as before."""
    expected, prev = rules.start_seq, rules.start_prev
    report.sealed = rules.sealed
    if db.dialect != "postgresql":
        batch = await _sqlite_rows(db, expected)
        while batch and check_rows(report, batch, expected, prev, rules):
            expected, prev = report.head_seq + 1, report.head_hash
            batch = await _sqlite_rows(db, expected)
        return
    async with contextlib.AsyncExitStack() as stack:
        readers, last = await _snapshot_readers(
            stack, db, lambda last: (last - expected) // VERIFY_BATCH + 1
        )
        starts = list(range(expected, last + 1, VERIFY_BATCH))

        async def load(reader: _Reader, start: int) -> list[Row]:
            async with reader.busy:
                # asyncpg's records unpack like tuples: no copy per row.
                rows: list[Row] = await reader.connection.fetch(
                    PG_ROWS, start, start + VERIFY_BATCH
                )
            return rows

        async with _ReadAhead(readers, starts, load) as ahead:
            for n in range(len(starts)):
                batch = await ahead.get(n)
                if not batch:
                    report.fail(expected, "missing_entry", f"entry {expected} is missing")
                    return
                if not check_rows(report, batch, expected, prev, rules):
                    return
                expected, prev = report.head_seq + 1, report.head_hash


def check_rows(
    report: ChainReport, batch: list[Row], expected: int, prev: str, rules: WalkRules
) -> bool:
    """Check one batch (see walk_chain); False at the first bad entry. Written out, no call
    per entry: this is the hot path of every walk."""
    sha256, marks, older = hashlib.sha256, rules.marks, rules.previous_seal_keys
    # The keyed BLAKE2b state after the key block, copied per entry (half the cost of a new one).
    keyed = hashlib.blake2b(key=rules.seal_key, digest_size=32)
    for seq, body, stored_prev, stored, mac in batch:
        if seq != expected:
            report.fail(expected, "missing_entry", f"entry {expected} is missing")
            return False
        if stored_prev != prev:
            report.fail(seq, "broken_link", "prev_hash does not match the entry before it")
            return False
        if mac is None:
            if not _legacy_ok(report, seq, body, prev, stored):
                return False
        else:
            report.sealed = True
            if sha256((prev + sha256(body).hexdigest()).encode()).hexdigest() != stored:
                report.fail(seq, "hash_mismatch", "the entry's content does not match its hash")
                return False
            made = keyed.copy()
            made.update(stored.encode())
            # As bytes: compare_digest refuses str with non-ASCII text (an edited seal).
            if not hmac.compare_digest(made.hexdigest().encode(), mac.encode()) and not (
                _older_seal(stored, mac, older)
            ):
                report.fail(seq, "bad_seal", "the seal was not made by this server")
                return False
        signed = marks.get(seq)
        if signed is not None and signed != stored:
            report.fail(seq, "checkpoint_mismatch", MARK_DIFFERS)
            return False
        report.entries += 1
        expected, prev = seq + 1, stored
    report.head_seq, report.head_hash = expected - 1, prev
    return True


MARK_DIFFERS = "differs from a signed checkpoint or a witnessed head"


def _older_seal(entry_hash: str, mac: str, older: tuple[bytes, ...]) -> bool:
    """Sealed under the key of a previous server secret (kept after a rotation)."""
    return any(hmac.compare_digest(seal(k, entry_hash).encode(), mac.encode()) for k in older)


def _legacy_ok(report: ChainReport, seq: int, body: bytes, prev: str, stored: str) -> bool:
    """An unsealed entry (written before sealing existed): only as the prefix before the
    first sealed entry, which pins it by its link; its hash covers "prev" inside the JSON."""
    if report.sealed:
        report.fail(seq, "unsealed_entry", "an entry without a seal after sealed ones")
        return False
    cut = body.index(b'"purpose":')  # the first: a JSON string cannot hold a bare quote
    text = body[:cut] + f'"prev":{json_string(prev)},'.encode() + body[cut:]
    if hashlib.sha256(text).hexdigest() != stored:
        report.fail(seq, "hash_mismatch", "the entry's content does not match its hash")
        return False
    return True


HASHED = (
    "seq", "id", "at", "booking_id", "subject_id", "purpose", "decision", "notice_id",
    "notice_sha256", "method", "actor", "prev_hash",
)



_RAW = (  # read through COPY ... TO STDOUT (FORMAT binary)
    "SELECT seq, id, at, booking_id, subject_id, purpose, decision, notice_id, "
    "notice_sha256, method, actor, prev_hash, entry_hash, entry_mac FROM consent_ledger "
    "WHERE seq >= {start} AND seq < {end} ORDER BY seq"
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
    async with contextlib.AsyncExitStack() as stack:
        readers, last = await _snapshot_readers(stack, db, lambda last: (last + CHUNK - 1) // CHUNK)
        await _walk(readers, report, rules, memory, last)


@dataclass
class _Reader:
    """One pooled connection inside the walk's snapshot; one query at a time."""

    connection: Any
    busy: asyncio.Lock = field(default_factory=asyncio.Lock)


async def _snapshot_reader(
    stack: contextlib.AsyncExitStack[bool | None], db: Database, snapshot: str | None
) -> _Reader:
    """A connection in a read-only REPEATABLE READ transaction: a new snapshot, or (given its
    id) the one the first reader exported, so every reader sees the same rows."""
    conn = await stack.enter_async_context(db.engine.connect())
    raw = await conn.get_raw_connection()
    driver: Any = raw.driver_connection
    if driver is None:  # never for a connection checked out of the pool
        raise RuntimeError("no driver connection")
    await stack.enter_async_context(
        driver.transaction(isolation="repeatable_read", readonly=True)
    )
    if snapshot is not None:
        if not _SNAPSHOT_ID.fullmatch(snapshot):  # it is quoted into the statement below
            raise RuntimeError(f"unexpected snapshot id {snapshot!r}")
        await driver.execute(f"SET TRANSACTION SNAPSHOT '{snapshot}'")
    return _Reader(driver)


async def _snapshot_readers(
    stack: contextlib.AsyncExitStack[bool | None], db: Database, ranges: Callable[[int], int]
) -> tuple[list[_Reader], int]:
    """Up to READERS connections in one snapshot (no more than `ranges(last)` has work for),
    and the newest seq in it."""
    first = await _snapshot_reader(stack, db, None)
    snapshot = await first.connection.fetchval("SELECT pg_export_snapshot()")
    last = int(await first.connection.fetchval("SELECT max(seq) FROM consent_ledger") or 0)
    readers = [first] + [
        await _snapshot_reader(stack, db, snapshot) for _ in range(min(READERS, ranges(last)) - 1)
    ]
    return readers, last


class _ReadAhead(Generic[_T]):
    """Range n is read by reader n % len(readers), each reader one range ahead of the one
    being checked (the database works on them while this process hashes). On leaving, the
    reads in flight are awaited: cancelling one mid-protocol would leave its pooled connection
    unusable."""

    def __init__(
        self, readers: list[_Reader], starts: list[int],
        load: Callable[[_Reader, int], Awaitable[_T]],
    ) -> None:
        self.readers, self.starts, self.load = readers, starts, load
        self.loading: dict[int, asyncio.Future[_T]] = {}

    def _fill(self, upto: int) -> None:
        for n in range(upto, min(upto + len(self.readers), len(self.starts))):
            if n not in self.loading:
                reader = self.readers[n % len(self.readers)]
                self.loading[n] = asyncio.ensure_future(self.load(reader, self.starts[n]))

    async def get(self, n: int) -> _T:
        self._fill(n)
        value = await self.loading.pop(n)
        self._fill(n + 1)
        await asyncio.sleep(0)  # let the readers send their queries before the CPU work
        return value

    async def __aenter__(self) -> _ReadAhead[_T]:
        return self

    async def __aexit__(self, *exc: object) -> None:
        for pending in self.loading.values():
            with contextlib.suppress(Exception):
                await pending


async def _walk(
    readers: list[_Reader], report: ChainReport, rules: WalkRules, memory: ChainMemory,
    last: int,
) -> None:
    expected, prev = 1, GENESIS
    report.sealed = False
    starts = list(range(1, last + 1, CHUNK))

    def load(reader: _Reader, start: int) -> Awaitable[_Loaded]:
        return _load(reader, rules, memory, start)

    async with _ReadAhead(readers, starts, load) as ahead:
        for n, start in enumerate(starts):
            fingerprint, marks, rows = await ahead.get(n)
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
                reader = readers[n % len(readers)]
                async with reader.busy:
                    rows = await reader.connection.fetch(PG_ROWS, start, start + CHUNK)
            if not rows:
                report.fail(expected, "missing_entry", f"entry {expected} is missing")
                return
            if not check_rows(report, rows, expected, prev, rules):
                return
            memory.rechecked += len(rows)
            memory.chunks[start] = _Checked(
                fingerprint, rows[0][2], rows[-1][0], rows[-1][3],
                any(r[4] is not None for r in rows), any(r[4] is None for r in rows), marks,
            )
            expected, prev = report.head_seq + 1, report.head_hash


async def _load(reader: _Reader, rules: WalkRules, memory: ChainMemory, start: int) -> _Loaded:
    """The chunk from `start`: its bytes' hash, the marks inside it, and its rows rendered for
    a check entry by entry (None when memory says the same bytes passed with these marks)."""
    end = start + CHUNK
    digest = hashlib.sha256()
    async with reader.busy:
        await reader.connection.copy_from_query(
            _RAW.format(start=int(start), end=int(end)), output=_feed(digest), format="binary"
        )
        fingerprint = digest.digest()
        marks = frozenset((s, h) for s, h in rules.marks.items() if start <= s < end)
        known = memory.chunks.get(start)
        if known is not None and known.fingerprint == fingerprint and marks <= known.marks:
            return fingerprint, marks, None
        rows: list[Row] = await reader.connection.fetch(PG_ROWS, start, end)
    return fingerprint, marks, rows


def _feed(digest: Any) -> Any:
    async def output(data: bytes) -> None:
        digest.update(data)

    return output
