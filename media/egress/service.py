"""Track Egress for exactly the consenting people's tracks, kept right by any node.

What is in a room comes from LiveKit itself (`ListParticipants`), what callgate started from the
database (`records`), who may be recorded for which purpose from the consent gate, and whether
the booking is being recorded from `RecordingControl`. `reconcile(room)` makes the running
egresses match: one Track Egress per allowed track (never a Room Composite, which would also
capture people who did not consent), stopped on withdrawal, on unpublish, when the person leaves,
on a host stop, and whenever the gate cannot confirm consent (fail closed). Any node may do it:
webhooks reach whichever node the load balancer picks, and a withdrawal reaches every node.

On start, and every minute, `audit()` compares LiveKit's `ListEgress` with the stored list: an
egress callgate does not know, or one whose consent is gone, is stopped at once (so a node killed
mid-recording leaves nothing running that nobody answers for), and an egress that ended while no
node heard of it has its file taken in or deleted as if its `egress_ended` had arrived. An egress
whose node died before storing LiveKit's id is recognised by the row id in its file name and
adopted (named), so it is stopped and its file taken in like any other.
"""

from __future__ import annotations

import asyncio
import re
import uuid
from collections.abc import Coroutine
from datetime import timedelta
from pathlib import Path
from types import TracebackType
from typing import Any

import aiohttp
import structlog
from livekit import api as lk
from livekit.protocol import egress as lk_egress
from livekit.protocol.webhook import WebhookEvent
from sqlalchemy import select

from consent.state import granting_entry
from core.bookings import Booking, RoomState
from core.bus import BusEvent
from core.events import ConsentChanged, RecordingSwitched
from core.purposes import Purpose
from core.runtime import Runtime
from core.settings import MediaMode
from core.tasks import stop_tasks
from media.egress import intake, records
from media.egress.control import RecordingControl
from media.egress.events import follow_events
from media.egress.records import ENDED, EgressRecord, EgressState
from media.egress.rooms import Track, room_tracks
from media.egress.webhook import SeenEvents, api_credentials
from media.egress.withdrawals import Withdrawals
from media.gate import GateSource, gate_confirmed
from media.storage import Storage

log = structlog.get_logger(__name__)

_ROW_IN_NAME = re.compile(r"-([0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12})-")

AUDIT_EVERY = timedelta(minutes=1)
KEEPALIVE_S = 120.0  # idle LiveKit API connections kept open (aiohttp's default: 15 s)
AUDIT_POLL_S = 1.0  # how often the (injected) clock is read to see whether an audit is due
ROOM_EVENTS = ("participant_joined", "participant_left", "track_published",
               "track_unpublished", "room_finished")


