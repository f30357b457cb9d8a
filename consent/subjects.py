"""The consent ledger under data-subject rights (core.subjects.SubjectData).

Export: every decision about the person with the exact notice text they (or their guardian)
were shown. Erasure changes nothing in the ledger: keeping the proof of consent is a legal
obligation, and its entries name only the pseudonymous participant id, which the erasure cuts
loose from the person (their participant rows get the tombstone). The tombstone is restricted
for good, so the gate never again allows anything for the erased rows. The ledger is
append-only: retention reports expired entries and keeps them.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

from sqlalchemy import delete, func, select
from sqlalchemy.ext.asyncio import AsyncSession

from consent.access import DataRead, get_reads_about
from consent.ledger import Entry, entry_view
from consent.notices import Notice
from consent.restrictions import Restriction
from core.batches import delete_where, table_of
from core.bookings import Participant
from core.purposes import Purpose
from core.runtime import Runtime
from core.subjects import Category, Cleanup, Cutoff, Erasure, JsonLines, Part, Subject


class ConsentSubjects:
    name = "consent"

    def __init__(self, runtime: Runtime) -> None:
        self._rt = runtime

    async def export(self, subject: Subject) -> AsyncIterator[Part]:
        yield JsonLines("consent_decisions.jsonl", self._decisions(subject))
        yield JsonLines("data_reads.jsonl", self._reads(subject))

    async def _reads(self, subject: Subject) -> AsyncIterator[dict[str, Any]]:
        """Their reads of session data, and everyone's reads of theirs."""
        async with self._rt.db.session() as session:
            rows = await get_reads_about(session, subject.participant_ids, subject.booking_ids)
        for row in rows:
            yield row.view()

    async def _decisions(self, subject: Subject) -> AsyncIterator[dict[str, Any]]:
        query = (
            select(Entry, Notice)
            .join(Notice, Notice.id == Entry.notice_id)
            .where(Entry.subject_id.in_(subject.participant_ids))
            .order_by(Entry.seq)
        )
        async with self._rt.db.session() as session:
            rows = list((await session.execute(query)).all())
        for entry, notice in rows:
            yield {
                **entry_view(entry),
                "notice": {
                    "id": str(notice.id),
                    "purpose": notice.purpose.value,
                    "version": notice.version,
                    "language": notice.language,
                    "text": notice.text,
                    "sha256": notice.sha256,
                },
            }

    async def erase(
        self, session: AsyncSession, subject: Subject, erasure: Erasure
    ) -> dict[str, int]:
        kept = await session.scalar(
            select(func.count()).select_from(Entry).where(
                Entry.subject_id.in_(subject.participant_ids)
            )
        )
        await session.execute(
            delete(Restriction).where(
                Restriction.org_id == subject.org_id,
                Restriction.external_id == subject.external_id,
            )
        )
        session.add(Restriction(
            org_id=subject.org_id, external_id=erasure.tombstone, restricted_at=erasure.at
        ))
        return {"ledger_entries_kept": int(kept or 0)}

    async def delete_purpose(
        self, session: AsyncSession, participant: Participant, purpose: Purpose, cleanup: Cleanup
    ) -> dict[str, int]:
        return {}

    async def purge(self, category: Category, cutoff: Cutoff, *, dry_run: bool) -> int | None:
        if category is Category.JOIN_LOGS:  # the read log is an access log like the join log
            table = table_of(DataRead)
            expired = (table.c.at < cutoff.before) & cutoff.of_bookings(table.c.booking_id)
            return await delete_where(self._rt.db, table, expired, dry_run=dry_run)
        if category is not Category.CONSENT_LEDGER:
            return None
        # Append-only (the database refuses DELETE): nothing goes, whatever its age.
        return 0
