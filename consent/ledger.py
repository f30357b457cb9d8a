"""The consent ledger: every decision, append-only, in one global hash chain.

Entry hash = SHA-256 over a canonical JSON encoding of (seq, id, at, booking, subject, purpose,
decision, notice id, notice sha256, method, actor, prev hash); the first entry's prev hash is
64 zeros. Appends are serialized (PostgreSQL: a transaction-scoped advisory lock; SQLite: the
engine's BEGIN IMMEDIATE), so the chain has no gaps and no forks, and an append commits in the
same transaction as its effect. The database refuses UPDATE and DELETE on the table.
"""

from __future__ import annotations

import json
import re
import uuid
from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import BigInteger, Select, String, Uuid, select, text
from sqlalchemy.ext.asyncio import AsyncSession
from sqlalchemy.orm import Mapped, mapped_column

from consent.purposes import Actor, Decision, Method, Purpose
from core.bookings import Participant
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
    """The bytes an entry hash covers: sorted-key compact JSON of the entry's fields, i.e.
    json.dumps(fields, sort_keys=True, separators=(",", ":")), written out by hand because
    verification spends most of its time here."""
    return (
        f'{{"actor":{_json(str(actor))},"at":"{timestamp(at)}","booking":"{booking_id}",'
        f'"decision":{_json(str(decision))},"id":"{id}","method":{_json(str(method))},'
        f'"notice_id":"{notice_id}","notice_sha256":{_json(notice_sha256)},'
        f'"prev":{_json(prev_hash)},"purpose":{_json(str(purpose))},"seq":{int(seq)},'
        f'"subject":"{subject_id}"}}'
    ).encode()


_PLAIN = re.compile(r"[A-Za-z0-9._:-]*")


def _json(value: str) -> str:
    """A JSON string literal, as json.dumps writes it (escaping only when needed)."""
    return f'"{value}"' if _PLAIN.fullmatch(value) else json.dumps(value)


def hash_of(entry: Entry) -> str:
    return sha256_hex(
        canonical(
            seq=entry.seq,
            id=entry.id,
            at=entry.at,
            booking_id=entry.booking_id,
            subject_id=entry.subject_id,
            purpose=entry.purpose,
            decision=entry.decision,
            notice_id=entry.notice_id,
            notice_sha256=entry.notice_sha256,
            method=entry.method,
            actor=entry.actor,
            prev_hash=entry.prev_hash,
        )
    )


async def lock_chain(session: AsyncSession) -> None:
    """Hold the chain until this transaction ends (SQLite already holds its write lock)."""
    bind = session.get_bind()
    if bind.dialect.name == "postgresql":
        await session.execute(text("SELECT pg_advisory_xact_lock(:key)"), {"key": CHAIN_LOCK})


async def chain_head(session: AsyncSession) -> tuple[int, str]:
    """(seq, entry hash) of the newest entry; (0, GENESIS) for an empty ledger."""
    seq, head, _ = await _head(session)
    return seq, head


async def _head(session: AsyncSession) -> tuple[int, str, datetime | None]:
    query = select(Entry.seq, Entry.entry_hash, Entry.at).order_by(Entry.seq.desc()).limit(1)
    row = (await session.execute(query)).first()
    return (int(row[0]), str(row[1]), row[2]) if row is not None else (0, GENESIS, None)


async def do_append(session: AsyncSession, new: NewDecision, at: datetime) -> Entry:
    """Append one entry inside the caller's transaction; the caller publishes `changed_event`
    after commit."""
    await lock_chain(session)
    head_seq, head_hash, head_at = await _head(session)
    # Times never go backwards along the chain (nodes' clocks may differ slightly), so a time
    # range of the log is a seq range and pages by seq stay in time order.
    at = at.astimezone(UTC)
    entry = Entry(
        seq=head_seq + 1,
        id=uuid.uuid4(),
        at=max(at, head_at) if head_at is not None else at,
        booking_id=new.booking_id,
        subject_id=new.subject_id,
        purpose=new.purpose,
        decision=new.decision,
        notice_id=new.notice_id,
        notice_sha256=new.notice_sha256,
        method=new.method,
        actor=new.actor,
        prev_hash=head_hash,
    )
    entry.entry_hash = hash_of(entry)
    session.add(entry)
    await session.flush()
    return entry


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


async def walk_chain(db: Database, report: ChainReport, marks: dict[int, str]) -> None:
    """Check every entry in seq order: contiguous seq from 1, prev hash = previous entry's
    hash, stored hash = recomputed hash, and the hash at each checkpointed seq in `marks`.
    Reads plain rows a batch at a time (no ORM objects): constant memory, fast."""
    expected_seq, prev = 1, GENESIS
    columns = list(Entry.__table__.columns)
    while report.ok:
        async with db.session() as session:
            query = (
                select(*columns).where(Entry.seq >= expected_seq).order_by(Entry.seq)
                .limit(VERIFY_BATCH)
            )
            batch = [row._mapping for row in await session.execute(query)]
        if not batch:
            return
        for row in batch:
            if not check_entry(report, row, expected_seq, prev, marks):
                return
            report.entries += 1
            report.head_seq, report.head_hash = row["seq"], row["entry_hash"]
            expected_seq, prev = row["seq"] + 1, row["entry_hash"]


def check_entry(
    report: ChainReport,
    row: Mapping[Any, Any],
    expected_seq: int,
    prev: str,
    marks: dict[int, str],
) -> bool:
    seq = row["seq"]
    if seq != expected_seq:
        report.fail(expected_seq, "missing_entry", f"entry {expected_seq} is missing")
        return False
    if row["prev_hash"] != prev:
        report.fail(seq, "broken_link", "prev_hash does not match the entry before it")
        return False
    fields = {name: row[name] for name in HASHED}
    if sha256_hex(canonical(**fields)) != row["entry_hash"]:
        report.fail(seq, "hash_mismatch", "the entry's content does not match its hash")
        return False
    signed = marks.get(seq)
    if signed is not None and signed != row["entry_hash"]:
        report.fail(seq, "checkpoint_mismatch", "differs from a signed checkpoint")
        return False
    return True


HASHED = (
    "seq", "id", "at", "booking_id", "subject_id", "purpose", "decision", "notice_id",
    "notice_sha256", "method", "actor", "prev_hash",
)
