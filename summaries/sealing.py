"""Transcript lines and summaries encrypted at rest under the people's own data keys.

A transcript line is sealed under its speaker's data key (media's per-person key, the one
their recordings are under). A summary mixes the words of every speaker in it and cannot be
split by person, so it is sealed under a key of its own, split into n-of-n shares, one sealed
under each speaker's data key: reading it needs every speaker's key, so destroying any one of
them (erasure) leaves the whole summary unreadable, wherever a copy of the row survives.
Rows written before sealing existed (plain text) are still read as they are.
"""

from __future__ import annotations

import json
import uuid
from datetime import datetime
from typing import Any

from cryptography.exceptions import InvalidTag
from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession

from core.bookings import Participant
from core.crypto import Keyring, is_sealed, join_key, seal, split_key, unseal
from core.datakeys import access_data_key
from core.errors import Gone


def _line_context(transcript_id: uuid.UUID, subject_id: uuid.UUID) -> str:
    return f"transcript-line:{transcript_id}:{subject_id}"


def _summary_context(summary_id: uuid.UUID) -> str:
    return f"summary:{summary_id}"


def _share_context(summary_id: uuid.UUID, subject: str) -> str:
    return f"summary-share:{summary_id}:{subject}"


class Sealer:
    """Seals and opens one booking's outputs inside the caller's session; each person's key
    is unwrapped once. A person whose key was destroyed (erased) has nothing readable."""

    def __init__(self, session: AsyncSession, keys: Keyring, now: datetime) -> None:
        self._session = session
        self._keys = keys
        self._now = now
        self._cache: dict[uuid.UUID, bytes | None] = {}

    async def _key(self, participant_id: uuid.UUID) -> bytes | None:
        if participant_id not in self._cache:
            external = await self._session.scalar(
                select(Participant.external_id).where(Participant.id == participant_id)
            )
            key: bytes | None = None
            if external is not None:
                try:
                    key = await access_data_key(self._session, self._keys, external, self._now)
                except Gone:
                    key = None
            self._cache[participant_id] = key
        return self._cache[participant_id]

    async def _required(self, participant_id: uuid.UUID) -> bytes:
        key = await self._key(participant_id)
        if key is None:
            raise Gone(f"the data key of {participant_id} was destroyed (erased)")
        return key

    async def seal_line(self, transcript_id: uuid.UUID, subject_id: uuid.UUID, text: str) -> str:
        key = await self._required(subject_id)
        return seal(key, text.encode(), _line_context(transcript_id, subject_id))

    async def open_line(
        self, transcript_id: uuid.UUID, subject_id: uuid.UUID, stored: str
    ) -> str | None:
        """The line's text; None when it can no longer be read (its speaker erased)."""
        if not is_sealed(stored):
            return stored
        key = await self._key(subject_id)
        if key is None:
            return None
        try:
            return unseal(key, stored, _line_context(transcript_id, subject_id)).decode()
        except InvalidTag:
            return None

    async def seal_summary(
        self, summary_id: uuid.UUID, subjects: list[str], body: dict[str, Any]
    ) -> dict[str, Any]:
        """The stored form of a summary: the body under its own key, and one share of that
        key per speaker under the speaker's data key."""
        if not subjects:
            raise ValueError("a summary is made from somebody's words")
        key = Keyring.new_data_key()
        shares = split_key(key, len(subjects))
        sealed_shares = {}
        for subject, share in zip(subjects, shares, strict=True):
            owner = await self._required(uuid.UUID(subject))
            sealed_shares[subject] = seal(owner, share, _share_context(summary_id, subject))
        plaintext = json.dumps(body, separators=(",", ":")).encode()
        return {"sealed": seal(key, plaintext, _summary_context(summary_id)),
                "shares": sealed_shares}

    async def open_summary(
        self, summary_id: uuid.UUID, stored: dict[str, Any]
    ) -> dict[str, Any] | None:
        """The summary's body; None when any speaker's key is gone."""
        if "sealed" not in stored:
            return stored  # written before outputs were sealed
        shares = []
        for subject, sealed_share in dict(stored["shares"]).items():
            owner = await self._key(uuid.UUID(subject))
            if owner is None:
                return None
            try:
                shares.append(unseal(owner, sealed_share, _share_context(summary_id, subject)))
            except InvalidTag:
                return None
        try:
            plaintext = unseal(join_key(shares), stored["sealed"], _summary_context(summary_id))
        except InvalidTag:
            return None
        body: dict[str, Any] = json.loads(plaintext)
        return body
