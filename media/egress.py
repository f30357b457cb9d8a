"""LiveKit mode: Track Egress for exactly the consenting people's tracks, driven by webhooks.

LiveKit tells callgate who joined and which tracks they published (webhooks, verified and
deduplicated by `api/routers/livekit.py`); the consent gate says who may be recorded for
which purpose. `reconcile()` makes the running egresses match: one Track Egress per allowed
track (never a Room Composite, which would also capture people who did not consent), stopped
on withdrawal, on unpublish, on a host stop, and whenever the gate cannot confirm consent
(fail closed). The LiveKit Egress service writes the files. With `egress_output_dir` set (a
folder Egress and callgate share), callgate takes each finished file in as soon as the
`egress_ended` webhook names it: encrypted under the person's data key into recording storage
(local or S3, as the built-in recorder's files), listed as a recording with the consent entry
that allowed it, and the plaintext deleted. Without it, files stay where Egress put them.

State lives in this node's memory and is rebuilt from webhooks; with several nodes, route
LiveKit's webhooks to one of them (or all: events are deduplicated through Redis).
"""

from __future__ import annotations

import asyncio
import base64
import enum
import hashlib
import hmac
import uuid
from collections import OrderedDict
from collections.abc import Coroutine
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from types import TracebackType
from typing import Any

import structlog
from google.protobuf.json_format import Parse as parse_json
from google.protobuf.json_format import ParseError
from livekit import api as lk
from livekit.protocol import egress as lk_egress
from livekit.protocol import models
from livekit.protocol import room as lk_room
from livekit.protocol.webhook import WebhookEvent
from sqlalchemy import select

from core.bookings import Booking, Participant
from core.bus import Topic
from core.errors import AuthenticationFailed, Gone, InvalidInput
from core.events import ConsentChanged, RecordingSwitched
from core.runtime import Runtime
from core.settings import MediaMode, Settings
from core.tasks import stop_tasks
from media.keys import access_data_key
from media.recorder import GateSource, Recorder, gate_confirmed
from media.recordings import Recording, RecordingState, TrackKind
from media.storage import Storage

log = structlog.get_logger(__name__)

RECONCILE_EVERY_S = 1.0
SEEN_EVENTS = 10_000


class EgressState(enum.StrEnum):
    STARTING = "starting"
    ACTIVE = "active"
    ENDING = "ending"
    COMPLETE = "complete"
    FAILED = "failed"


_STATUS = {
    lk_egress.EGRESS_STARTING: EgressState.STARTING,
    lk_egress.EGRESS_ACTIVE: EgressState.ACTIVE,
    lk_egress.EGRESS_ENDING: EgressState.ENDING,
    lk_egress.EGRESS_COMPLETE: EgressState.COMPLETE,
}


@dataclass
class Track:
    sid: str
    kind: TrackKind
    subject_id: uuid.UUID


@dataclass
class Running:
    egress_id: str
    track: Track
    state: EgressState = EgressState.STARTING
    entries: list[str] = field(default_factory=list)  # the ledger entries that allowed it


@dataclass
class Room:
    """What LiveKit told us about one booking's room."""

    booking_id: uuid.UUID
    name: str
    closes_at: datetime
    present: set[uuid.UUID] = field(default_factory=set)
    tracks: dict[str, Track] = field(default_factory=dict)
    egress: dict[str, Running] = field(default_factory=dict)  # by track sid
    finished: list[Running] = field(default_factory=list)


def api_credentials(settings: Settings) -> tuple[str, str]:
    """LiveKit API key and secret (the signaling area checks the whole LiveKit config at
    start; here a missing one means no webhook can be trusted)."""
    if not settings.livekit_api_key or settings.livekit_api_secret is None:
        raise AuthenticationFailed("LiveKit API credentials are not configured")
    return settings.livekit_api_key, settings.livekit_api_secret.get_secret_value()


def verify_webhook(settings: Settings, body: bytes, authorization: str | None) -> WebhookEvent:
    """The event in a LiveKit webhook, if its `Authorization` JWT is signed with our API
    secret and carries the SHA-256 of exactly these bytes (LiveKit's webhook signature)."""
    key, secret = api_credentials(settings)
    token = (authorization or "").strip()
    if token.lower().startswith("bearer "):
        token = token[7:].strip()
    try:
        claims = lk.TokenVerifier(key, secret).verify(token)
    except Exception:  # any JWT failure is the same answer
        raise AuthenticationFailed("the webhook signature is not valid") from None
    expected = base64.b64encode(hashlib.sha256(body).digest()).decode()
    if not claims.sha256 or not hmac.compare_digest(claims.sha256, expected):
        raise AuthenticationFailed("the webhook body does not match its signature")
    try:
        return parse_json(body, WebhookEvent(), ignore_unknown_fields=True)
    except (ParseError, UnicodeDecodeError) as exc:
        raise InvalidInput(f"not a LiveKit webhook event: {exc}") from None


