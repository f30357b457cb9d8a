"""The consent ledger: every decision, append-only, in one global hash chain.

A sealed entry (every entry written since migration 0008): body hash = SHA-256 of the canonical
JSON of (seq, id, at, booking, subject, purpose, decision, notice id, notice sha256, method,
actor); entry hash = SHA-256 of the previous entry hash followed by the body hash (both hex);
seal = keyed BLAKE2b of the entry hash under a key derived from the server secret, so someone
who can only write the database cannot add or rehash an entry. Older (unsealed) entries hash
the canonical JSON with the prev hash inside and must lie under a signed checkpoint. The first
entry's prev hash is 64 zeros. Appends are serialized (PostgreSQL: a transaction-scoped
advisory lock; SQLite: the engine's BEGIN IMMEDIATE), so the chain has no gaps and no forks;
consent/writer.py batches them (group commit). The database refuses UPDATE and DELETE.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import hmac
import json
import re
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import BigInteger, Select, String, Uuid, select, text
from sqlalchemy.ext.asyncio import AsyncSession
from sqlalchemy.orm import Mapped, mapped_column

from consent.purposes import Actor, Decision, Method, Purpose
from core.bookings import Booking, Participant
from core.crypto import sha256_hex
from core.database import Base, Database, UTCDateTime, enum_column
from core.events import ConsentChanged

GENESIS = "0" * 64
# Any constant works; it only has to be the same for every appender (pg_advisory_xact_lock).
CHAIN_LOCK = 0x63616C6C67617465  # "callgate"
VERIFY_BATCH = 5000


class Entry(Base):
    __tablename__ = "consent_ledger"

    seq: Mapped[int] = mapped_column(BigInteger, primary_key=True, autoincrement=False)
    id: Mapped[uuid.UUID] = mapped_column(Uuid, unique=True)
    at: Mapped[datetime] = mapped_column(UTCDateTime())
    booking_id: Mapped[uuid.UUID] = mapped_column(Uuid)
    subject_id: Mapped[uuid.UUID] = mapped_column(Uuid)
    purpose: Mapped[Purpose] = mapped_column(enum_column(Purpose, 32))
    decision: Mapped[Decision] = mapped_column(enum_column(Decision, 16))
    notice_id: Mapped[uuid.UUID] = mapped_column(Uuid)
    notice_sha256: Mapped[str] = mapped_column(String(64))
    method: Mapped[Method] = mapped_column(enum_column(Method, 24))
    actor: Mapped[Actor] = mapped_column(enum_column(Actor, 16))
    prev_hash: Mapped[str] = mapped_column(String(64))
    entry_hash: Mapped[str] = mapped_column(String(64))
    entry_mac: Mapped[str | None] = mapped_column(String(64), default=None)


@dataclass(frozen=True)
class NewDecision:
    """What a person decided, before it is placed on the chain."""

    booking_id: uuid.UUID
    subject_id: uuid.UUID
    purpose: Purpose
    decision: Decision
    notice_id: uuid.UUID
    notice_sha256: str
    method: Method = Method.WEB_DIALOG
    actor: Actor = Actor.SUBJECT


def timestamp(at: datetime) -> str:
    """UTC to the microsecond, the precision both backends keep."""
    # Same text as strftime("%Y-%m-%dT%H:%M:%S.%fZ"), several times faster (verify is hot).
    return at.astimezone(UTC).replace(tzinfo=None).isoformat(timespec="microseconds") + "Z"


def canonical(
    *,
    seq: int,
    id: uuid.UUID,
    at: datetime,
    booking_id: uuid.UUID,
    subject_id: uuid.UUID,
    purpose: str,
    decision: str,
    notice_id: uuid.UUID,
    notice_sha256: str,
    method: str,
    actor: str,
    prev_hash: str,
) -> bytes:
    """The bytes an unsealed (pre-0008) entry hash covers: sorted-key compact JSON of the
    entry's fields, i.e. json.dumps(fields, sort_keys=True, separators=(",", ":"))."""
    return canonical_text(
        seq, str(id), timestamp(at), str(booking_id), str(subject_id), str(purpose),
        str(decision), str(notice_id), notice_sha256, str(method), str(actor), prev_hash,
    )


