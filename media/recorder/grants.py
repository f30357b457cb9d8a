"""Which ledger entry granted a recording: from `consent.changed` events, else from consent.

A recording row names the entry that allowed it. Events carry it as decisions happen; a node
that missed them (it started later) asks consent's API (`consent.state.granting_entry`).
"""

from __future__ import annotations

import uuid

import structlog

from consent.state import grant_change, granting_entry
from core.bus import BusEvent
from core.purposes import Purpose
from core.runtime import Runtime

log = structlog.get_logger("media.recorder")


class GrantEntries:
    """The granting entry per (booking, person, purpose), kept current from the bus."""

    def __init__(self, runtime: Runtime) -> None:
        self._runtime = runtime
        self._entries: dict[tuple[str, str, str], str] = {}

    def on_event(self, event: BusEvent) -> bool:
        """Note a `consent.changed` event; False for any other event."""
        change = grant_change(event)
        if change is None:
            return False
        if change.entry_id is not None:
            self._entries[change.key] = change.entry_id
        else:
            self._entries.pop(change.key, None)
        return True

    async def entries(
        self, booking_id: uuid.UUID, subject_id: uuid.UUID, purpose: Purpose
    ) -> list[str]:
        """The ledger entry that granted this purpose (empty if none does now)."""
        key = (str(booking_id), str(subject_id), purpose.value)
        if key in self._entries:
            return [self._entries[key]]
        try:
            async with self._runtime.db.session() as session:
                found = await granting_entry(session, booking_id, subject_id, purpose)
        except Exception:  # a recording is still worth keeping without the lookup
            log.warning("recorder.ledger_lookup_failed", exc_info=True)
            return []
        return [] if found is None else [str(found)]
