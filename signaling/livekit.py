"""LiveKit: participant access tokens, and the rooms behind bookings (livekit media mode).

Tokens are least-privilege per participant (livekit-api's `AccessToken` and `VideoGrants`):
identity = the pseudonymous participant id, one room, grants by role, `exp` never past the
join window's end (LiveKit checks `exp` only when connecting).

Rooms are created with `RoomService.CreateRoom` after the booking is committed. LiveKit being
unreachable never loses a booking: the room stays `pending` with the error, a loop entered on
the app lifespan retries it (LiveKit would also create it on first join). The room of a
cancelled booking, and of a booking whose window has closed, is deleted (which disconnects
whoever is still in it), again retried until LiveKit confirms.

Revoking a link or erasing a person removes them from the room (`RemoveParticipant`). The token
they already hold stays valid until it expires, so the room keeps a list of who is kept out
(`livekit_revocations`, in the database: every node sees it): a join LiveKit reports by webhook
with a token older than the person's current link is removed again at once.

Size (just over 400 lines): tokens and rooms share one LiveKit client and its settings;
splitting them would put the token's grants and the room's limits, which must agree, apart.
"""

from __future__ import annotations

import asyncio
import contextlib
import enum
import json
import sys
import uuid
from collections.abc import AsyncIterator
from datetime import datetime
from types import TracebackType

import aiohttp
import structlog
from livekit import api as lk
from livekit.protocol.webhook import WebhookEvent
from sqlalchemy import BigInteger, ForeignKey, String, or_, select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Mapped, mapped_column

from core.bookings import Booking, BookingStatus, Participant, Role, RoomState
from core.bus import Topic
from core.database import Base, UTCDateTime, enum_column
from core.events import SubjectErased
from core.runtime import Runtime
from core.settings import MediaMode, Settings
from core.tasks import stop_tasks

log = structlog.get_logger(__name__)

# What the call page publishes; nothing else (no screen share), so LiveKit refuses anything else.
PUBLISH_SOURCES = ["camera", "microphone"]
FAILURES = (aiohttp.ClientError, TimeoutError, OSError, lk.TwirpError)
GENERATION_ATTRIBUTE = "callgate.generation"  # the join link's generation, in every token
NEVER = sys.maxsize  # no generation of an erased person's link is let in again
REFUSED_EVENTS = ("participant_joined", "track_published")


class Removal(enum.StrEnum):
    REVOKED = "revoked"
    ERASED = "erased"


class RevokedIdentity(Base):
    """Someone kept out of a room: joins with a token of a link generation below `admit_from`
    are removed again. `removed_at` is set once LiveKit confirmed the first removal."""

    __tablename__ = "livekit_revocations"

    room_name: Mapped[str] = mapped_column(String(64), primary_key=True)
    identity: Mapped[str] = mapped_column(String(64), primary_key=True)
    booking_id: Mapped[uuid.UUID] = mapped_column(
        ForeignKey("bookings.id", ondelete="CASCADE"), index=True
    )
    reason: Mapped[Removal] = mapped_column(enum_column(Removal, 16))
    admit_from: Mapped[int] = mapped_column(BigInteger)
    revoked_at: Mapped[datetime] = mapped_column(UTCDateTime())
    removed_at: Mapped[datetime | None] = mapped_column(UTCDateTime(), nullable=True)


def room_grants(role: Role, room: str) -> lk.VideoGrants:
    """What a participant of `role` may do in `room`: hosts may also moderate it."""
    return lk.VideoGrants(
        room_join=True,
        room=room,
        room_admin=True if role is Role.HOST else None,
        can_publish=True,
        can_subscribe=True,
        can_publish_data=True,
        can_publish_sources=list(PUBLISH_SOURCES),
        can_update_own_metadata=False,
    )


def livekit_credentials(settings: Settings) -> tuple[str, str, str]:
    """URL, API key and secret, or ValueError naming what is missing."""
    missing = [  # every missing one named at once
        name
        for name, value in (
            ("livekit_url", settings.livekit_url),
            ("livekit_api_key", settings.livekit_api_key),
            ("livekit_api_secret", settings.livekit_api_secret),
        )
        if not value
    ]
    url, key, secret = settings.livekit_url, settings.livekit_api_key, settings.livekit_api_secret
    if not url or not key or secret is None:
        raise ValueError(f"livekit media mode needs {', '.join(missing)}")
    return url, key, secret.get_secret_value()