def canonical_text(
    seq: int, id: str, at: str, booking: str, subject: str, purpose: str, decision: str,
    notice_id: str, notice_sha256: str, method: str, actor: str, prev: str | None,
) -> bytes:
    """Sorted-key compact JSON of the fields given as text, written out by hand because
    verification spends most of its time here; `prev=None` leaves "prev" out (the body of a
    sealed entry). Ids and the time come from typed columns (uuid, timestamp), whose text
    never needs escaping; the free-text fields are escaped as json.dumps would."""
    linked = "" if prev is None else f'"prev":{_json(prev)},'
    return (
        f'{{"actor":{_json(actor)},"at":"{at}","booking":"{booking}",'
        f'"decision":{_json(decision)},"id":"{id}","method":{_json(method)},'
        f'"notice_id":"{notice_id}","notice_sha256":{_json(notice_sha256)},'
        f'{linked}"purpose":{_json(purpose)},"seq":{int(seq)},"subject":"{subject}"}}'
    ).encode()


_PLAIN = re.compile(r"[A-Za-z0-9._:-]*")


def _json(value: str) -> str:
    """A JSON string literal, as json.dumps writes it (escaping only when needed)."""
    if value.isascii() and value.isalnum():  # the common case, without the regex
        return f'"{value}"'
    return f'"{value}"' if _PLAIN.fullmatch(value) else json.dumps(value)


def link(prev_hash: str, body_sha256: str) -> str:
    """A sealed entry's hash: SHA-256 over the previous entry hash then the body hash (hex)."""
    return hashlib.sha256((prev_hash + body_sha256).encode()).hexdigest()


def seal(key: bytes, entry_hash: str) -> str:
    """Keyed BLAKE2b-256 (RFC 7693 keyed mode) of the entry hash: only the server can make it."""
    return hashlib.blake2b(entry_hash.encode(), key=key, digest_size=32).hexdigest()


def _fields(entry: Entry) -> tuple[int, str, str, str, str, str, str, str, str, str, str]:
    return (
        entry.seq, str(entry.id), timestamp(entry.at), str(entry.booking_id),
        str(entry.subject_id), str(entry.purpose), str(entry.decision), str(entry.notice_id),
        entry.notice_sha256, str(entry.method), str(entry.actor),
    )


def body_hash_of(entry: Entry) -> str:
    return sha256_hex(canonical_text(*_fields(entry), None))


def hash_of(entry: Entry) -> str:
    """The hash `entry` must carry: sealed entries link a body hash, older ones hash all."""
    if entry.entry_mac is None:
        return sha256_hex(canonical_text(*_fields(entry), entry.prev_hash))
    return link(entry.prev_hash, body_hash_of(entry))


async def lock_chain(session: AsyncSession) -> None:
    """Hold the chain until this transaction ends (SQLite already holds its write lock)."""
    bind = session.get_bind()
    if bind.dialect.name == "postgresql":
        await session.execute(text("SELECT pg_advisory_xact_lock(:key)"), {"key": CHAIN_LOCK})


Head = tuple[int, str, datetime | None]
"""(seq, entry hash, time) of the newest entry; (0, GENESIS, None) for an empty ledger."""


async def chain_head(session: AsyncSession) -> tuple[int, str]:
    """(seq, entry hash) of the newest entry; (0, GENESIS) for an empty ledger."""
    seq, head, _ = await read_head(session)
    return seq, head


async def read_head(session: AsyncSession) -> Head:
    query = select(Entry.seq, Entry.entry_hash, Entry.at).order_by(Entry.seq.desc()).limit(1)
    row = (await session.execute(query)).first()
    return (int(row[0]), str(row[1]), row[2]) if row is not None else (0, GENESIS, None)


async def do_append(
    session: AsyncSession, new: NewDecision, at: datetime, seal_key: bytes
) -> Entry:
    """Append one entry inside the caller's transaction; the caller publishes `changed_event`
    after commit."""
    (entry,) = await append_batch(session, [(new, at)], seal_key)
    return entry


async def append_batch(
    session: AsyncSession, items: list[tuple[NewDecision, datetime]], seal_key: bytes
) -> list[Entry]:
    """Append `items` in order, sealed, inside the caller's transaction (one chain lock, one
    head read, one multi-row INSERT)."""
    await lock_chain(session)
    entries = chain_entries(items, await read_head(session), seal_key)
    session.add_all(entries)
    await session.flush()
    return entries


def chain_entries(
    items: list[tuple[NewDecision, datetime]], head: Head, seal_key: bytes
) -> list[Entry]:
    """`items` as sealed entries following `head` (pure: nothing is written)."""
    head_seq, head_hash, head_at = head
    entries = []
    for new, when in items:
        # Times never go backwards along the chain (nodes' clocks may differ slightly), so a
        # time range of the log is a seq range and pages by seq stay in time order.
        at = when.astimezone(UTC)
        at = max(at, head_at) if head_at is not None else at
        entry = Entry(
            seq=head_seq + 1, id=uuid.uuid4(), at=at, booking_id=new.booking_id,
            subject_id=new.subject_id, purpose=new.purpose, decision=new.decision,
            notice_id=new.notice_id, notice_sha256=new.notice_sha256, method=new.method,
            actor=new.actor, prev_hash=head_hash,
        )
        entry.entry_hash = link(head_hash, body_hash_of(entry))
        entry.entry_mac = seal(seal_key, entry.entry_hash)
        entries.append(entry)
        head_seq, head_hash, head_at = entry.seq, entry.entry_hash, at
    return entries


