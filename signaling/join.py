"""Joining: a join credential exchanged for media access, only inside the booked window.

The hot path is one indexed read (credential hash -> participant and booking columns), a
window check and a token: a LiveKit access token, or a single-use signaling ticket plus ICE
servers for built-in media. Unknown and revoked credentials fail alike (404); failures are
counted per client address and, past the limit, refused with 429 before any lookup.
"""

from __future__ import annotations

import uuid
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field
from sqlalchemy import bindparam, select
from sqlalchemy.ext.asyncio import AsyncEngine

from core.bookings import Booking, BookingStatus, Participant, Role
from core.clock import as_utc
from core.database import create_engine, is_sqlite
from core.errors import Gone, NotFound, OutsideJoinWindow, RateLimited
from core.purposes import RecordingPolicy
from core.runtime import Runtime
from core.settings import MediaMode, Settings
from signaling.credentials import credential_hash, looks_like_credential
from signaling.ice import ice_servers
from signaling.livekit import media_token
from signaling.tickets import issue_ticket

FAILURE_WINDOW_S = 60
# Joins wait for a pooled connection rather than open (and close) overflow ones: opening a
# PostgreSQL connection costs far more than a join.
JOIN_POOL_SIZE = 20

_COLUMNS = (
    Participant.id.label("participant_id"),
    Participant.display_name,
    Participant.role,
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


class JoinParticipant(BaseModel):
    id: uuid.UUID
    display_name: str
    role: Role


class JoinBooking(BaseModel):
    id: uuid.UUID
    title: str
    starts_at: datetime
    ends_at: datetime
    language: str
    requested_purposes: list[str]
    recording_policy: RecordingPolicy
    record_automatically: bool = Field(
        description="Recording starts when the first page connects, without the host's button."
    )


class JoinWindow(BaseModel):
    opens_at: datetime
    closes_at: datetime


class IceServer(BaseModel):
    urls: list[str]
    username: str | None = None
    credential: str | None = None


class BuiltinAccess(BaseModel):
    ws_url: str
    ticket: str
    ticket_expires_at: datetime
    ice_servers: list[IceServer]


class LivekitAccess(BaseModel):
    url: str
    token: str
    expires_at: datetime


class JoinGrant(BaseModel):
    """What a participant needs to enter the call (the body of `POST /v1/join`)."""

    model_config = ConfigDict(
        json_schema_extra={
            "examples": [
                {
                    "mode": "builtin",
                    "participant": {
                        "id": "0b8f6f5e-3f0e-4f43-9a55-2f1a3e0c9d11",
                        "display_name": "Charles Babbage",
                        "role": "client",
                    },
                    "booking": {
                        "id": "5d0e7c1a-8a8e-4c55-b7b5-6a1f0f3f2a90",
                        "title": "Mentoring session",
                        "starts_at": "2030-05-04T07:00:00Z",
                        "ends_at": "2030-05-04T08:00:00Z",
                        "language": "en",
                        "requested_purposes": ["recording.audio"],
                        "recording_policy": "per_participant",
                        "record_automatically": False,
                    },
                    "window": {
                        "opens_at": "2030-05-04T06:50:00Z",
                        "closes_at": "2030-05-04T08:00:00Z",
                    },
                    "builtin": {
                        "ws_url": "wss://calls.example.org/v1/rooms/cg-3q9.../ws",
                        "ticket": "MGI4ZjZm....Vw2k",
                        "ticket_expires_at": "2030-05-04T06:56:00Z",
                        "ice_servers": [
                            {"urls": ["stun:stun.example.org:3478"]},
                            {
                                "urls": ["turn:turn.example.org:3478?transport=udp"],
                                "username": "1904454000:0b8f6f5e-3f0e-4f43-9a55-2f1a3e0c9d11",
                                "credential": "tR1Pq7m3m8o0Jm1k6bq0h3QJx5Y=",
                            },
                        ],
                    },
                    "livekit": None,
                }
            ]
        }
    )

    mode: Literal["builtin", "livekit"]
    participant: JoinParticipant
    booking: JoinBooking
    window: JoinWindow
    builtin: BuiltinAccess | None
    livekit: LivekitAccess | None


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
        )


class JoinReader:
    """The join path's reads. On PostgreSQL it keeps its own small autocommit pool without
    pre-ping and runs the credential lookup as one prepared statement on the driver: one
    round trip, none of the ORM's per-query work (the shared engine's pre-ping and
    transaction would add five round trips). After a failure the pool's connections are
    discarded and the read retried once. Entered on the app lifespan, it is
    `runtime.extras["join"]`."""

    def __init__(self, runtime: Runtime) -> None:
        self._runtime = runtime
        self._engine: AsyncEngine | None = None
        self._sql = ""

    async def __aenter__(self) -> JoinReader:
        db = self._runtime.db
        if not is_sqlite(db.url):
            self._engine = create_engine(
                db.url, isolation_level="AUTOCOMMIT", skip_autocommit_rollback=True,
                pool_pre_ping=False, pool_size=JOIN_POOL_SIZE, max_overflow=0,
            )
            query = _BY_CREDENTIAL.where(Participant.credential_hash == bindparam("hash"))
            self._sql = str(query.compile(dialect=self._engine.dialect))
        self._runtime.extras["join"] = self
        return self

    async def __aexit__(self, *exc: object) -> None:
        self._runtime.extras.pop("join", None)
        engine, self._engine = self._engine, None
        if engine is not None:
            await engine.dispose()

    async def by_credential_hash(self, digest: str) -> JoinRow | None:
        if self._engine is None:
            return await self.fetch(Participant.credential_hash == digest)
        for attempt in (1, 2):
            async with self._engine.connect() as conn:
                driver: Any = (await conn.get_raw_connection()).driver_connection
                try:
                    record = await driver.fetchrow(self._sql, digest)
                except Exception:  # e.g. the database restarted: drop every pooled
                    await conn.invalidate()  # connection and try once more on a fresh one
                    if attempt == 2:
                        raise
                    await self._engine.dispose()
                    continue
                return None if record is None else JoinRow.of(record)
        return None

    async def fetch(self, condition: Any) -> JoinRow | None:
        """The row matching `condition` (any participant filter), through the ORM layer."""
        engine = self._engine or self._runtime.db.engine
        async with engine.connect() as conn:
            row = (await conn.execute(_BY_CREDENTIAL.where(condition))).first()
        return None if row is None else JoinRow.of(row._mapping)