def room_metadata(booking_id: uuid.UUID, purposes: list[str], policy: str) -> str:
    """Room metadata: the booking and what it may record; no names, no titles."""
    return json.dumps(
        {"booking_id": str(booking_id), "requested_purposes": purposes, "recording_policy": policy},
        separators=(",", ":"),
    )


def _describe(exc: BaseException) -> str:
    """What a scheduler may read about a LiveKit failure (the booking's `room.error`): the
    kind of failure, never the exception text, which names internal hosts and ports (that
    goes to the log)."""
    if isinstance(exc, lk.TwirpError):
        return f"LiveKit refused the request ({exc.code})"
    if isinstance(exc, TimeoutError):
        return "LiveKit did not answer in time"
    return f"LiveKit is unreachable ({type(exc).__name__})"


class Rooms:
    """Creates and deletes the LiveKit rooms of bookings; a no-op in builtin media mode.

    Enter it on the app lifespan (`async with Rooms(runtime) as rooms`; the app's is
    `api.services.Services.rooms`, handed to the booking functions that change rooms).
    `client` may be injected (tests, a shared session).
    """

    def __init__(self, runtime: Runtime, client: lk.LiveKitAPI | None = None) -> None:
        self._runtime = runtime
        self._client = client
        self._owns_client = client is None
        self._task: asyncio.Task[None] | None = None
        self._locks: dict[uuid.UUID, asyncio.Lock] = {}  # one LiveKit call per booking
        self._erasures: asyncio.Task[None] | None = None

    @property
    def enabled(self) -> bool:
        return self._runtime.settings.media_mode is MediaMode.LIVEKIT

    async def __aenter__(self) -> Rooms:
        if not self.enabled:
            return self
        if self._client is None:
            url, key, secret = livekit_credentials(self._runtime.settings)
            timeout = aiohttp.ClientTimeout(total=self._runtime.settings.livekit_timeout_s)
            self._client = lk.LiveKitAPI(url, key, secret, timeout=timeout, failover=False)
        self._task = asyncio.create_task(self._retry_forever(), name="livekit-rooms")
        self._erasures = asyncio.create_task(self._follow_erasures(), name="livekit-erasures")
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()

    async def close(self) -> None:
        """Stop retrying and close the client we opened; safe to call twice."""
        tasks, self._task, self._erasures = [self._task, self._erasures], None, None
        await stop_tasks(tasks)
        client, self._client = self._client, None
        if client is not None and self._owns_client:
            await client.aclose()

    async def provision(self, booking_id: uuid.UUID) -> None:
        """Try once to create the booking's room; record the outcome on the booking."""
        async with self._exclusive(booking_id) as client:
            if client is not None:
                await self._provision(client, booking_id)

    async def remove(self, booking_id: uuid.UUID) -> None:
        """Try once to delete a booking's room (gone already counts as deleted)."""
        async with self._exclusive(booking_id) as client:
            if client is not None:
                await self._remove(client, booking_id)

    @contextlib.asynccontextmanager
    async def _exclusive(self, booking_id: uuid.UUID) -> AsyncIterator[lk.LiveKitAPI | None]:
        """The client (None when LiveKit is not in use), held for this booking alone: the
        request and the retry loop take turns, and the second sees the first's outcome."""
        client = self._client
        if client is None:
            yield None
            return
        lock = self._locks.setdefault(booking_id, asyncio.Lock())
        try:
            async with lock:
                yield client
        finally:
            if not lock.locked():
                self._locks.pop(booking_id, None)

    async def _provision(self, client: lk.LiveKitAPI, booking_id: uuid.UUID) -> None:
        db = self._runtime.db
        async with db.session() as session:
            booking = await session.get(Booking, booking_id)
            if booking is None or booking.room_state is not RoomState.PENDING:
                return
            request = lk.CreateRoomRequest(
                name=booking.room_name,
                empty_timeout=self._runtime.settings.livekit_empty_timeout_s,
                departure_timeout=self._runtime.settings.livekit_departure_timeout_s,
                max_participants=len(booking.participants),
                metadata=room_metadata(
                    booking.id, list(booking.requested_purposes), booking.recording_policy.value
                ),
            )
        try:
            await client.room.create_room(request)
        except FAILURES as exc:
            await self._record(booking_id, RoomState.PENDING, _describe(exc))
            log.warning("livekit.room_create_failed", booking_id=str(booking_id), error=str(exc))
            return
        await self._record(booking_id, RoomState.CREATED, None)

    async def _remove(self, client: lk.LiveKitAPI, booking_id: uuid.UUID) -> None:
        async with self._runtime.db.session() as session:
            booking = await session.get(Booking, booking_id)
            if booking is None or booking.room_state in (RoomState.DELETED, RoomState.NOT_NEEDED):
                return
            room = booking.room_name
        try:
            await client.room.delete_room(lk.DeleteRoomRequest(room=room))
        except lk.TwirpError as exc:
            if exc.code != lk.TwirpErrorCode.NOT_FOUND:
                log.warning(
                    "livekit.room_delete_failed", booking_id=str(booking_id), error=str(exc)
                )
                await self._record(booking_id, None, _describe(exc))
                return
        except FAILURES as exc:
            log.warning("livekit.room_delete_failed", booking_id=str(booking_id), error=str(exc))
            await self._record(booking_id, None, _describe(exc))
            return
        await self._record(booking_id, RoomState.DELETED, None)

    async def _record(
        self, booking_id: uuid.UUID, state: RoomState | None, error: str | None
    ) -> None:
        values: dict[str, object] = {
            "room_attempts": Booking.room_attempts + 1,
            "room_error": error,
        }
        if state is not None:
            values["room_state"] = state
        query = update(Booking).where(
            Booking.id == booking_id, Booking.room_state != RoomState.DELETED
        )
        async with self._runtime.db.session() as session:
            await session.execute(query.values(**values))

    # keeping people out

    async def revoke(
        self, booking_id: uuid.UUID, participant_id: uuid.UUID, reason: Removal
    ) -> None:
        """Keep the person out of the booking's room: stored first (every node then refuses
        a join with a token of the old link), then removed from the room if they are in it."""
        if self._client is None:
            return
        room = await self._keep_out(booking_id, participant_id, reason)
        if room is not None:
            await self._remove_participant(room, str(participant_id))

    async def _keep_out(
        self, booking_id: uuid.UUID, participant_id: uuid.UUID, reason: Removal
    ) -> str | None:
        """Store (or raise) the person's bar; the room's name, or None when no booking."""
        now = self._runtime.clock.now()
        async with self._runtime.db.session() as session:
            found = (
                await session.execute(
                    select(Booking.room_name, Participant.credential_generation)
                    .join(Participant, Participant.booking_id == Booking.id)
                    .where(Booking.id == booking_id, Participant.id == participant_id)
                )
            ).first()
        if found is None:
            return None
        room = str(found.room_name)
        admit_from = NEVER if reason is Removal.ERASED else found.credential_generation
        try:
            async with self._runtime.db.session() as session:
                row = await session.get(RevokedIdentity, (room, str(participant_id)))
                if row is None:
                    session.add(RevokedIdentity(
                        room_name=room, identity=str(participant_id),
                        booking_id=booking_id, reason=reason, admit_from=admit_from,
                        revoked_at=now,
                    ))
                elif row.admit_from < admit_from:
                    row.reason, row.admit_from, row.revoked_at = reason, admit_from, now
                    row.removed_at = None
        except IntegrityError:  # another node stored the same bar at the same moment
            pass
        return room

    async def refuse(self, event: WebhookEvent) -> bool:
        """Whether LiveKit reported a join (or a track) of someone kept out, with a token of a
        link older than their current one; if so they are removed again at once."""
        if self._client is None or event.event not in REFUSED_EVENTS:
            return False
        room, identity = event.room.name, event.participant.identity
        if not room or not identity:
            return False
        async with self._runtime.db.session() as session:
            row = await session.get(RevokedIdentity, (room, identity))
        if row is None:
            return False
        attribute = event.participant.attributes.get(GENERATION_ATTRIBUTE, "")
        generation = int(attribute) if attribute.isdigit() else -1
        if generation >= row.admit_from:
            return False  # the new link of the same person
        await self._remove_participant(room, identity)
        log.info("livekit.join_refused", room=room, reason=row.reason.value)
        return True

    async def _remove_participant(self, room: str, identity: str) -> bool:
        """RemoveParticipant; gone already counts as removed. Recorded on the person's bar."""
        assert self._client is not None  # noqa: S101 (only called in livekit mode)
        request = lk.RoomParticipantIdentity(room=room, identity=identity)
        try:
            await self._client.room.remove_participant(request)
        except lk.TwirpError as exc:
            if exc.code != lk.TwirpErrorCode.NOT_FOUND:
                log.warning("livekit.remove_failed", room=room, error=_describe(exc))
                return False
        except FAILURES as exc:
            log.warning("livekit.remove_failed", room=room, error=_describe(exc))
            return False
        async with self._runtime.db.session() as session:
            await session.execute(
                update(RevokedIdentity)
                .where(RevokedIdentity.room_name == room, RevokedIdentity.identity == identity)
                .values(removed_at=self._runtime.clock.now())
            )
        return True

    async def _follow_erasures(self) -> None:
        """An erased person is kept out of the rooms of their bookings (the event reaches every
        node; the bar is stored once, the removal is idempotent)."""
        while True:
            try:
                async with self._runtime.bus.subscribe(Topic.SUBJECT_ERASED) as events:
                    async for event in events:
                        if isinstance(event, SubjectErased):
                            await self.revoke(event.booking_id, event.subject_id, Removal.ERASED)
            except asyncio.CancelledError:
                raise
            except Exception:  # the bus went away; the retry loop finishes pending removals
                log.warning("livekit.erasures_lost", exc_info=True)
                await asyncio.sleep(1.0)

    async def _retry_removals(self) -> None:
        """Removals LiveKit has not confirmed yet (it was unreachable), in rooms still open."""
        async with self._runtime.db.session() as session:
            pending = (
                await session.execute(
                    select(RevokedIdentity.room_name, RevokedIdentity.identity)
                    .join(Booking, Booking.id == RevokedIdentity.booking_id)
                    .where(
                        RevokedIdentity.removed_at.is_(None),
                        Booking.room_state == RoomState.CREATED,
                    )
                )
            ).all()
        for room, identity in pending:
            await self._remove_participant(room, identity)

    async def retry_once(self) -> None:
        """Create pending rooms of bookings still to come; delete the rooms of cancelled
        bookings and of bookings whose join window has closed (that removes everyone still
        connected: LiveKit checks a token's `exp` only when a participant connects)."""
        now = self._runtime.clock.now()
        closed_before = now - self._runtime.settings.join_grace
        async with self._runtime.db.session() as session:
            pending = (
                await session.scalars(
                    select(Booking.id).where(
                        Booking.status.in_(BookingStatus.before_end()),
                        Booking.room_state == RoomState.PENDING,
                        Booking.ends_at > closed_before,
                    )
                )
            ).all()
            finished = (
                await session.scalars(
                    select(Booking.id).where(
                        Booking.room_state.in_([RoomState.PENDING, RoomState.CREATED]),
                        or_(
                            Booking.status == BookingStatus.CANCELLED,
                            Booking.ends_at <= closed_before,
                        ),
                    )
                )
            ).all()
        for booking_id in pending:
            await self.provision(booking_id)
        for booking_id in finished:
            await self.remove(booking_id)
        if self._client is not None:
            await self._retry_removals()

    async def _retry_forever(self) -> None:
        interval = self._runtime.settings.livekit_retry_interval_s
        while True:
            await asyncio.sleep(interval)
            try:
                await self.retry_once()
            except Exception:  # the loop is a task boundary: log, keep retrying
                log.exception("livekit.retry_failed")