def changed_event(entry: Entry) -> ConsentChanged:
    return ConsentChanged(
        booking_id=entry.booking_id,
        subject_id=entry.subject_id,
        purpose=entry.purpose,
        decision=entry.decision,
        entry_id=entry.id,
        seq=entry.seq,
        at=entry.at,
        actor=entry.actor,  # a minor's guardian decides on the same subject
        notice_id=entry.notice_id,
    )


def entry_view(entry: Entry) -> dict[str, Any]:
    return {
        "seq": entry.seq,
        "id": str(entry.id),
        "at": entry.at.isoformat(),
        "booking_id": str(entry.booking_id),
        "subject_id": str(entry.subject_id),
        "purpose": entry.purpose.value,
        "decision": entry.decision.value,
        "notice_id": str(entry.notice_id),
        "notice_sha256": entry.notice_sha256,
        "method": entry.method.value,
        "actor": entry.actor.value,
        "prev_hash": entry.prev_hash,
        "entry_hash": entry.entry_hash,
    }


async def booking_entries(session: AsyncSession, booking_id: uuid.UUID) -> list[Entry]:
    query = select(Entry).where(Entry.booking_id == booking_id).order_by(Entry.seq)
    return list((await session.execute(query)).scalars())


async def latest_decisions(
    session: AsyncSession, booking_id: uuid.UUID, subject_id: uuid.UUID
) -> dict[Purpose, Entry]:
    """The newest entry per purpose of one person in one booking (their own decisions, not a
    guardian's, which the gate reads beside them)."""
    query = (
        select(Entry)
        .where(Entry.booking_id == booking_id, Entry.subject_id == subject_id)
        .where(Entry.actor == Actor.SUBJECT)
        .order_by(Entry.seq)
    )
    out: dict[Purpose, Entry] = {}
    for entry in (await session.execute(query)).scalars():
        out[entry.purpose] = entry
    return out


# -- the admin log -------------------------------------------------------------------------


@dataclass(frozen=True)
class LogFilter:
    org_id: str | None = None  # only entries of this organization's bookings (views by org)
    booking_id: uuid.UUID | None = None
    subject_external_id: str | None = None
    purpose: Purpose | None = None
    decision: Decision | None = None
    since: datetime | None = None
    until: datetime | None = None


@dataclass
class LogRow:
    entry: Entry
    external_id: str | None
    display_name: str | None

    def view(self) -> dict[str, Any]:
        return {
            **entry_view(self.entry),
            "subject_external_id": self.external_id,
            "subject_display_name": self.display_name,
        }


def log_query(filters: LogFilter) -> Select[Entry, str, str]:
    """Entries matching `filters`, newest first, with the subject's platform identity."""
    query = select(Entry, Participant.external_id, Participant.display_name).outerjoin(
        Participant, Participant.id == Entry.subject_id
    )
    if filters.org_id is not None:
        ours = select(Booking.id).where(Booking.org_id == filters.org_id)
        query = query.where(Entry.booking_id.in_(ours))
    if filters.booking_id is not None:
        query = query.where(Entry.booking_id == filters.booking_id)
    if filters.subject_external_id is not None:
        subjects = select(Participant.id).where(
            Participant.external_id == filters.subject_external_id
        )
        query = query.where(Entry.subject_id.in_(subjects.scalar_subquery()))
    if filters.purpose is not None:
        query = query.where(Entry.purpose == filters.purpose)
    if filters.decision is not None:
        query = query.where(Entry.decision == filters.decision)
    if filters.since is not None:
        # `at` never decreases along seq (do_append), so a time range is exactly a seq
        # range, found through (at, seq); the page stays a backwards scan of a seq index.
        first = select(Entry.seq).where(Entry.at >= filters.since)
        first = first.order_by(Entry.at, Entry.seq).limit(1)
        query = query.where(Entry.seq >= first.scalar_subquery())
    if filters.until is not None:
        last = select(Entry.seq).where(Entry.at < filters.until)
        last = last.order_by(Entry.at.desc(), Entry.seq.desc()).limit(1)
        query = query.where(Entry.seq <= last.scalar_subquery())
    return query.order_by(Entry.seq.desc())


