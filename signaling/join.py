"""Joining: a join credential exchanged for media access, only inside the booked window.

The hot path is one indexed read (credential hash -> participant and booking columns), a
window check and a token: a LiveKit access token, or a single-use signaling ticket plus ICE
servers for built-in media. Unknown and revoked credentials fail alike (404); failures are
counted per client address and, past the limit, refused with 429 before any lookup.
"""

from __future__ import annotations

import asyncio
import functools
import json
import math
import time
import uuid
from collections import deque
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any, Literal

import asyncpg  # type: ignore[import-untyped]
from pydantic import BaseModel, ConfigDict, Field
from pydantic_core import to_json
from sqlalchemy import bindparam, make_url, select

from core.bookings import Booking, BookingStatus, Participant, Role
from core.clock import as_utc
from core.database import is_sqlite
from core.errors import Gone, NotFound, OutsideJoinWindow, RateLimited
from core.purposes import RecordingPolicy
from core.runtime import Runtime
from core.settings import MediaMode, Settings
from signaling.credentials import credential_hash, livekit_token, looks_like_credential
from signaling.ice import ice_servers
from signaling.livekit import livekit_credentials
from signaling.protocol import IceServer
from signaling.tickets import issue_ticket

FAILURE_WINDOW_S = 60
# Joins wait for a pooled connection rather than open (and close) more: opening a PostgreSQL
# connection costs far more than a join.
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


async def _connect(arguments: dict[str, Any]) -> Any:
    conn = await asyncpg.connect(**arguments)
    # `requested_purposes` is a JSON column: decode it as SQLAlchemy's dialect does.
    await conn.set_type_codec("json", encoder=json.dumps, decoder=json.loads, schema="pg_catalog")
    return conn


class Connections:
    """At most `size` asyncpg connections, opened on first use and reused last-in first-out.
    asyncpg's own Pool costs about as much CPU per query as the query (timeouts, a shielded
    acquire, a reset round trip on release); one autocommit statement with no session state
    needs none of it. A connection whose query failed or was cancelled is dropped (its state
    is unknown); `expire()` drops every connection opened so far (after a database restart).
    """

    def __init__(self, connect: Callable[[], Awaitable[Any]], size: int) -> None:
        self._connect = connect
        self._idle: list[Any] = []
        self._spare = size  # how many more may be opened
        self._waiters: deque[asyncio.Future[Any]] = deque()
        self._generation = 0
        self._closed = False

    async def fetchrow(self, sql: str, *args: Any) -> Any:
        generation = self._generation
        conn = self._idle.pop() if self._idle else await self._take()
        try:
            record = await conn.fetchrow(sql, *args)
        except BaseException:
            self._drop(conn)
            raise
        self._give(conn, generation)
        return record

    async def _take(self) -> Any:
        while True:
            if self._closed:
                raise RuntimeError("the join connections are closed")
            if self._idle:
                return self._idle.pop()
            if self._spare > 0:
                self._spare -= 1
                try:
                    return await self._connect()
                except BaseException:
                    self._spare += 1
                    self._wake()
                    raise
            waiter: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
            self._waiters.append(waiter)
            try:
                conn = await waiter
            except BaseException:  # cancelled: pass on what was handed over meanwhile
                if waiter.done() and not waiter.cancelled() and waiter.exception() is None:
                    handed = waiter.result()
                    if handed is None:
                        self._wake()
                    else:
                        self._give(handed, self._generation)
                raise
            if conn is not None:
                return conn  # else a connection was dropped: its slot is free, go round

    def _give(self, conn: Any, generation: int) -> None:
        if self._closed or generation != self._generation or conn.is_closed():
            self._drop(conn)
            return
        while self._waiters:
            waiter = self._waiters.popleft()
            if not waiter.done():
                waiter.set_result(conn)
                return
        self._idle.append(conn)

    def _drop(self, conn: Any) -> None:
        conn.terminate()
        self._spare += 1
        self._wake()

    def _wake(self) -> None:
        while self._waiters:
            waiter = self._waiters.popleft()
            if not waiter.done():
                waiter.set_result(None)
                return

    def expire(self) -> None:
        self._generation += 1
        idle, self._idle = self._idle, []
        for conn in idle:
            self._drop(conn)

    async def close(self) -> None:
        self._closed = True
        idle, self._idle = self._idle, []
        for waiter in self._waiters:
            if not waiter.done():
                waiter.set_exception(RuntimeError("the join connections are closed"))
        await asyncio.gather(*(conn.close(timeout=5) for conn in idle), return_exceptions=True)


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


def join_window(settings: Settings, starts_at: datetime, ends_at: datetime) -> JoinWindow:
    return JoinWindow(
        opens_at=starts_at - settings.join_lead, closes_at=ends_at + settings.join_grace
    )


def check_admission(row: JoinRow, settings: Settings, now: datetime) -> JoinWindow:
    """The window, if this participant may join now; Gone or OutsideJoinWindow otherwise."""
    if row.status is BookingStatus.CANCELLED:
        raise Gone("this booking was cancelled")
    window = join_window(settings, row.starts_at, row.ends_at)
    if now < window.opens_at:
        raise OutsideJoinWindow("the join window has not opened yet", extra=_times(row, window))
    if now >= window.closes_at:
        raise OutsideJoinWindow("the join window has closed", extra=_times(row, window))
    return window


