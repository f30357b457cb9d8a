"""The signaling hub: rooms, their connections, and who is present.

One hub per process, entered on the app lifespan. It owns every signaling socket of this node
(each with its own bounded queue, and a writer task while it makes a send wait, so a slow
browser never stalls a room), relays
`signal` messages between the people of a room, announces arrivals and departures (a dropped
socket gets `reconnect_grace_s` to come back before anyone sees a leave), forwards consent and
recording changes from the bus, and ends rooms at the window end or on cancellation.
It knows nothing of HTTP: the router admits a socket and hands the hub a `Transport`.
"""

from __future__ import annotations

import asyncio
import contextlib
import secrets
import time
from collections.abc import Coroutine, Iterable
from contextlib import AsyncExitStack
from datetime import datetime
from types import TracebackType
from typing import Any

import structlog

from core.bus import BusEvent, Subscription, Topic
from core.events import (
    BookingCancelled,
    BookingUpdated,
    ConsentChanged,
    LinkRevoked,
    NoticeChanged,
    ParticipantUpdated,
    RecordingSwitched,
    RoomFrame,
    SubjectErased,
    TrackRecording,
)
from core.runtime import Runtime
from signaling.attendance import LeaveHow
from signaling.attendees import Attendees, leave_how
from signaling.connection import Connection, Transport
from signaling.fanout import Fanout, LocalFanout, RedisFanout, node_topic
from signaling.heartbeat import beat
from signaling.protocol import (
    ByeReason,
    CloseCode,
    ConsentState,
    Error,
    ErrorCode,
    IceServer,
    Leave,
    Peer,
    PeerJoined,
    PeerLeft,
    Pong,
    RecordingState,
    Relay,
    encode,
    read_client,
)
from signaling.protocol import NoticeChanged as NoticeChangedMessage
from signaling.room import Room

log = structlog.get_logger(__name__)

PONG = encode(Pong())


