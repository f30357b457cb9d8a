"""The live gate: the consent answer for sessions in progress, kept in memory.

The recorder asks for every frame, so `allows()` is synchronous and reads only memory. The
memory is loaded from the ledger (`ensure_booking`) and kept current from `consent.changed`
on the bus. Bus delivery is at-most-once, so on every (re)subscription the loaded bookings are
read again from the ledger. While the bus or the database cannot be confirmed (subscription
lost, health check failed or overdue) every answer is **no**, and `explain()` says why.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import Callable
from datetime import datetime
from types import TracebackType

import structlog

from consent.checkpoints import Signer
from consent.gate import BookingConsent, Reason, Recorded, Verdict, may
from consent.integrity import IntegrityWatch
from consent.notices import seed_all_notices
from consent.purposes import Purpose
from consent.snapshot import read_snapshot
from consent.writer import ledger_writer
from core.bus import BusEvent, Topic
from core.events import (
    BookingChanged,
    ConsentChanged,
    NoticeChanged,
    ParticipantJoined,
    ParticipantLeft,
    ParticipantUpdated,
    SubjectErased,
    SubjectRestricted,
)
from core.runtime import Runtime
from core.tasks import stop_tasks

log = structlog.get_logger(__name__)

WATCHED = (
    Topic.CONSENT_CHANGED.value,
    Topic.NOTICE_CHANGED.value,  # a material change: the affected bookings are read again
    Topic.PARTICIPANT_JOINED.value,
    Topic.PARTICIPANT_LEFT.value,
    Topic.BOOKING_UPDATED.value,
    Topic.BOOKING_CANCELLED.value,
    Topic.SUBJECT_RESTRICTED.value,  # privacy: (un)restricted; the booking is read again
    Topic.SUBJECT_ERASED.value,
    Topic.PARTICIPANT_UPDATED.value,  # an age band corrected: the guardian rule is read again
)


ChangeListener = Callable[[ConsentChanged], None]


class LiveGate:
    """Consent answers for live sessions; enter it on the app lifespan (`async with`)."""

    def __init__(
        self,
        runtime: Runtime,
        *,
        health_interval_s: float = 2.0,
        retry_s: float = 1.0,
    ) -> None:
        self._rt = runtime
        self._health_interval = health_interval_s
        self._retry_s = retry_s
        self._bookings: dict[uuid.UUID, BookingConsent] = {}
        self._subscribed = False
        self._db_ok = False
        self._checked_at: float | None = None  # time.monotonic() of the last good check
        self._why = "the consent gate has not started"
        self._tasks: list[asyncio.Task[None]] = []
        self._loading: dict[uuid.UUID, asyncio.Task[None]] = {}
        self.signer = Signer.from_keyring(runtime.keys)
        self.integrity = IntegrityWatch(runtime, self.signer)
        self.writer = ledger_writer(runtime)  # this process's group commit
        self.writer.watch(self.integrity.witness.saw)
        self._seeded = False
        self._listeners: list[ChangeListener] = []

    def watch(self, listener: ChangeListener) -> None:
        """Call `listener(event)` right after a decision is applied here, before the next
        event, so capture stops within the same step that taught the gate (a capture with its
        own subscription could hear of the change before the gate and still be told yes)."""
        self._listeners.append(listener)

    def unwatch(self, listener: ChangeListener) -> None:
        if listener in self._listeners:
            self._listeners.remove(listener)

    # -- lifecycle --------------------------------------------------------------------------

    async def __aenter__(self) -> LiveGate:
        await self._seed()
        self._tasks = [
            asyncio.create_task(self._listen(), name="consent-gate-listen"),
            asyncio.create_task(self._watch_health(), name="consent-gate-health"),
            asyncio.create_task(self.integrity.run(), name="consent-ledger-integrity"),
        ]
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()

    async def close(self) -> None:
        tasks = self._tasks + list(self._loading.values())
        self._tasks, self._loading = [], {}
        await stop_tasks(tasks)
        await self.writer.close()
        self._subscribed = False
        self._why = "the consent gate is closed"

    # -- answers ----------------------------------------------------------------------------

    @property
    def healthy(self) -> bool:
        return self._problem() is None

    def _problem(self) -> str | None:
        if self.integrity.standing is not None:  # fail closed until an admin acknowledges
            return self.integrity.standing.sentence()
        if not self._subscribed:
            return self._why
        if not self._db_ok or self._checked_at is None:
            return self._why
        if time.monotonic() - self._checked_at > self._health_interval * 3 + 5:
            return "the consent gate's health check is overdue"
        return None

    def explain(
        self,
        booking_id: uuid.UUID,
        subject_id: uuid.UUID,
        purpose: Purpose,
        at: datetime | None = None,
    ) -> Verdict:
        """The answer with its reason; never raises, never yes while anything is unconfirmed."""
        standing = self.integrity.standing
        if standing is not None:
            return Verdict(False, Reason.TAMPERED, standing.sentence())
        problem = self._problem()
        if problem is not None:
            return Verdict(False, Reason.UNHEALTHY, problem)
        state = self._bookings.get(booking_id)
        if state is None:
            self._load_soon(booking_id)
            return Verdict(False, Reason.NOT_LOADED, "call ensure_booking() first")
        return may(subject_id, state, purpose, at or self._rt.clock.now())

    def allows(self, booking_id: uuid.UUID, subject_id: uuid.UUID, purpose: Purpose) -> bool:
        return self.explain(booking_id, subject_id, purpose).allowed

    # -- state ------------------------------------------------------------------------------

    async def ensure_booking(self, booking_id: uuid.UUID) -> None:
        """Load (or reload) a booking's terms and every decision on it from the ledger."""
        async with self._rt.db.session() as session:
            snapshot = await read_snapshot(session, booking_id)
        if snapshot is None:
            return
        state = snapshot.state
        old = self._bookings.get(booking_id)
        if old is not None:
            state.present = old.present
            state.record_all(item for items in old.history.values() for item in items)
        self._bookings[booking_id] = state

    def forget_booking(self, booking_id: uuid.UUID) -> None:
        self._bookings.pop(booking_id, None)

    def joined(self, booking_id: uuid.UUID, subject_id: uuid.UUID) -> None:
        """Someone entered the room (all_or_nothing counts them from now on)."""
        state = self._bookings.get(booking_id)
        if state is not None:
            state.present.add(subject_id)

    def left(self, booking_id: uuid.UUID, subject_id: uuid.UUID) -> None:
        state = self._bookings.get(booking_id)
        if state is not None:
            state.present.discard(subject_id)

    def present(self, booking_id: uuid.UUID) -> frozenset[uuid.UUID]:
        state = self._bookings.get(booking_id)
        return frozenset(state.present) if state is not None else frozenset()

    def _load_soon(self, booking_id: uuid.UUID) -> None:
        if booking_id in self._loading:
            return
        try:
            task = asyncio.get_running_loop().create_task(self._load(booking_id))
        except RuntimeError:  # asked from a thread without a loop: the caller must load
            return
        self._loading[booking_id] = task

    async def _load(self, booking_id: uuid.UUID) -> None:
        try:
            await self.ensure_booking(booking_id)
        except Exception:
            log.warning("consent_gate.load_failed", booking_id=str(booking_id))
        finally:
            self._loading.pop(booking_id, None)

    # -- background -------------------------------------------------------------------------

    async def _listen(self) -> None:
        while True:
            try:
                async with self._rt.bus.subscribe(*WATCHED) as subscription:
                    # Subscribed first, then re-read: nothing published in between is lost.
                    for booking_id in list(self._bookings):
                        await self.ensure_booking(booking_id)
                    self._subscribed = True
                    async for event in subscription:
                        await self._apply(event)
                self._lost("the bus subscription ended")
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                self._lost(f"the bus cannot be reached ({type(exc).__name__})")
            await asyncio.sleep(self._retry_s)

    def _lost(self, why: str) -> None:
        self._subscribed = False
        self._why = why
        log.warning("consent_gate.fail_closed", why=why)

    async def _apply(self, event: BusEvent) -> None:
        if isinstance(event, NoticeChanged):
            for booking_id in event.booking_ids:
                if booking_id in self._bookings:
                    await self.ensure_booking(booking_id)
        elif isinstance(event, ConsentChanged):
            state = self._bookings.get(event.booking_id)
            if state is not None:
                state.record(recorded_from_event(event))
                self._tell(event)
        elif isinstance(event, ParticipantJoined):
            self.joined(event.booking_id, event.participant_id)
        elif isinstance(event, ParticipantLeft):
            self.left(event.booking_id, event.participant_id)
        elif (
            isinstance(
                event, BookingChanged | SubjectErased | SubjectRestricted | ParticipantUpdated
            )
            and event.booking_id in self._bookings
        ):
            await self.ensure_booking(event.booking_id)

    def _tell(self, event: ConsentChanged) -> None:
        for listener in list(self._listeners):
            try:
                listener(event)
            except Exception:  # one listener's failure must not stop the gate's updates
                log.exception("consent_gate.listener_failed")

    async def check_health(self) -> bool:
        """Confirm the database and the bus answer; fail closed until they do."""
        try:
            await self._rt.db.ping()
        except Exception as exc:
            self._db_ok, self._why = False, f"the database cannot be reached ({type(exc).__name__})"
            return False
        try:
            await self._rt.bus.ping()
        except Exception as exc:
            self._db_ok, self._why = False, f"the bus cannot be reached ({type(exc).__name__})"
            return False
        self._db_ok, self._checked_at = True, time.monotonic()
        if not self._seeded:
            await self._seed()
        return self.healthy

    async def _seed(self) -> None:
        """Publish the default/operator notices; retried by the health check until it worked
        (a database outage must not stop start-up, nor leave people without a notice)."""
        try:
            await seed_all_notices(self._rt.db, self._rt.settings, self._rt.clock.now())
        except Exception:
            log.warning("consent_gate.seed_failed")
            return
        self._seeded = True

    async def _watch_health(self) -> None:
        while True:
            await self.check_health()
            await asyncio.sleep(self._health_interval)

    async def checkpoint_if_due(self) -> bool:
        """Sign the head when the last checkpoint is older than the interval and the chain
        has grown since (refused while tampering stands); True when a checkpoint was made."""
        return await self.integrity.checkpoint_if_due(self._rt.clock.now())


def recorded_from_event(event: ConsentChanged) -> Recorded:
    return Recorded(
        seq=event.seq,
        subject_id=event.subject_id,
        purpose=event.purpose,
        decision=event.decision,
        at=event.at,
        actor=event.actor,
        notice_id=event.notice_id,
    )