def _subject(identity: str) -> uuid.UUID | None:
    try:
        return uuid.UUID(identity)
    except ValueError:
        return None


class Egress:
    """Enter on the app lifespan; a no-op unless `media_mode` is livekit."""

    def __init__(
        self,
        runtime: Runtime,
        gate: GateSource,
        recorder: Recorder,
        client: lk.LiveKitAPI | None = None,
    ) -> None:
        self._runtime = runtime
        self._gate = gate
        self._recorder = recorder  # recording on/off, ledger lookups, storage
        self._client = client
        self._owns_client = client is None
        self.rooms: dict[str, Room] = {}
        self._seen: OrderedDict[str, None] = OrderedDict()
        self._lock = asyncio.Lock()
        self._tasks: list[asyncio.Task[None]] = []
        self._ingests: set[asyncio.Task[None]] = set()

    @property
    def enabled(self) -> bool:
        return self._runtime.settings.media_mode is MediaMode.LIVEKIT

    async def __aenter__(self) -> Egress:
        if not self.enabled:
            return self
        if self._client is None:
            key, secret = api_credentials(self._runtime.settings)
            settings = self._runtime.settings
            self._client = lk.LiveKitAPI(settings.livekit_url, key, secret)
        self._tasks = [
            asyncio.create_task(self._run_events(), name="egress-events"),
            asyncio.create_task(self._run_ticks(), name="egress-ticks"),
        ]
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        tasks, self._tasks = self._tasks, []
        await stop_tasks(tasks)
        if self._ingests:  # a file being taken in is finished, not cut off
            await asyncio.gather(*self._ingests, return_exceptions=True)
        for room in list(self.rooms.values()):
            await self._stop_all(room)
        if self._client is not None and self._owns_client:
            await self._client.aclose()
        self._client = None

    # webhooks

    async def first_time(self, event_id: str) -> bool:
        """Whether this webhook event is new (LiveKit retries deliveries)."""
        if self._runtime.redis is not None:
            key = f"{self._runtime.settings.redis_prefix}:livekit:event:{event_id}"
            return bool(await self._runtime.redis.set(key, b"1", nx=True, ex=24 * 3600))
        if event_id in self._seen:
            return False
        self._seen[event_id] = None
        while len(self._seen) > SEEN_EVENTS:
            self._seen.popitem(last=False)
        return True

    async def handle(self, event: WebhookEvent) -> None:
        """Apply one verified, new webhook event and reconcile its room."""
        room = await self._room(event.room.name or event.egress_info.room_name)
        if room is None:
            return
        subject = _subject(event.participant.identity)
        kind = event.event
        if kind == "participant_joined" and subject is not None:
            room.present.add(subject)
        elif kind == "participant_left" and subject is not None:
            self._leave(room, subject)
        elif kind == "track_published" and subject is not None:
            track_kind = _track_kind(event.track.type)
            if track_kind is not None:
                room.present.add(subject)
                room.tracks[event.track.sid] = Track(event.track.sid, track_kind, subject)
        elif kind == "track_unpublished":
            room.tracks.pop(event.track.sid, None)
        elif kind.startswith("egress_"):
            self._egress_update(room, event.egress_info)
        await self.reconcile(room)

    def _egress_update(self, room: Room, info: lk_egress.EgressInfo) -> None:
        for sid, running in list(room.egress.items()):
            if running.egress_id != info.egress_id:
                continue
            running.state = _STATUS.get(info.status, EgressState.FAILED)
            if running.state in (EgressState.COMPLETE, EgressState.FAILED):
                room.finished.append(room.egress.pop(sid))
        for running in room.finished:  # stopped by us, ended now
            if running.egress_id == info.egress_id:
                running.state = _STATUS.get(info.status, EgressState.FAILED)
        ended = [r for r in room.finished if r.egress_id == info.egress_id]
        if ended and info.status == lk_egress.EGRESS_COMPLETE:
            files = list(info.file_results) or ([info.file] if info.file.filename else [])
            for result in files:
                self._spawn(self.take_in(room, ended[0], info, result))

    # taking finished files in

    def _spawn(self, coro: Coroutine[Any, Any, None]) -> None:
        async def guarded() -> None:
            try:
                await coro
            except Exception:  # the plaintext stays in the shared folder; logged for the operator
                log.exception("egress.take_in_failed")

        task = asyncio.create_task(guarded())
        self._ingests.add(task)
        task.add_done_callback(self._ingests.discard)

    def _source(self, filename: str) -> Path | None:
        """The file Egress wrote, if it lies inside the shared folder (a webhook never makes
        callgate read or delete anything else)."""
        root = self._runtime.settings.egress_output_dir
        if root is None or not filename:
            return None
        base = root.resolve()
        path = Path(filename) if Path(filename).is_absolute() else base / filename
        path = path.resolve()
        if not path.is_relative_to(base) or not path.is_file():
            log.warning("egress.file_refused", filename=filename)
            return None
        return path

    async def take_in(
        self, room: Room, running: Running, info: lk_egress.EgressInfo, result: lk_egress.FileInfo
    ) -> None:
        """Encrypt one finished egress file into recording storage, list it, drop the plaintext."""
        source = self._source(result.filename)
        if source is None:
            return
        track = running.track
        now = self._runtime.clock.now()
        try:
            async with self._runtime.db.session() as session:
                external_id = await session.scalar(
                    select(Participant.external_id).where(Participant.id == track.subject_id)
                )
                if external_id is None:
                    raise LookupError("the participant is gone")
                key = await access_data_key(session, self._runtime.keys, external_id, now)
        except (Gone, LookupError):  # erased meanwhile: the recording must not outlive them
            log.warning("egress.take_in_refused", egress=running.egress_id, exc_info=True)
            await asyncio.to_thread(source.unlink, True)
            return
        recording_id = uuid.uuid4()
        suffix = source.suffix.lower().lstrip(".") or "bin"
        relative = f"{room.booking_id}/{recording_id}.{suffix}.cgr"
        store = self._recorder.store
        size, digest = await asyncio.to_thread(_encrypt_file, store, source, relative, key)
        started = _from_ns(result.started_at or info.started_at) or now
        ended = _from_ns(result.ended_at or info.ended_at) or now
        retention = timedelta(days=self._runtime.settings.recording_retention_days)
        async with self._runtime.db.session() as session:
            session.add(
                Recording(
                    id=recording_id,
                    booking_id=room.booking_id,
                    participant_id=track.subject_id,
                    kind=track.kind,
                    state=RecordingState.COMPLETE,
                    media_type=MEDIA_TYPES.get(suffix, "application/octet-stream"),
                    started_at=started,
                    ended_at=ended,
                    consent_entry_ids=running.entries,
                    frames=0,
                    size=size,
                    sha256=digest,
                    retain_until=ended + retention,
                    path=relative,
                )
            )
        await asyncio.to_thread(store.seal, relative)
        await asyncio.to_thread(source.unlink, True)
        log.info("egress.taken_in", egress=running.egress_id, recording=str(recording_id))

    async def _room(self, name: str) -> Room | None:
        if not name:
            return None
        room = self.rooms.get(name)
        if room is not None:
            return room
        async with self._runtime.db.session() as session:
            query = select(Booking.id, Booking.ends_at).where(Booking.room_name == name)
            found = (await session.execute(query)).first()
        if found is None:
            log.warning("egress.unknown_room", room=name)
            return None
        gate = self._gate()
        if gate is not None:
            await gate.ensure_booking(found.id)
        await self._recorder.recording_on(found.id)  # a room seen the first time
        closes_at = found.ends_at + self._runtime.settings.join_grace
        room = self.rooms[name] = Room(found.id, name, closes_at)
        return room

    def _leave(self, room: Room, subject: uuid.UUID) -> None:
        room.present.discard(subject)
        for sid in [s for s, t in room.tracks.items() if t.subject_id == subject]:
            del room.tracks[sid]

    async def close_expired(self) -> None:
        """Remove everyone from rooms whose join window closed: LiveKit checks a token's
        `exp` only when connecting, so people already in would otherwise stay."""
        now = self._runtime.clock.now()
        for room in list(self.rooms.values()):
            if now < room.closes_at or not room.present or self._client is None:
                continue
            for subject in sorted(room.present):
                request = lk_room.RoomParticipantIdentity(room=room.name, identity=str(subject))
                try:
                    await self._client.room.remove_participant(request)
                except lk.TwirpError as exc:
                    if exc.code != "not_found":  # gone already is what we wanted
                        log.warning("egress.remove_failed", room=room.name, code=exc.code)
                        continue
                except Exception:  # LiveKit unreachable: the next tick tries again
                    log.warning("egress.remove_failed", room=room.name, exc_info=True)
                    continue
                self._leave(room, subject)
            await self.reconcile(room)

    # consent -> egress

    def allowed(self, room: Room, track: Track) -> bool:
        if not self._recorder.is_active(room.booking_id) or track.subject_id not in room.present:
            return False
        gate = self._gate()
        if gate is None or not gate_confirmed(gate):
            return False
        return gate.allows(room.booking_id, track.subject_id, track.kind.purpose)

    async def reconcile(self, room: Room) -> None:
        """Start egress for allowed tracks, stop it for the rest."""
        async with self._lock:
            wanted = {sid for sid, track in room.tracks.items() if self.allowed(room, track)}
            for sid in sorted(set(room.egress) - wanted):
                await self._stop(room, sid)
            for sid in sorted(wanted - set(room.egress)):
                await self._start(room, room.tracks[sid])

    async def _start(self, room: Room, track: Track) -> None:
        assert self._client is not None  # noqa: S101 (only reachable when entered)
        path = f"{room.booking_id}/{track.subject_id}/{track.kind.value}-{track.sid}-{{time}}"
        root = self._runtime.settings.egress_output_dir
        if root is not None:  # Egress sees the shared folder at the same path
            path = str(root.resolve() / path)
        request = lk_egress.TrackEgressRequest(
            room_name=room.name,
            track_id=track.sid,
            file=lk_egress.DirectFileOutput(filepath=path),
        )
        try:
            info = await self._client.egress.start_track_egress(request)
        except Exception:  # LiveKit down: the next tick tries again
            log.warning("egress.start_failed", room=room.name, track=track.sid, exc_info=True)
            return
        entries = await self._recorder.granting_entries(
            room.booking_id, track.subject_id, track.kind.purpose
        )
        room.egress[track.sid] = Running(info.egress_id, track, entries=entries)

    async def _stop(self, room: Room, sid: str) -> None:
        assert self._client is not None  # noqa: S101 (only reachable when entered)
        running = room.egress.pop(sid)
        try:
            await self._client.egress.stop_egress(
                lk_egress.StopEgressRequest(egress_id=running.egress_id)
            )
        except Exception:  # keep it listed, so the next tick stops it again
            log.warning("egress.stop_failed", egress=running.egress_id, exc_info=True)
            room.egress[sid] = running
            return
        running.state = EgressState.ENDING
        room.finished.append(running)

    async def _stop_all(self, room: Room) -> None:
        if self._client is None:
            return
        for sid in list(room.egress):
            await self._stop(room, sid)

    # background

    async def reconcile_all(self) -> None:
        for room in list(self.rooms.values()):
            await self.reconcile(room)

    async def _run_ticks(self) -> None:
        while True:
            await asyncio.sleep(RECONCILE_EVERY_S)
            try:
                await self.close_expired()
                await self.reconcile_all()
            except Exception:  # one failed round must not end the loop
                log.exception("egress.reconcile_failed")

    async def _run_events(self) -> None:
        topics = (Topic.CONSENT_CHANGED, Topic.RECORDING_CHANGED)
        while True:
            try:
                async with self._runtime.bus.subscribe(*topics) as events:
                    async for event in events:
                        if isinstance(event, ConsentChanged | RecordingSwitched):
                            await asyncio.sleep(0.02)  # let the gate apply it first
                            await self.reconcile_all()
            except asyncio.CancelledError:
                raise
            except Exception:  # the bus went away; ticks keep failing closed meanwhile
                log.warning("egress.bus_lost", exc_info=True)
                await asyncio.sleep(1.0)


MEDIA_TYPES = {"ogg": "audio/ogg", "webm": "video/webm", "mp4": "video/mp4", "m4a": "audio/mp4"}
COPY_BYTES = 1 << 20


def _encrypt_file(store: Storage, source: Path, relative: str, key: bytes) -> tuple[int, str]:
    writer = store.open_writer(relative, key)
    with source.open("rb") as plaintext:
        while block := plaintext.read(COPY_BYTES):
            writer.write(block)
    writer.close()
    return writer.size, writer.sha256


def _from_ns(ns: int) -> datetime | None:
    return datetime.fromtimestamp(ns / 1e9, UTC) if ns > 0 else None


def _track_kind(track_type: int) -> TrackKind | None:
    if track_type == models.TrackType.AUDIO:
        return TrackKind.AUDIO
    if track_type == models.TrackType.VIDEO:
        return TrackKind.VIDEO
    return None