class Hub:
    """Every room with a socket on this node. Use as `async with Hub(runtime) as hub`."""

    def __init__(self, runtime: Runtime, *, tick_s: float = 1.0) -> None:
        self._runtime = runtime
        settings = runtime.settings
        self.node_id = secrets.token_hex(6)
        self.rooms: dict[str, Room] = {}
        self._by_booking: dict[str, str] = {}
        self._grace_s = settings.signaling_reconnect_grace_s
        self._idle_s = settings.signaling_idle_timeout_s
        self._rate = float(settings.signaling_messages_per_s)
        self._beat_s = settings.signaling_presence_ttl_s / 3
        self._tick_s = min(tick_s, self._beat_s)
        self._next_beat = 0.0
        self._room_topics = frozenset({Topic.ROOM.value, node_topic(self.node_id)})
        self.fanout: Fanout
        if runtime.redis is not None:
            self.fanout = RedisFanout(
                runtime.redis, runtime.bus, settings.redis_prefix, self.node_id,
                settings.signaling_presence_ttl_s,
            )
        else:
            self.fanout = LocalFanout(self.node_id)
        self._stack = AsyncExitStack()
        self._tasks: set[asyncio.Task[Any]] = set()
        self._attendees = Attendees(runtime, self._spawn)

    async def __aenter__(self) -> Hub:
        topics: list[str] = [
            Topic.CONSENT_CHANGED, Topic.RECORDING_CHANGED, Topic.BOOKING_CANCELLED,
            Topic.SUBJECT_ERASED, Topic.NOTICE_CHANGED, Topic.LINK_REVOKED,
            Topic.BOOKING_UPDATED, Topic.PARTICIPANT_UPDATED,
        ]
        if self.fanout.shared:
            topics += [Topic.ROOM.value, node_topic(self.node_id)]
        subscription = await self._stack.enter_async_context(self._runtime.bus.subscribe(*topics))
        self._spawn(self._listen(subscription))
        self._spawn(self._sweep())
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        for room in list(self.rooms.values()):
            for conn in list(room.local.values()):
                conn.finish(CloseCode.GOING_AWAY, "server shutting down")
            for handle in room.leaving.values():
                handle.cancel()
            if room.deadline is not None:
                room.deadline.cancel()
            with contextlib.suppress(Exception):
                for pid in list(room.local):
                    await self.fanout.absent(room.name, pid)
        await self.fanout.close()
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        await self._stack.aclose()

    def _spawn(self, coro: Coroutine[Any, Any, None]) -> None:
        task = asyncio.get_running_loop().create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    # admission and departure

    async def attach(
        self, transport: Transport, *, room_name: str, booking_id: str, closes_at: datetime,
        peer: Peer, ice_servers: list[IceServer], consent: Iterable[ConsentState] = (),
        recording: Iterable[RecordingState] = (),
    ) -> Connection:
        """Take an admitted socket into its room: welcome it, tell the others if it is new.
        `recording` (what is recorded now, from the database) seeds a room new on this node,
        which heard none of the recorder's events before it existed."""
        room = self.rooms.get(room_name)
        if room is None:
            room = Room(room_name, booking_id, closes_at)
            room.recording.update((state.who, state) for state in recording)
            self.rooms[room_name] = room
            self._by_booking[booking_id] = room_name
            self._set_deadline(room, closes_at)
            for pid, presence in (await self.fanout.members(room_name)).items():
                room.peers.setdefault(pid, presence.peer)
                room.nodes.setdefault(pid, presence.node)
        # Present before welcomed: someone who joins on another node once this person sees
        # the welcome must find them in the presence hash (else their `welcome` would lack
        # this person until the next heartbeat).
        await self.fanout.present([(room_name, peer)])
        for state in consent:  # the ledger at admission is newer than any event missed
            room.consent[(state.who, state.purpose)] = state.decision
        pid = peer.id
        conn = Connection(transport, room_name, peer, self._rate)
        old = room.local.get(pid)
        pending = room.leaving.pop(pid, None)
        known = pid in room.peers
        if pending is not None:
            pending.cancel()
        room.local[pid] = conn
        room.peers[pid] = peer
        room.nodes[pid] = self.node_id
        if old is not None:
            old.finish(ByeReason.REPLACED)
        conn.send(encode(room.welcome(peer, ice_servers, resumed=known)))
        if not known:
            room.broadcast(PeerJoined(peer=peer), exclude=pid)
            self._attendees.joined(room.booking_id, pid)
        await self.fanout.publish(
            {"kind": "join", "room": room_name, "peer": peer.model_dump(), "conn": conn.id}
        )
        return conn

    async def detach(self, conn: Connection) -> None:
        """The socket is gone. A dropped one may come back within the grace period."""
        if conn.ending is None:
            conn.cancel()
        else:  # let the writer send the bye and the close code
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(conn.wait_closed(), 5)
        room = self.rooms.get(conn.room)
        if room is None or room.local.get(conn.peer.id) is not conn:
            return  # replaced, or the room already ended
        pid = conn.peer.id
        del room.local[pid]
        if conn.ending is None and self._grace_s > 0:
            loop = asyncio.get_running_loop()
            room.leaving[pid] = loop.call_later(
                self._grace_s, lambda: self._spawn(self._leave_after_grace(room, pid))
            )
            return
        await self._leave(room, pid, leave_how(conn.ending))

    async def _leave_after_grace(self, room: Room, pid: str) -> None:
        room.leaving.pop(pid, None)
        if pid in room.local or room.nodes.get(pid) != self.node_id:
            return  # came back here, or on another node
        await self._leave(room, pid)

    async def _leave(self, room: Room, pid: str, how: LeaveHow = LeaveHow.DROPPED) -> None:
        if room.nodes.get(pid) == self.node_id:
            room.peers.pop(pid, None)
            room.nodes.pop(pid, None)
            room.broadcast(PeerLeft(id=pid))
            self._attendees.left(room.booking_id, pid, how)
            with contextlib.suppress(Exception):
                await self.fanout.absent(room.name, pid)
                await self.fanout.publish({"kind": "leave", "room": room.name, "id": pid})
        self._drop_if_unused(room)

    def _drop_if_unused(self, room: Room) -> None:
        if not room.local and not room.leaving and self.rooms.get(room.name) is room:
            del self.rooms[room.name]
            self._by_booking.pop(room.booking_id, None)
            if room.deadline is not None:
                room.deadline.cancel()

    def _set_deadline(self, room: Room, closes_at: datetime) -> None:
        """End the room at the window's close to the millisecond, not at the next sweep (the
        sweep still ends it if the clock jumps, as a test's manual clock does)."""
        if room.deadline is not None:
            room.deadline.cancel()
        room.closes_at = closes_at
        delay = (closes_at - self._runtime.clock.now()).total_seconds()
        name = room.name

        def due() -> None:
            if self.rooms.get(name) is not room:
                return
            if self._runtime.clock.now() >= room.closes_at:
                self._spawn(self.end_room(name, ByeReason.WINDOW_CLOSED))
            else:  # the loop's timer ran a little ahead of the wall clock: wait the rest
                self._set_deadline(room, room.closes_at)

        room.deadline = asyncio.get_running_loop().call_later(max(delay, 0.0), due)

    async def end_room(self, room_name: str, reason: ByeReason) -> None:
        """Say `bye` to every socket of the room on this node and close them."""
        room = self.rooms.pop(room_name, None)
        if room is None:
            return
        self._by_booking.pop(room.booking_id, None)
        if room.deadline is not None:
            room.deadline.cancel()
        for handle in room.leaving.values():
            handle.cancel()
        for pid, conn in list(room.local.items()):
            conn.finish(reason)
            with contextlib.suppress(Exception):
                await self.fanout.absent(room.name, pid)

    async def remove(
        self, booking_id: str, participant_id: str, reason: ByeReason = ByeReason.REMOVED
    ) -> None:
        """Put one person out of the room (`bye` with `reason`)."""
        room = self.rooms.get(self._by_booking.get(booking_id, ""))
        conn = room.local.get(participant_id) if room else None
        if conn is not None:
            conn.finish(reason)

    # messages from the browser

    def handle(self, conn: Connection, raw: str) -> Coroutine[Any, Any, None] | None:
        """One message from the browser. Answered here, without a coroutine of its own (this
        runs per relayed message); what is returned (a signal's hop to another node) is for
        the caller to await."""
        if not conn.allow():
            conn.send(encode(Error(code=ErrorCode.RATE_LIMITED, detail="too many messages")))
            conn.finish(CloseCode.POLICY, "rate limit")
            return None
        message = read_client(raw)
        if type(message) is Relay:
            return self._relay(conn, message)
        if isinstance(message, Error):
            conn.send(encode(message))
        elif isinstance(message, Leave):  # deliberate: no reconnect grace
            conn.finish(CloseCode.NORMAL, "left")
        else:
            conn.send(PONG)
        return None

    def _relay(self, conn: Connection, relay: Relay) -> Coroutine[Any, Any, None] | None:
        room = self.rooms.get(conn.room)
        to = relay.to
        if room is None or to == conn.peer.id or to not in room.peers:
            detail = f"no one with id {to!r} is in this room"
            conn.send(encode(Error(code=ErrorCode.UNKNOWN_PEER, detail=detail)))
            return None
        # The relayed message is built once, as text, and never parsed again on its way.
        text = f"{conn.envelope}{relay.payload}}}"
        target = room.local.get(to)
        if target is not None:
            target.send(text)
            return None
        node = room.nodes.get(to)
        if node == self.node_id:
            return None
        if node is None:  # (not known where: every node hears it)
            signal = {"kind": "signal", "room": room.name, "to": to, "text": text}
            return self.fanout.publish(signal)
        return self.fanout.relay(node, room.name, to, text)

    # events from the bus and from other nodes

    async def _listen(self, subscription: Subscription) -> None:
        async for event in subscription:
            try:
                await self._on_event(event)
            except Exception:  # one bad event must not stop signaling
                log.exception("signaling.event_failed", topic=event.topic)

    async def _on_event(self, event: BusEvent) -> None:
        if isinstance(event, RoomFrame):
            data = event.frame
            node = str(data.get("node"))
            if node == self.node_id:
                return
            kind = data.get("kind")
            if kind == "signals":  # relayed signals for sockets here: [room, to, text, ...]
                items, rooms = data["items"], self.rooms
                for index in range(0, len(items) - 2, 3):
                    room = rooms.get(items[index])
                    if room is not None:
                        room.deliver(items[index + 1], items[index + 2])
            elif kind == "batch":  # several in a row from one node (fanout.py)
                for item in data["items"]:
                    self._on_room_event(item, node)
            else:
                self._on_room_event(data, node)
            return
        if isinstance(event, NoticeChanged):  # a material change: the pages ask again
            for booking_id in event.booking_ids:
                changed = self.rooms.get(self._by_booking.get(str(booking_id), ""))
                if changed is not None:
                    changed.broadcast(NoticeChangedMessage(purpose=event.purpose.value))
            return
        if not isinstance(
            event, BookingCancelled | ConsentChanged | RecordingSwitched | TrackRecording
            | SubjectErased | LinkRevoked | ParticipantUpdated | BookingUpdated
        ):
            return
        room = self.rooms.get(self._by_booking.get(str(event.booking_id), ""))
        if room is None:
            return
        if isinstance(event, BookingCancelled):
            await self.end_room(room.name, ByeReason.BOOKING_CANCELLED)
        elif isinstance(event, ConsentChanged):
            room.apply_consent(event)
        elif isinstance(event, RecordingSwitched | TrackRecording):
            room.apply_recording(event)
        elif isinstance(event, SubjectErased):
            # Erasure ended their links; an open call must not outlive them.
            await self.remove(room.booking_id, str(event.subject_id), ByeReason.ERASED)
        elif isinstance(event, LinkRevoked):
            await self.remove(room.booking_id, str(event.participant_id), ByeReason.REVOKED)
        elif isinstance(event, ParticipantUpdated):
            room.rename(str(event.participant_id), event.display_name)
        else:  # rescheduled: the window end moved
            self._set_deadline(room, event.ends_at + self._runtime.settings.join_grace)

    def _on_room_event(self, data: dict[str, Any], node: str) -> None:
        room = self.rooms.get(str(data.get("room")))
        if room is not None and room.on_frame(data, node):
            self._drop_if_unused(room)  # (never while a local socket is being attached)

    # housekeeping: window end, idle sockets, presence heartbeat

    async def _sweep(self) -> None:
        while True:
            await asyncio.sleep(self._tick_s)
            try:
                await self.sweep()
            except Exception:
                log.exception("signaling.sweep_failed")

    async def sweep(self) -> None:
        now = self._runtime.clock.now()
        idle_before = time.monotonic() - self._idle_s
        for room in list(self.rooms.values()):
            if now >= room.closes_at:
                await self.end_room(room.name, ByeReason.WINDOW_CLOSED)
                continue
            for conn in list(room.local.values()):
                if conn.last_seen < idle_before:
                    conn.finish(ByeReason.IDLE)
        if self.fanout.shared and time.monotonic() >= self._next_beat:
            self._next_beat = time.monotonic() + self._beat_s
            await beat(self.fanout, self.rooms, self.node_id, self._gone)

    def _gone(self, room: Room, pid: str) -> None:
        self._attendees.left(room.booking_id, pid)