async def log_page(
    session: AsyncSession, filters: LogFilter, *, before_seq: int | None, limit: int
) -> tuple[list[LogRow], int | None]:
    """One page of the log (keyset pagination on seq) and the cursor of the next, if any."""
    query = log_query(filters)
    if before_seq is not None:
        query = query.where(Entry.seq < before_seq)
    rows = list((await session.execute(query.limit(limit + 1))).all())
    page = [LogRow(entry, external_id, name) for entry, external_id, name in rows[:limit]]
    more = len(rows) > limit
    return page, (page[-1].entry.seq if more and page else None)


async def stream_log(
    db: Database, filters: LogFilter, batch: int = 1000
) -> AsyncIterator[LogRow]:
    """Every matching entry, newest first, fetched a batch at a time (constant memory)."""
    before: int | None = None
    while True:
        async with db.session() as session:
            page, before = await log_page(session, filters, before_seq=before, limit=batch)
        for row in page:
            yield row
        if before is None:
            return


# -- verification --------------------------------------------------------------------------


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

# PostgreSQL renders the canonical JSON itself (uuid text, the time, to_json for the free-text
# fields) and hands over its bytes: no Python object per field, no decoding, which was most of
# the cost of a walk. Legitimate values are plain ASCII, written the same by json.dumps and
# to_json; any other value is an edit and fails either way.
PG_ROWS = (
    "SELECT seq, convert_to("
    "'{\"actor\":' || to_json(actor)::text || ',\"at\":\"' "
    "|| to_char(at AT TIME ZONE 'UTC', 'YYYY-MM-DD\"T\"HH24:MI:SS.US\"Z\"') "
    "|| '\",\"booking\":\"' || booking_id::text || '\",\"decision\":' "
    "|| to_json(decision)::text || ',\"id\":\"' || id::text || '\",\"method\":' "
    "|| to_json(method)::text || ',\"notice_id\":\"' || notice_id::text "
    "|| '\",\"notice_sha256\":' || to_json(notice_sha256)::text || ',' "
    "|| '\"purpose\":' || to_json(purpose)::text || ',\"seq\":' || seq::text "
    "|| ',\"subject\":\"' || subject_id::text || '\"}', 'UTF8'), "
    "prev_hash, entry_hash, entry_mac FROM consent_ledger "
    "WHERE seq >= $1 ORDER BY seq LIMIT $2"
)


@asynccontextmanager
async def _reader(db: Database) -> AsyncIterator[Callable[[int], Awaitable[list[Row]]]]:
    """A function fetching the batch from a seq on: on PostgreSQL over one connection held for
    the whole walk (the driver's own, no per-batch checkout)."""
    if db.dialect != "postgresql":
        yield lambda from_seq: _sqlite_rows(db, from_seq)
        return
    async with db.engine.connect() as conn:
        raw = await conn.get_raw_connection()
        driver = raw.driver_connection
        if driver is None:  # never for a connection checked out of the pool
            raise RuntimeError("no driver connection")

        async def fetch(from_seq: int) -> list[Row]:
            # asyncpg's records unpack like tuples: no copy per row.
            rows: list[Row] = await driver.fetch(PG_ROWS, from_seq, VERIFY_BATCH)
            return rows

        yield fetch


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
    (two batches at a time)."""
    expected, prev = rules.start_seq, rules.start_prev
    report.sealed = rules.sealed
    async with _reader(db) as fetch:
        batch = await fetch(expected)
        while batch:
            # The database renders the next batch while this one is hashed.
            following = asyncio.ensure_future(fetch(batch[-1][0] + 1))
            await asyncio.sleep(0)  # let it send its query before the CPU work below
            if not check_rows(report, batch, expected, prev, rules):
                # Let the query in flight finish: cancelling it mid-protocol would leave the
                # pooled connection unusable.
                with contextlib.suppress(Exception):
                    await following
                return
            expected, prev = report.head_seq + 1, report.head_hash
            batch = await following


def check_rows(
    report: ChainReport, batch: list[Row], expected: int, prev: str, rules: WalkRules
) -> bool:
    """Check one batch (see walk_chain); False at the first bad entry. Written out, no call
    per entry: this is the hot path of the integrity watch."""
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
    text = body[:cut] + f'"prev":{_json(prev)},'.encode() + body[cut:]
    if hashlib.sha256(text).hexdigest() != stored:
        report.fail(seq, "hash_mismatch", "the entry's content does not match its hash")
        return False
    return True


HASHED = (
    "seq", "id", "at", "booking_id", "subject_id", "purpose", "decision", "notice_id",
    "notice_sha256", "method", "actor", "prev_hash",
)
