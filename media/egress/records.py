"""Every egress callgate starts, stored: whose track, for which purpose, under which consent
entry, and in which state. The database is the one place every node reads and writes, so a
webhook or a withdrawal handled by any node, and a node started after a crash, act on the same
list.

A track has at most one live (starting or active) egress: a node claims the track by inserting
the row before asking LiveKit to start (a partial unique index on the live rows decides between
two nodes), then names the egress id LiveKit gave it. A node stops a live egress only after
moving its row out of the live states itself (one node wins the update), so a withdrawal that
reaches every node is stopped once.
"""

from __future__ import annotations

import enum
import uuid
from dataclasses import dataclass
from datetime import datetime

from livekit.protocol import egress as lk_egress
from sqlalchemy import JSON, ForeignKey, Index, String, Uuid, select, text, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncSession
from sqlalchemy.orm import Mapped, mapped_column

from core.database import Base, Database, UTCDateTime, enum_column
from media.recordings import TrackKind


class EgressState(enum.StrEnum):
    STARTING = "starting"  # claimed; LiveKit asked (or about to be asked) to start
    ACTIVE = "active"
    ENDING = "ending"  # callgate asked LiveKit to stop it
    COMPLETE = "complete"
    FAILED = "failed"


LIVE = (EgressState.STARTING, EgressState.ACTIVE)
LIVE_CONDITION = "state IN ('starting', 'active')"
ENDED = (EgressState.COMPLETE, EgressState.FAILED)

STATUS: dict[int, EgressState] = {
    lk_egress.EGRESS_STARTING: EgressState.STARTING,
    lk_egress.EGRESS_ACTIVE: EgressState.ACTIVE,
    lk_egress.EGRESS_ENDING: EgressState.ENDING,
    lk_egress.EGRESS_COMPLETE: EgressState.COMPLETE,
}


def state_of(status: int) -> EgressState:
    return STATUS.get(status, EgressState.FAILED)  # failed, aborted, limit reached


class EgressRecord(Base):
    __tablename__ = "livekit_egresses"
    __table_args__ = (
        Index(
            "ix_livekit_egresses_live_track",
            "room_name",
            "track_sid",
            unique=True,
            sqlite_where=text(LIVE_CONDITION),
            postgresql_where=text(LIVE_CONDITION),
        ),
    )

    id: Mapped[uuid.UUID] = mapped_column(Uuid, primary_key=True, default=uuid.uuid4)
    egress_id: Mapped[str | None] = mapped_column(String(64), unique=True, nullable=True)
    booking_id: Mapped[uuid.UUID] = mapped_column(
        ForeignKey("bookings.id", ondelete="CASCADE"), index=True
    )
    participant_id: Mapped[uuid.UUID] = mapped_column(Uuid)
    room_name: Mapped[str] = mapped_column(String(64))
    track_sid: Mapped[str] = mapped_column(String(64))
    kind: Mapped[TrackKind] = mapped_column(enum_column(TrackKind, 8))
    consent_entry_ids: Mapped[list[str]] = mapped_column(JSON)
    state: Mapped[EgressState] = mapped_column(enum_column(EgressState, 16))
    started_at: Mapped[datetime] = mapped_column(UTCDateTime())
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime())


async def claim(db: Database, record: EgressRecord) -> bool:
    """Store a track's new egress (state starting, no id yet); False when another node holds
    a live egress of that track already."""
    try:
        async with db.session() as session:
            session.add(record)
    except IntegrityError:
        return False
    return True


async def named(
    db: Database, record_id: uuid.UUID, egress_id: str, at: datetime
) -> EgressState | None:
    """Store the id LiveKit gave the claimed egress; its state now (a withdrawal may have
    moved it to `ending` meanwhile: then the caller stops it)."""
    async with db.session() as session:
        result = await session.execute(
            update(EgressRecord)
            .where(EgressRecord.id == record_id)
            .values(egress_id=egress_id, updated_at=at)
            .returning(EgressRecord.state)
        )
        return result.scalar_one_or_none()


async def forget(db: Database, record_id: uuid.UUID) -> None:
    """A claim whose start LiveKit refused: nothing runs, nothing to keep."""
    async with db.session() as session:
        row = await session.get(EgressRecord, record_id)
        if row is not None:
            await session.delete(row)


