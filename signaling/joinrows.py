"""The join path's reads: a credential's participant and booking columns, in one round trip.

On PostgreSQL the credential lookup is one prepared statement on the join path's own few
connections (`signaling.connections.Connections`); elsewhere, and for lookups by other
conditions, it goes through the shared engine.
"""

from __future__ import annotations

import functools
import json
import uuid
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import asyncpg  # type: ignore[import-untyped]
from sqlalchemy import bindparam, make_url, select

from core.bookings import Booking, BookingStatus, Participant, Role
from core.clock import as_utc
from core.database import is_sqlite
from core.purposes import RecordingPolicy
from core.runtime import Runtime
from signaling.connections import Connections
from signaling.credentials import credential_hash, looks_like_credential

# Joins wait for a pooled connection rather than open (and close) more: opening a PostgreSQL
# connection costs far more than a join.
JOIN_POOL_SIZE = 20

_COLUMNS = (
    Participant.id.label("participant_id"),
    Participant.display_name,
    Participant.role,
    Participant.credential_generation,
    Booking.id.label("booking_id"),
    Booking.title,
    Booking.starts_at,
    Booking.ends_at,
    Booking.language,
    Booking.requested_purposes,
    Booking.recording_policy,
    Booking.record_automatically,
    Booking.status,
    Booking.room_name,
)
_BY_CREDENTIAL = (
    select(*_COLUMNS)
    .join(Booking, Booking.id == Participant.booking_id)
    .where(Participant.revoked_at.is_(None))
)


@dataclass(frozen=True, slots=True)
class JoinRow:
    """What a join needs of the participant and the booking (one row)."""

    participant_id: uuid.UUID
    display_name: str
    role: Role
    booking_id: uuid.UUID
    title: str
    starts_at: datetime
    ends_at: datetime
    language: str
    requested_purposes: list[str]
    recording_policy: RecordingPolicy
    record_automatically: bool
    status: BookingStatus
    room_name: str
    credential_generation: int = 0

    @classmethod
    def of(cls, values: Mapping[Any, Any]) -> JoinRow:
        """From an ORM row or a driver record (codes as plain strings there)."""
        return cls(
            participant_id=values["participant_id"],
            display_name=values["display_name"],
            role=Role(values["role"]),
            booking_id=values["booking_id"],
            title=values["title"],
            starts_at=as_utc(values["starts_at"]),
            ends_at=as_utc(values["ends_at"]),
            language=values["language"],
            requested_purposes=list(values["requested_purposes"]),
            recording_policy=RecordingPolicy(values["recording_policy"]),
            record_automatically=bool(values["record_automatically"]),
            status=BookingStatus(values["status"]),
            room_name=values["room_name"],
            credential_generation=values["credential_generation"],
        )


async def _connect(arguments: dict[str, Any]) -> Any:
    conn = await asyncpg.connect(**arguments)
    # `requested_purposes` is a JSON column: decode it as SQLAlchemy's dialect does.
    await conn.set_type_codec("json", encoder=json.dumps, decoder=json.loads, schema="pg_catalog")
    return conn


class JoinReader:
    """The join path's reads. On PostgreSQL it keeps its own few asyncpg connections
    (`Connections`) and runs the credential lookup as one prepared statement: one round trip
    per join, none of the ORM's or the shared engine's per-query work (pre-ping, transaction,
    pool events). After a failure every connection is dropped and the read retried once.
    Entered on the app lifespan (`api.services.Services.join`); without one (a CLI, a
    benchmark) the functions below read through the ORM."""

    def __init__(self, runtime: Runtime) -> None:
        self._runtime = runtime
        self._pool: Connections | None = None
        self._sql = ""

    async def __aenter__(self) -> JoinReader:
        db = self._runtime.db
        if not is_sqlite(db.url):
            url = make_url(db.url)
            dialect = url.get_dialect()()
            _, connect = dialect.create_connect_args(url)
            self._pool = Connections(functools.partial(_connect, dict(connect)), JOIN_POOL_SIZE)
            query = _BY_CREDENTIAL.where(Participant.credential_hash == bindparam("hash"))
            self._sql = str(query.compile(dialect=dialect))
        return self

    async def __aexit__(self, *exc: object) -> None:
        pool, self._pool = self._pool, None
        if pool is not None:
            await pool.close()

    async def by_credential_hash(self, digest: str) -> JoinRow | None:
        pool = self._pool
        if pool is None:
            return await self.fetch(Participant.credential_hash == digest)
        try:
            record = await pool.fetchrow(self._sql, digest)
        except Exception:  # e.g. the database restarted: every pooled connection is dead,
            pool.expire()  # so drop them all and try once more on a new one
            record = await pool.fetchrow(self._sql, digest)
        return None if record is None else JoinRow.of(record)

    async def fetch(self, condition: Any) -> JoinRow | None:
        """The row matching `condition` (any participant filter), through the ORM layer."""
        async with self._runtime.db.engine.connect() as conn:
            row = (await conn.execute(_BY_CREDENTIAL.where(condition))).first()
        return None if row is None else JoinRow.of(row._mapping)


async def get_join_row(
    runtime: Runtime, credential: str, reader: JoinReader | None = None
) -> JoinRow | None:
    """Participant and booking columns for a live credential: one read by a unique index."""
    if not looks_like_credential(credential):
        return None
    return await (reader or JoinReader(runtime)).by_credential_hash(credential_hash(credential))


async def get_participant_row(
    runtime: Runtime, org_id: str, booking_id: uuid.UUID, participant_id: uuid.UUID
) -> JoinRow | None:
    """The same columns for one participant of one of the organization's bookings (not by
    credential)."""
    return await JoinReader(runtime).fetch(
        (Participant.id == participant_id) & (Participant.booking_id == booking_id)
        & (Booking.org_id == org_id)
    )
