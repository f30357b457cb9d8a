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
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any, Protocol

import structlog
from sqlalchemy import ColumnElement, Select, SQLColumnExpression, select, true
from sqlalchemy.ext.asyncio import AsyncSession

from core.bookings import Booking, Participant
from core.purposes import Purpose
from core.settings import Settings

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
    WEBHOOK_LOG = "webhook_log"


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


def retention_days(settings: Settings) -> dict[Category, int]:
    """The retention period of each category in days, from (an organization's effective)
    settings."""
    return {
        Category.RECORDINGS: settings.recording_retention_days,
        Category.TRANSCRIPTS: settings.transcript_retention_days
        or settings.summary_retention_days,
        Category.SUMMARIES: settings.summary_retention_days,
        Category.JOIN_LOGS: settings.join_log_retention_days,
        Category.ATTENDANCE: settings.attendance_retention_days,
        Category.BOOKINGS: settings.booking_retention_days,
        Category.CONSENT_LEDGER: settings.ledger_retention_days,
        Category.WEBHOOK_LOG: settings.webhook_log_retention_days,
    }


def periods(settings: Settings) -> dict[Category, timedelta]:
    """The retention period of each category."""
    return {c: timedelta(days=days) for c, days in retention_days(settings).items()}


@dataclass(frozen=True)
class Cutoff:
    """Retention cut for one category: rows older than `before` (by age) or whose own
    `retain_until` is not after `now` have expired.

    Scope: with `orgs`, only those organizations' data; otherwise every organization's but
    the `others` (those with their own period for the category, cut separately). Orgless
    rows (their booking or participant already gone) fall in the latter, the default group.
    With neither, the conditions are the plain ones: no join to bookings at all."""

    now: datetime
    before: datetime
    orgs: frozenset[str] | None = None
    others: frozenset[str] = frozenset()

    @property
    def everywhere(self) -> bool:
        return self.orgs is None and not self.others

    @property
    def sweeps(self) -> bool:
        """Whether this cut also takes what belongs to no organization (orphaned files)."""
        return self.orgs is None

    def of_orgs(self, org_id: SQLColumnExpression[str]) -> ColumnElement[bool]:
        """Rows whose organization column is in scope."""
        if self.orgs is not None:
            return org_id.in_(sorted(self.orgs))
        if self.others:
            return org_id.not_in(sorted(self.others))
        return true()

    def of_bookings(self, booking_id: SQLColumnExpression[uuid.UUID]) -> ColumnElement[bool]:
        """Rows whose booking is in scope (one subquery over the bookings' org index)."""
        if self.everywhere:
            return true()
        return self._member(booking_id, select(Booking.id))

    def of_participants(
        self, participant_id: SQLColumnExpression[uuid.UUID]
    ) -> ColumnElement[bool]:
        """Rows whose participant's booking is in scope."""
        if self.everywhere:
            return true()
        chosen = select(Participant.id).join(Booking, Booking.id == Participant.booking_id)
        return self._member(participant_id, chosen)

    def _member(
        self, column: SQLColumnExpression[uuid.UUID], ids: Select[Any]
    ) -> ColumnElement[bool]:
        if self.orgs is not None:
            return column.in_(ids.where(Booking.org_id.in_(sorted(self.orgs))).scalar_subquery())
        # the complement of the overriding organizations, so orgless rows are in it
        listed = ids.where(Booking.org_id.in_(sorted(self.others))).scalar_subquery()
        return column.not_in(listed)


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
