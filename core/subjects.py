"""The contract every domain implements for data-subject rights and retention.

A *subject* is a person as the platform knows them (`external_id`), with every participant
row they have had. Each domain (`media/subjects.py`, `summaries/subjects.py`,
`consent/subjects.py`, `signaling/subjects.py`) exports, erases, deletes by purpose and purges
only its own data; `api/` composes them into a `privacy.service.Privacy`.
"""

from __future__ import annotations

import enum
import uuid
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any, Protocol

import structlog
from sqlalchemy.ext.asyncio import AsyncSession

from core.bookings import Participant
from core.purposes import Purpose

log = structlog.get_logger(__name__)

ERASED_NAME = "Erased participant"


class Category(enum.StrEnum):
    """Data categories with their own retention period."""

    RECORDINGS = "recordings"
    TRANSCRIPTS = "transcripts"
    SUMMARIES = "summaries"
    JOIN_LOGS = "join_logs"
    ATTENDANCE = "attendance"
    BOOKINGS = "bookings"
    CONSENT_LEDGER = "consent_ledger"


@dataclass(frozen=True)
class Subject:
    """One person: their platform id and every participant row (one per booking) in the
    organization whose platform names them."""

    external_id: str
    participants: tuple[Participant, ...]
    org_id: str

    @property
    def participant_ids(self) -> tuple[uuid.UUID, ...]:
        return tuple(p.id for p in self.participants)

    @property
    def booking_ids(self) -> tuple[uuid.UUID, ...]:
        return tuple(dict.fromkeys(p.booking_id for p in self.participants))

    @property
    def names(self) -> tuple[str, ...]:
        return tuple(dict.fromkeys(p.display_name for p in self.participants))


@dataclass(frozen=True)
class JsonLines:
    """A file of the export bundle: one JSON object per line."""

    name: str
    rows: AsyncIterator[dict[str, Any]]


@dataclass(frozen=True)
class Blob:
    """A file of the export bundle given as chunks of bytes (a decrypted recording)."""

    name: str
    chunks: AsyncIterator[bytes]


Part = JsonLines | Blob


@dataclass
class Cleanup:
    """Files to remove once the transaction that dropped their rows has committed."""

    paths: list[Path] = field(default_factory=list)
    after: list[Callable[[], None]] = field(default_factory=list)

    def remove(self, path: Path) -> None:
        self.paths.append(path)

    def run(self) -> int:
        removed = 0
        for path in self.paths:
            try:
                path.unlink(missing_ok=True)
                removed += 1
            except OSError:
                log.warning("privacy.unlink_failed", path=str(path))
        for action in self.after:
            action()
        self.paths, self.after = [], []
        return removed


@dataclass(frozen=True)
class Erasure:
    """What an erasure hands each domain: the tombstone replacing the person's identity."""

    tombstone: str
    at: datetime
    cleanup: Cleanup


@dataclass(frozen=True)
class Cutoff:
    """Retention cut for one category: rows older than `before` (by age) or whose own
    `retain_until` is not after `now` have expired."""

    now: datetime
    before: datetime


class SubjectData(Protocol):
    """A domain's answer for its own data about people."""

    name: str

    def export(self, subject: Subject) -> AsyncIterator[Part]:
        """Everything this domain holds about the person, as bundle files."""
        ...

    async def erase(
        self, session: AsyncSession, subject: Subject, erasure: Erasure
    ) -> dict[str, int]:
        """Erase the person inside the caller's transaction; counts by kind."""
        ...

    async def delete_purpose(
        self, session: AsyncSession, participant: Participant, purpose: Purpose, cleanup: Cleanup
    ) -> dict[str, int]:
        """Delete what was captured of one participant under `purpose` (withdraw-and-delete)."""
        ...

    async def purge(self, category: Category, cutoff: Cutoff, *, dry_run: bool) -> int | None:
        """Delete (or with `dry_run` count) what expired in `category`; None if the category
        is not this domain's."""
        ...
