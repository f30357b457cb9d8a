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

import hashlib
import json
import re
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import BigInteger, Select, String, Uuid, func, select, text
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
    linked = "" if prev is None else f'"prev":{json_string(prev)},'
    return (
        f'{{"actor":{json_string(actor)},"at":"{at}","booking":"{booking}",'
        f'"decision":{json_string(decision)},"id":"{id}","method":{json_string(method)},'
        f'"notice_id":"{notice_id}","notice_sha256":{json_string(notice_sha256)},'
        f'{linked}"purpose":{json_string(purpose)},"seq":{int(seq)},"subject":"{subject}"}}'
    ).encode()


_PLAIN = re.compile(r"[A-Za-z0-9._:-]*")


def json_string(value: str) -> str:
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


async def count_before(session: AsyncSession, before: datetime) -> int:
    """How many entries were appended before `before` (what retention would have expired;
    the ledger keeps them: it is append-only)."""
    found = await session.scalar(select(func.count()).select_from(Entry).where(Entry.at < before))
    return int(found or 0)


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