def _reader(runtime: Runtime) -> JoinReader:
    reader = runtime.extras.get("join")
    return reader if isinstance(reader, JoinReader) else JoinReader(runtime)


async def get_join_row(runtime: Runtime, credential: str) -> JoinRow | None:
    """Participant and booking columns for a live credential: one read by a unique index."""
    if not looks_like_credential(credential):
        return None
    return await _reader(runtime).by_credential_hash(credential_hash(credential))


def join_window(settings: Settings, starts_at: datetime, ends_at: datetime) -> JoinWindow:
    return JoinWindow(
        opens_at=starts_at - settings.join_lead, closes_at=ends_at + settings.join_grace
    )


def check_admission(row: JoinRow, settings: Settings, now: datetime) -> JoinWindow:
    """The window, if this participant may join now; Gone or OutsideJoinWindow otherwise."""
    if row.status is BookingStatus.CANCELLED:
        raise Gone("this booking was cancelled")
    window = join_window(settings, row.starts_at, row.ends_at)
    times = {
        "opens_at": window.opens_at.isoformat(),
        "closes_at": window.closes_at.isoformat(),
        "starts_at": row.starts_at.isoformat(),
    }
    if now < window.opens_at:
        raise OutsideJoinWindow("the join window has not opened yet", extra=times)
    if now >= window.closes_at:
        raise OutsideJoinWindow("the join window has closed", extra=times)
    return window


def ws_base(settings: Settings) -> str:
    base = settings.base_url()
    return "wss://" + base[len("https://"):] if base.startswith("https://") else (
        "ws://" + base[len("http://"):]
    )


def _builtin(runtime: Runtime, row: JoinRow, window: JoinWindow, now: datetime) -> BuiltinAccess:
    settings = runtime.settings
    participant_id: uuid.UUID = row.participant_id
    booking_id: uuid.UUID = row.booking_id
    expires = min(now + timedelta(seconds=settings.ticket_ttl_s), window.closes_at)
    return BuiltinAccess(
        ws_url=f"{ws_base(settings)}/v1/rooms/{row.room_name}/ws",
        ticket=issue_ticket(runtime.keys, participant_id, booking_id, expires),
        ticket_expires_at=expires,
        ice_servers=[
            IceServer(**server)
            for server in ice_servers(settings, participant_id, now, window.closes_at)
        ],
    )


def grant(runtime: Runtime, row: JoinRow, now: datetime) -> JoinGrant:
    """Admission check and the media access for one participant row."""
    window = check_admission(row, runtime.settings, now)
    livekit = runtime.settings.media_mode is MediaMode.LIVEKIT
    participant = JoinParticipant(
        id=row.participant_id, display_name=row.display_name, role=row.role
    )
    booking = JoinBooking(
        id=row.booking_id,
        title=row.title,
        starts_at=row.starts_at,
        ends_at=row.ends_at,
        language=row.language,
        requested_purposes=list(row.requested_purposes),
        recording_policy=row.recording_policy,
        record_automatically=row.record_automatically,
    )
    lk_access = None
    if livekit:
        token = media_token(
            runtime.settings,
            participant_id=row.participant_id,
            display_name=row.display_name,
            role=row.role,
            room=row.room_name,
            not_after=window.closes_at,
        )
        lk_access = LivekitAccess(url=token.url, token=token.token, expires_at=token.expires_at)
    return JoinGrant(
        mode=MediaMode.LIVEKIT.value if livekit else MediaMode.BUILTIN.value,
        participant=participant,
        booking=booking,
        window=window,
        builtin=None if livekit else _builtin(runtime, row, window, now),
        livekit=lk_access,
    )


async def do_join(runtime: Runtime, credential: str, address: str) -> JoinGrant:
    """Exchange a join credential for media access (see the module docstring)."""
    limit = runtime.settings.join_failures_per_minute
    key = f"join-fail:{address}"
    verdict = await runtime.limiter.peek(key, limit, FAILURE_WINDOW_S)
    if not verdict.allowed:
        raise RateLimited(
            "too many failed joins from this address", retry_after_s=verdict.retry_after_s
        )
    row = await get_join_row(runtime, credential)
    if row is None:
        verdict = await runtime.limiter.hit(key, limit, FAILURE_WINDOW_S)
        if not verdict.allowed:
            raise RateLimited(
                "too many failed joins from this address", retry_after_s=verdict.retry_after_s
            )
        raise NotFound("this join link is not valid")
    return grant(runtime, row, runtime.clock.now())


async def do_participant_token(
    runtime: Runtime, booking_id: uuid.UUID, participant_id: uuid.UUID
) -> JoinGrant:
    """The join payload for one participant, for platforms with their own client apps."""
    row = await _reader(runtime).fetch(
        (Participant.id == participant_id) & (Participant.booking_id == booking_id)
    )
    if row is None:
        raise NotFound(f"booking {booking_id} has no participant {participant_id}")
    return grant(runtime, row, runtime.clock.now())
