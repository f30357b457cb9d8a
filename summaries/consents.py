"""The consent answer for AI jobs, read from the ledger at the moment a payload is built.

Jobs run after (or well before) a session, often on another process than the live gate, so
they do not use the live gate's memory: they read the booking's ledger entries and ask the
same pure `consent.gate.may` the recorder's gate asks. A grant counts only if `may` says yes
now (which also checks the purposes it requires), and it is cited by its ledger entry id.
"""

from __future__ import annotations

import uuid
from collections.abc import Mapping

from consent.gate import may
from consent.integrity import active_alarm, alarm_key
from consent.purposes import Actor, Decision, Purpose
from consent.snapshot import read_snapshot
from core.clock import Clock
from core.crypto import Keyring
from core.database import Database


class LedgerConsent:
    def __init__(self, db: Database, clock: Clock, keys: Keyring) -> None:
        self._db = db
        self._clock = clock
        self._alarm_key = alarm_key(keys)

    async def grants(self, booking_id: uuid.UUID) -> Mapping[tuple[uuid.UUID, Purpose], uuid.UUID]:
        async with self._db.session() as session:
            if await active_alarm(session, self._alarm_key) is not None:
                return {}  # the ledger was tampered with: no grant counts until acknowledged
            snapshot = await read_snapshot(session, booking_id)
        if snapshot is None:
            return {}
        state = snapshot.state
        granting = {
            (e.subject_id, e.purpose): e.id
            for e in snapshot.entries
            if e.decision is Decision.GRANTED and e.actor is Actor.SUBJECT
        }
        now = self._clock.now()
        return {
            key: entry_id
            for key, entry_id in granting.items()
            if may(key[0], state, key[1], now).allowed
        }