def _times(row: JoinRow, window: JoinWindow) -> dict[str, str]:
    return {
        "opens_at": window.opens_at.isoformat(),
        "closes_at": window.closes_at.isoformat(),
        "starts_at": row.starts_at.isoformat(),
    }


def ws_base(settings: Settings) -> str:
    base = settings.base_url()
    return "wss://" + base[len("https://"):] if base.startswith("https://") else (
        "ws://" + base[len("http://"):]
    )


def _builtin(runtime: Runtime, row: JoinRow, closes_at: datetime, now: datetime) -> dict[str, Any]:
    settings = runtime.settings
    participant_id: uuid.UUID = row.participant_id
    expires = min(now + timedelta(seconds=settings.ticket_ttl_s), closes_at)
    return {
        "ws_url": f"{ws_base(settings)}/v1/rooms/{row.room_name}/ws",
        "ticket": issue_ticket(runtime.keys, participant_id, row.booking_id, expires),
        "ticket_expires_at": expires,
        "ice_servers": [
            {"urls": server["urls"], "username": server.get("username"),
             "credential": server.get("credential")}
            for server in ice_servers(settings, participant_id, now, closes_at)
        ],
    }


def _livekit(settings: Settings, row: JoinRow, closes_at: datetime) -> dict[str, Any]:
    url, key, secret = livekit_credentials(settings)
    # `nbf` from the wall clock as livekit-api stamps it; `exp` is the window's end, never later
    # (LiveKit checks it only at connect; callgate removes people when the window closes).
    expires = math.floor(closes_at.timestamp())
    token = livekit_token(
        key, secret, identity=str(row.participant_id), name=row.display_name, role=row.role,
        room=row.room_name, not_before=int(time.time()), expires=expires,
    )
    return {"url": url, "token": token, "expires_at": datetime.fromtimestamp(expires, UTC)}


def grant_document(runtime: Runtime, row: JoinRow, now: datetime) -> dict[str, Any]:
    """Admission check and the media access for one participant row: a `JoinGrant` as plain
    JSON-ready values (the join path serializes it once, without building the models)."""
    settings = runtime.settings
    window = check_admission(row, settings, now)
    livekit = settings.media_mode is MediaMode.LIVEKIT
    return {
        "mode": settings.media_mode.value,
        # Ids as text: the driver's UUID subclass takes pydantic-core's slow path.
        "participant": {
            "id": str(row.participant_id), "display_name": row.display_name,
            "role": row.role.value,
        },
        "booking": {
            "id": str(row.booking_id),
            "title": row.title,
            "starts_at": row.starts_at,
            "ends_at": row.ends_at,
            "language": row.language,
            "requested_purposes": list(row.requested_purposes),
            "recording_policy": row.recording_policy.value,
            "record_automatically": row.record_automatically,
        },
        "window": {"opens_at": window.opens_at, "closes_at": window.closes_at},
        "builtin": None if livekit else _builtin(runtime, row, window.closes_at, now),
        "livekit": _livekit(settings, row, window.closes_at) if livekit else None,
    }


def grant(runtime: Runtime, row: JoinRow, now: datetime) -> JoinGrant:
    """Admission check and the media access for one participant row."""
    return JoinGrant.model_validate(grant_document(runtime, row, now))


async def admit(
    runtime: Runtime, credential: str, address: str, reader: JoinReader | None = None
) -> JoinRow:
    """The row behind a live credential, counting failures per address (see the module
    docstring): RateLimited past the limit, before any lookup; NotFound for unknown links."""
    limit = runtime.settings.join_failures_per_minute
    key = f"join-fail:{address}"
    verdict = await runtime.limiter.peek(key, limit, FAILURE_WINDOW_S)
    if not verdict.allowed:
        raise RateLimited(
            "too many failed joins from this address", retry_after_s=verdict.retry_after_s
        )
    row = await get_join_row(runtime, credential, reader)
    if row is None:
        verdict = await runtime.limiter.hit(key, limit, FAILURE_WINDOW_S)
        if not verdict.allowed:
            raise RateLimited(
                "too many failed joins from this address", retry_after_s=verdict.retry_after_s
            )
        raise NotFound("this join link is not valid")
    return row


async def do_join(
    runtime: Runtime, credential: str, address: str, reader: JoinReader | None = None
) -> bytes:
    """Exchange a join credential for media access: the `JoinGrant` as JSON."""
    row = await admit(runtime, credential, address, reader)
    return to_json(grant_document(runtime, row, runtime.clock.now()))


async def do_participant_token(
    runtime: Runtime, booking_id: uuid.UUID, participant_id: uuid.UUID
) -> JoinGrant:
    """The join payload for one participant, for platforms with their own client apps."""
    row = await JoinReader(runtime).fetch(
        (Participant.id == participant_id) & (Participant.booking_id == booking_id)
    )
    if row is None:
        raise NotFound(f"booking {booking_id} has no participant {participant_id}")
    return grant(runtime, row, runtime.clock.now())