async def live(
    db: Database, booking_id: uuid.UUID, subject_id: uuid.UUID | None = None
) -> list[EgressRecord]:
    query = select(EgressRecord).where(
        EgressRecord.booking_id == booking_id, EgressRecord.state.in_(LIVE)
    )
    if subject_id is not None:
        query = query.where(EgressRecord.participant_id == subject_id)
    async with db.session() as session:
        return list((await session.scalars(query)).all())


async def all_live(db: Database) -> list[EgressRecord]:
    async with db.session() as session:
        query = select(EgressRecord).where(EgressRecord.state.in_(LIVE))
        return list((await session.scalars(query)).all())


async def by_egress_id(session: AsyncSession, egress_id: str) -> EgressRecord | None:
    query = select(EgressRecord).where(EgressRecord.egress_id == egress_id)
    return (await session.scalars(query)).first()


async def take_over(db: Database, record_id: uuid.UUID, at: datetime) -> bool:
    """Move a live egress to `ending`; True for the one node whose update did it."""
    async with db.session() as session:
        result = await session.execute(
            update(EgressRecord)
            .where(EgressRecord.id == record_id, EgressRecord.state.in_(LIVE))
            .values(state=EgressState.ENDING, updated_at=at)
        )
    return bool(getattr(result, "rowcount", 0))


@dataclass(frozen=True)
class Taken:
    """A live egress a take-over moved to `ending`."""

    record_id: uuid.UUID
    room_name: str
    egress_id: str | None  # None: the node that claimed it has not stored LiveKit's id


async def take_over_person(
    db: Database, booking_id: uuid.UUID, subject_id: uuid.UUID, kind: TrackKind, at: datetime
) -> list[Taken]:
    """Move the person's live egresses of `kind` to `ending` in one statement; what this node
    must now stop."""
    async with db.session() as session:
        result = await session.execute(
            update(EgressRecord)
            .where(
                EgressRecord.booking_id == booking_id,
                EgressRecord.participant_id == subject_id,
                EgressRecord.kind == kind,
                EgressRecord.state.in_(LIVE),
            )
            .values(state=EgressState.ENDING, updated_at=at)
            .returning(EgressRecord.id, EgressRecord.room_name, EgressRecord.egress_id)
        )
        return [Taken(record_id, room, egress_id) for record_id, room, egress_id in result]


async def reported(db: Database, egress_id: str, state: EgressState, at: datetime) -> None:
    """Apply LiveKit's report of a live or ending egress (one conditional statement): a row
    already ended stays as it is (reports may come twice, to several nodes), and a row callgate
    is stopping never moves back to live. Ends go through `end`."""
    unchanged = list(ENDED) + ([EgressState.ENDING] if state in LIVE else [])
    async with db.session() as session:
        await session.execute(
            update(EgressRecord)
            .where(EgressRecord.egress_id == egress_id, EgressRecord.state.not_in(unchanged))
            .values(state=state, updated_at=at)
        )


@dataclass(frozen=True)
class Ending:
    """The one node's claim on an ended egress: its row (None for an egress callgate never
    started) and the state it had before LiveKit reported the end."""

    record: EgressRecord | None
    before: EgressState | None


async def end(db: Database, egress_id: str, state: EgressState, at: datetime) -> Ending | None:
    """Move a stored egress to its ended `state`, once across nodes and reports: the claim for
    the one caller whose conditional update moved it (that caller alone takes the file in);
    None for every other (the row was already ended). An egress callgate never stored is
    everyone's to discard (deleting a file twice is harmless)."""
    for _ in range(len(EgressState)):  # the row moved between the read and the update: again
        async with db.session() as session:
            row = await by_egress_id(session, egress_id)
            if row is None:
                return Ending(None, None)
            if row.state in ENDED:
                return None
            before = row.state
            moved = await session.execute(
                update(EgressRecord)
                .where(EgressRecord.id == row.id, EgressRecord.state == before)
                .values(state=state, updated_at=at)
                .execution_options(synchronize_session=False)
            )
            if getattr(moved, "rowcount", 0):
                session.expunge(row)  # detached first: the new values are not written twice
                row.state, row.updated_at = state, at
                return Ending(row, before)
    return None
