"""What the ledger says now, for the other domains: the only way they read consent decisions.

The recorder and Egress name the entry that granted a span; the signaling admission shows a
joining page everyone's current decisions. Neither reads the ledger table or compares decision
codes itself: they ask here, so the ledger's shape and vocabulary stay consent's own.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession

from consent.ledger import Entry
from consent.purposes import Decision, Purpose
from core.bus import BusEvent
from core.events import ConsentChanged


@dataclass(frozen=True, slots=True)
class CurrentDecision:
    """The newest decision of one person on one purpose in one booking."""

    subject_id: uuid.UUID
    purpose: Purpose
    decision: Decision


async def granting_entry(
    session: AsyncSession, booking_id: uuid.UUID, subject_id: uuid.UUID, purpose: Purpose
) -> uuid.UUID | None:
    """The id of the newest ledger entry on this person and purpose, if it is a grant."""
    query = (
        select(Entry.id, Entry.decision)
        .where(
            Entry.booking_id == booking_id,
            Entry.subject_id == subject_id,
            Entry.purpose == purpose,
        )
        .order_by(Entry.seq.desc())
        .limit(1)
    )
    found = (await session.execute(query)).first()
    if found is None or found.decision is not Decision.GRANTED:
        return None
    entry_id: uuid.UUID = found.id
    return entry_id


async def booking_decisions(
    session: AsyncSession, booking_id: uuid.UUID
) -> list[CurrentDecision]:
    """The newest decision per person and purpose in one booking (plain column reads: this
    runs once per signaling socket)."""
    query = (
        select(Entry.subject_id, Entry.purpose, Entry.decision)
        .where(Entry.booking_id == booking_id)
        .order_by(Entry.seq)
    )
    latest: dict[tuple[uuid.UUID, Purpose], Decision] = {}
    for row in (await session.execute(query)).all():
        latest[(row.subject_id, row.purpose)] = row.decision
    return [
        CurrentDecision(subject_id, purpose, decision)
        for (subject_id, purpose), decision in latest.items()
    ]


@dataclass(frozen=True, slots=True)
class GrantChange:
    """What a `consent.changed` event means for a recording: whose purpose, and the granting
    entry (None when the decision is not a grant)."""

    booking_id: str
    subject_id: str
    purpose: str
    entry_id: str | None

    @property
    def key(self) -> tuple[str, str, str]:
        return (self.booking_id, self.subject_id, self.purpose)


def grant_change(event: BusEvent) -> GrantChange | None:
    """What a `ConsentChanged` means for a recording (None for any other event)."""
    if not isinstance(event, ConsentChanged):
        return None
    granted = event.decision is Decision.GRANTED
    return GrantChange(
        booking_id=str(event.booking_id),
        subject_id=str(event.subject_id),
        purpose=event.purpose.value,
        entry_id=str(event.entry_id) if granted else None,
    )
