"""A booking's consent as the ledger holds it now: the one place its gate state is built.

Both the live gate (`consent.live.LiveGate.ensure_booking`) and the AI jobs' ledger reader
(`summaries.consents.LedgerConsent`) start from `read_snapshot`, so a booking's terms (requested
purposes, policy, cancellation, minors, restrictions) are read the same way everywhere.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass

from sqlalchemy.ext.asyncio import AsyncSession

from consent.gate import BookingConsent, Recorded
from consent.ledger import Entry, booking_entries
from consent.notices import supersessions
from consent.restrictions import restricted_in_booking
from core.bookings import Booking, BookingStatus


@dataclass(frozen=True)
class Snapshot:
    """The gate state of one booking with every ledger entry on it (oldest first)."""

    state: BookingConsent
    entries: list[Entry]


def recorded(entry: Entry) -> Recorded:
    return Recorded(
        entry.seq, entry.subject_id, entry.purpose, entry.decision, entry.at, entry.actor,
        entry.notice_id,
    )


async def read_snapshot(session: AsyncSession, booking_id: uuid.UUID) -> Snapshot | None:
    """The booking's terms and decisions; None if there is no such booking."""
    booking = await session.get(Booking, booking_id)
    if booking is None:
        return None
    entries = await booking_entries(session, booking_id)
    state = BookingConsent(
        booking_id=booking.id,
        requested=booking.purposes,
        policy=booking.recording_policy,
        cancelled=booking.status is BookingStatus.CANCELLED,
        minors=frozenset(p.id for p in booking.participants if not p.adult),
        restricted=await restricted_in_booking(session, booking_id),
        # grants under a notice a material change replaced stop counting when it takes effect
        superseded={
            notice_id: change.effective_at
            for notice_id, change in (
                await supersessions(session, {e.notice_id for e in entries})
            ).items()
        },
    )
    state.record_all(recorded(entry) for entry in entries)
    return Snapshot(state, entries)