class Egress:
    """Enter on the app lifespan; a no-op unless `media_mode` is livekit."""

    def __init__(
        self,
        runtime: Runtime,
        gate: GateSource,
        control: RecordingControl,
        store: Storage,
        client: lk.LiveKitAPI | None = None,
        egress_client: lk.LiveKitAPI | None = None,
    ) -> None:
        self._runtime = runtime
        self._gate = gate
        self._control = control
        self._store = store
        self._client = client  # RoomService: who is in a room, with which tracks
        self._egress_client = egress_client or client  # the Egress API
        self._owned: list[tuple[lk.LiveKitAPI, aiohttp.ClientSession]] = []
        self._seen = SeenEvents(runtime)
        self._locks: dict[str, asyncio.Lock] = {}
        self._tasks: list[asyncio.Task[None]] = []
        self._ingests: set[asyncio.Task[None]] = set()
        self.withdrawals = Withdrawals(runtime, self.stop_egress, self.stop_unnamed)

    @property
    def enabled(self) -> bool:
        return self._runtime.settings.media_mode is MediaMode.LIVEKIT

    async def __aenter__(self) -> Egress:
        if not self.enabled:
            return self
        settings = self._runtime.settings
        key, secret = api_credentials(settings)
        if self._client is None:
            self._client = self._own(settings.livekit_url, key, secret)
        if self._egress_client is None:
            url = settings.livekit_egress_url or settings.livekit_url
            if url == settings.livekit_url:
                self._egress_client = self._client
            else:
                self._egress_client = self._own(url, key, secret)
        self.withdrawals.open()
        self._tasks = [
            asyncio.create_task(
                follow_events(self._runtime, self.withdrawals, self._on_event),
                name="egress-events",
            ),
            asyncio.create_task(self._run_audits(), name="egress-audits"),
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
        await self.withdrawals.close()
        await self.settled()  # a file being taken in is finished, not cut off
        # Running egresses are left running: they are stored, and the next node to audit
        # (or this one, restarted) answers for them.
        for client, session in self._owned:
            await client.aclose()
            await session.close()
        self._owned = []
        self._client = self._egress_client = None

    def _own(self, url: str | None, key: str, secret: str) -> lk.LiveKitAPI:
        """A client whose connections stay open between calls (`KEEPALIVE_S`), so a
        withdrawal's StopEgress does not wait for a new connection (and TLS handshake)."""
        session = aiohttp.ClientSession(
            timeout=aiohttp.ClientTimeout(total=self._runtime.settings.livekit_timeout_s),
            connector=aiohttp.TCPConnector(keepalive_timeout=KEEPALIVE_S),
        )
        client = lk.LiveKitAPI(url, key, secret, session=session)
        self._owned.append((client, session))
        return client

    async def settled(self) -> None:
        """Return once no finished egress is being taken in or deleted."""
        while self._ingests:
            await asyncio.gather(*list(self._ingests), return_exceptions=True)

    # webhooks

    async def first_time(self, event_id: str) -> bool:
        """Whether this webhook event is new (LiveKit retries deliveries)."""
        return await self._seen.first_time(event_id)

    async def handle(self, event: WebhookEvent) -> None:
        """Apply one verified, new webhook event."""
        if event.event.startswith("egress_"):
            await self._reported(event.egress_info)
        elif event.event in ROOM_EVENTS:
            await self.reconcile(event.room.name)

    async def _reported(self, info: lk_egress.EgressInfo) -> None:
        """LiveKit's report of an egress, stored; an ended one finished by the one node (or
        report) whose conditional update ended its row: only that one reads the file."""
        state = records.state_of(info.status)
        now = self._runtime.clock.now()
        if state not in ENDED:
            await records.reported(self._runtime.db, info.egress_id, state, now)
            return
        self.withdrawals.ended(info.egress_id)
        ending = await records.end(self._runtime.db, info.egress_id, state, now)
        if ending is not None:
            self._spawn(self._finished(ending, info), "egress.take_in_failed")

    async def _finished(self, ending: records.Ending, info: lk_egress.EgressInfo) -> None:
        record = ending.record
        if record is None:  # an egress callgate never started: nobody's consent covers it
            await intake.discard(self._runtime, info)
            return
        if info.status == lk_egress.EGRESS_COMPLETE:
            for result in intake.files_of(info):
                await intake.take_in(self._runtime, self._store, record, info, result)
        if ending.before in records.LIVE:  # ended by itself (failure, unpublish): start again
            await self.reconcile(record.room_name)

    def _spawn(self, coro: Coroutine[Any, Any, None], failure: str) -> None:
        """Run `coro` beside the caller; finished (not cut off) when the service closes."""

        async def guarded() -> None:
            try:
                await coro
            except Exception:  # a task boundary: logged (a file left stays for the operator)
                log.exception(failure)

        task = asyncio.create_task(guarded())
        self._ingests.add(task)
        task.add_done_callback(self._ingests.discard)

    # consent -> egress

    def _allowed(self, booking_id: uuid.UUID, subject_id: uuid.UUID, purpose: Purpose) -> bool:
        gate = self._gate()
        if gate is None or not gate_confirmed(gate):
            return False
        return gate.allows(booking_id, subject_id, purpose)

    async def _booking_of(self, room: str) -> uuid.UUID | None:
        async with self._runtime.db.session() as session:
            found = await session.scalar(select(Booking.id).where(Booking.room_name == room))
        if found is None:
            log.warning("egress.unknown_room", room=room)
        return found

    async def reconcile(self, room: str) -> None:
        """Start egress for the room's allowed tracks, stop it for the rest."""
        if not room:
            return
        lock = self._locks.setdefault(room, asyncio.Lock())
        async with lock:
            booking_id = await self._booking_of(room)
            if booking_id is None:
                return
            gate = self._gate()
            if gate is not None:
                await gate.ensure_booking(booking_id)
            on = await self._control.recording_on(booking_id)
            tracks = await room_tracks(self._client, room)
            wanted = {
                sid: track for sid, track in (tracks or {}).items()
                if on and self._allowed(booking_id, track.subject_id, track.kind.purpose)
            }
            running = await records.live(self._runtime.db, booking_id)
            for record in running:
                self.withdrawals.saw(record)
            for record in running:
                keep = record.track_sid in wanted if tracks is not None else (
                    on and self._allowed(booking_id, record.participant_id, record.kind.purpose)
                )
                if not keep:
                    await self._stop(record)
            started = {r.track_sid for r in running}
            for sid, track in sorted(wanted.items()):
                if sid not in started:
                    await self._start(room, booking_id, track)

    async def _start(self, room: str, booking_id: uuid.UUID, track: Track) -> None:
        assert self._egress_client is not None  # noqa: S101 (only reachable when entered)
        now = self._runtime.clock.now()
        async with self._runtime.db.session() as session:
            entry = await granting_entry(session, booking_id, track.subject_id, track.kind.purpose)
        entries = [] if entry is None else [str(entry)]  # the consent record of this egress
        record = EgressRecord(
            id=uuid.uuid4(), booking_id=booking_id, participant_id=track.subject_id,
            room_name=room, track_sid=track.sid, kind=track.kind, consent_entry_ids=entries,
            state=EgressState.STARTING, started_at=now, updated_at=now,
        )
        if not await records.claim(self._runtime.db, record):
            return  # another node is starting it
        # one file per egress: two egresses of a track within a second (a withdrawal and a
        # new grant) must not share a name, nor one overwrite the other's file
        name = _file_name(track, record.id)
        path = f"{booking_id}/{track.subject_id}/{name}"
        root = self._runtime.settings.egress_output_dir
        if root is not None:  # Egress sees the shared folder at the same path
            path = str(root.resolve() / path)
        request = lk_egress.TrackEgressRequest(
            room_name=room, track_id=track.sid, file=lk_egress.DirectFileOutput(filepath=path)
        )
        try:
            info = await self._egress_client.egress.start_track_egress(request)
        except Exception:  # Egress down: the claim goes, the next reconcile tries again
            log.warning("egress.start_failed", room=room, track=track.sid, exc_info=True)
            await records.forget(self._runtime.db, record.id)
            return
        state = await records.named(self._runtime.db, record.id, info.egress_id, now)
        record.egress_id = info.egress_id
        if state in records.LIVE:
            self.withdrawals.saw(record)
        if state is EgressState.ENDING:  # withdrawn while LiveKit was starting it
            await self.stop_egress(info.egress_id)
            return
        gate = self._gate()
        if gate is not None:  # the ledger now, not as it was when the room was read
            await gate.ensure_booking(booking_id)
        on = await self._control.recording_on(booking_id)
        if not on or not self._allowed(booking_id, track.subject_id, track.kind.purpose):
            await self._stop(record)  # consent or the switch moved while LiveKit started it

    async def _stop(self, record: EgressRecord) -> None:
        """Stop a live egress, once across nodes (the node that moved the row asks LiveKit)."""
        now = self._runtime.clock.now()
        if not await records.take_over(self._runtime.db, record.id, now):
            return
        if record.egress_id is None:
            record = await self._named(record)
            if record.egress_id is None:
                await self.stop_unnamed(record.id, record.room_name)
                return
        await self.stop_egress(record.egress_id)

    async def stop_unnamed(self, record_id: uuid.UUID, room: str) -> None:
        """Stop the egress of a claim (moved to `ending`) whose LiveKit id was never stored:
        the node that claimed it may have died between LiveKit's answer and storing it. It is
        found in LiveKit's list of the room's active egresses by its file name (which holds
        the row's id) and named before it is stopped, so its file is taken in as any other's.
        A start still in flight is not listed yet: the node naming it finds the row `ending`
        and stops it (a node that dies meanwhile leaves it to the audit)."""
        assert self._egress_client is not None  # noqa: S101 (only reachable when entered)
        try:
            listed = await self._egress_client.egress.list_egress(
                lk_egress.ListEgressRequest(room_name=room, active=True)
            )
        except Exception:  # the audit stops it
            log.warning("egress.list_failed", room=room, exc_info=True)
            return
        for info in listed.items:
            if _row_of(info.track.file.filepath) == record_id:
                await records.named(
                    self._runtime.db, record_id, info.egress_id, self._runtime.clock.now()
                )
                await self.stop_egress(info.egress_id)

    async def _named(self, record: EgressRecord) -> EgressRecord:
        async with self._runtime.db.session() as session:
            fresh = await session.get(EgressRecord, record.id)
        return fresh or record

    async def stop_egress(self, egress_id: str) -> bool:
        assert self._egress_client is not None  # noqa: S101 (only reachable when entered)
        self.withdrawals.ended(egress_id)
        try:
            await self._egress_client.egress.stop_egress(
                lk_egress.StopEgressRequest(egress_id=egress_id)
            )
        except lk.TwirpError as exc:
            if exc.code in (lk.TwirpErrorCode.NOT_FOUND, lk.TwirpErrorCode.FAILED_PRECONDITION):
                return True  # not running any more: what we wanted
            log.warning("egress.stop_failed", egress=egress_id, code=exc.code)
            return False
        except Exception:  # the audit stops it again
            log.warning("egress.stop_failed", egress=egress_id, exc_info=True)
            return False
        return True

    # audit

    async def audit(self) -> None:
        """LiveKit's list against ours: stop what nobody answers for or consent no longer
        allows; finish what ended unheard."""
        assert self._egress_client is not None  # noqa: S101 (only reachable when entered)
        listed = await self._egress_client.egress.list_egress(lk_egress.ListEgressRequest())
        self.withdrawals.keep({
            info.egress_id for info in listed.items
            if records.state_of(info.status) in records.LIVE
        })
        known: dict[str, EgressRecord] = {}
        async with self._runtime.db.session() as session:
            ids = [info.egress_id for info in listed.items]
            if ids:
                rows = await session.scalars(
                    select(EgressRecord).where(EgressRecord.egress_id.in_(ids))
                )
                known = {row.egress_id: row for row in rows if row.egress_id}
        rooms: set[str] = set()
        for info in listed.items:
            record = known.get(info.egress_id)
            state = records.state_of(info.status)
            if state in (EgressState.STARTING, EgressState.ACTIVE):
                if record is None:
                    record = await self._adopt(info)
                if record is None or record.state not in records.LIVE:
                    log.warning("egress.unanswered_stopped", egress=info.egress_id)
                    await self.stop_egress(info.egress_id)
                else:
                    rooms.add(record.room_name)
            elif state in ENDED and (record is None or record.state not in ENDED):
                await self._reported(info)
        for room in sorted(rooms | await self._open_rooms()):
            await self.reconcile(room)

    async def _adopt(self, info: lk_egress.EgressInfo) -> EgressRecord | None:
        """The stored claim a running egress was started for, named now, when the node that
        started it never stored LiveKit's id (it died between the answer and storing it):
        found by the row id in the egress's file name. None for an egress callgate did not
        start."""
        row_id = _row_of(info.track.file.filepath)
        if row_id is None:
            return None
        async with self._runtime.db.session() as session:
            row = await session.get(EgressRecord, row_id)
            if row is None or row.egress_id is not None or row.room_name != info.room_name:
                return None
        await records.named(self._runtime.db, row_id, info.egress_id, self._runtime.clock.now())
        log.warning("egress.adopted", egress=info.egress_id, record=str(row_id))
        row.egress_id = info.egress_id
        return row

    async def _open_rooms(self) -> set[str]:
        """Rooms of bookings inside their join window: a track whose start was missed (the
        gate not yet confirmed, Egress briefly down) is started within a minute."""
        now = self._runtime.clock.now()
        settings = self._runtime.settings
        async with self._runtime.db.session() as session:
            names = await session.scalars(
                select(Booking.room_name).where(
                    Booking.room_state == RoomState.CREATED,
                    Booking.starts_at <= now + settings.join_lead,
                    Booking.ends_at > now - settings.join_grace,
                )
            )
            return set(names)

    async def _run_audits(self) -> None:
        due = self._runtime.clock.now()
        while True:
            if self._runtime.clock.now() >= due:
                due = self._runtime.clock.now() + AUDIT_EVERY
                try:
                    await self.audit()
                except Exception:  # Egress unreachable: try again next round
                    log.warning("egress.audit_failed", exc_info=True)
            await asyncio.sleep(AUDIT_POLL_S)

    async def _on_event(self, event: BusEvent) -> None:
        if isinstance(event, ConsentChanged):
            gate = self._gate()
            if gate is not None:  # read the ledger: this node's gate may not have the event yet
                await gate.ensure_booking(event.booking_id)
        elif not isinstance(event, RecordingSwitched):
            return
        for room in await self._rooms_of(event.booking_id):
            await self.reconcile(room)

    async def _rooms_of(self, booking_id: uuid.UUID) -> list[str]:
        async with self._runtime.db.session() as session:
            room = await session.scalar(select(Booking.room_name).where(Booking.id == booking_id))
        return [room] if room else []


def _file_name(track: Track, record_id: uuid.UUID) -> str:
    """The name of a track egress's file: the track and the row's id, then Egress's time."""
    return f"{track.kind.value}-{track.sid}-{record_id}-{{time}}"


def _row_of(path: str) -> uuid.UUID | None:
    """The row id in the name of a file `_file_name` named; None for any other file."""
    found = _ROW_IN_NAME.search(Path(path).name)
    return uuid.UUID(found.group(1)) if found else None
