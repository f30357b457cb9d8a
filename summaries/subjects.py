"""AI outputs under data-subject rights (core.subjects.SubjectData).

Export: the person's own transcript segments, the summaries and agendas their words or
consent went into, and the processing-register rows naming them. Erasure deletes their
segments and every summary/agenda they are in, scrubs their name from what others said, and
records the deletions in the register (which keeps only pseudonymous ids). Retention deletes
transcripts and summaries/agendas past their deadline.
"""

from __future__ import annotations

import re
import uuid
from collections.abc import AsyncIterator, Sequence
from typing import Any, cast

from sqlalchemy import delete, or_, select
from sqlalchemy.ext.asyncio import AsyncSession

from core.batches import delete_where, table_of
from core.bookings import Participant
from core.purposes import Purpose
from core.runtime import Runtime
from core.subjects import Category, Cleanup, Cutoff, Erasure, JsonLines, Part, Subject
from summaries.outputs import Agenda, Segment, Summary, Transcript
from summaries.register import Outcome, RegisterEntry, do_register
from summaries.sealing import Sealer

SCRUBBED = "[erased]"


def _names_in(subjects: Sequence[str], ids: Sequence[uuid.UUID]) -> bool:
    wanted = {str(i) for i in ids}
    return any(s in wanted for s in subjects)


class SummariesSubjects:
    name = "summaries"

    def __init__(self, runtime: Runtime) -> None:
        self._rt = runtime

    async def export(self, subject: Subject) -> AsyncIterator[Part]:
        yield JsonLines("transcript_segments.jsonl", self._segments(subject))
        yield JsonLines("summaries.jsonl", self._outputs(subject, Summary))
        yield JsonLines("agendas.jsonl", self._outputs(subject, Agenda))
        yield JsonLines("processing_register.jsonl", self._register(subject))

    async def _segments(self, subject: Subject) -> AsyncIterator[dict[str, Any]]:
        query = (
            select(Segment, Transcript.booking_id, Transcript.language)
            .join(Transcript, Transcript.id == Segment.transcript_id)
            .where(Segment.subject_id.in_(subject.participant_ids))
            .order_by(Transcript.created_at, Segment.position)
        )
        async with self._rt.db.session() as session:
            rows = list((await session.execute(query)).all())
            sealer = Sealer(session, self._rt.keys, self._rt.clock.now())
            texts = [
                await sealer.open_line(segment.transcript_id, segment.subject_id, segment.text)
                for segment, _, _ in rows
            ]
        for (segment, booking_id, language), text in zip(rows, texts, strict=True):
            yield {
                "booking_id": str(booking_id),
                "transcript_id": str(segment.transcript_id),
                "language": language,
                "position": segment.position,
                "participant_id": str(segment.subject_id),
                "start_ms": segment.start_ms,
                "end_ms": segment.end_ms,
                "text": text,
                "consent_entry_ids": list(segment.entry_ids),
            }

    async def _outputs(
        self, subject: Subject, model: type[Summary] | type[Agenda]
    ) -> AsyncIterator[dict[str, Any]]:
        async with self._rt.db.session() as session:
            query = select(model).where(model.booking_id.in_(subject.booking_ids))
            found = cast("list[Summary | Agenda]", list((await session.execute(query)).scalars()))
            rows = [r for r in found if _names_in(r.subjects, subject.participant_ids)]
            sealer = Sealer(session, self._rt.keys, self._rt.clock.now())
            contents = [
                await sealer.open_summary(r.id, r.body) if isinstance(r, Summary)
                else {"items": r.items}
                for r in rows
            ]
        for row, content in zip(rows, contents, strict=True):
            yield {
                "id": str(row.id),
                "booking_id": str(row.booking_id),
                "purpose": row.purpose.value,
                "language": row.language,
                "content": content,
                "consent_entry_ids": list(row.entry_ids),
                "created_at": row.created_at.isoformat(),
                "retain_until": row.retain_until.isoformat(),
            }

    async def _register(self, subject: Subject) -> AsyncIterator[dict[str, Any]]:
        async with self._rt.db.session() as session:
            query = (
                select(RegisterEntry)
                .where(RegisterEntry.booking_id.in_(subject.booking_ids))
                .order_by(RegisterEntry.at)
            )
            rows = [
                r for r in (await session.execute(query)).scalars()
                if _names_in(r.subjects, subject.participant_ids)
            ]
        for row in rows:
            yield row.view()

    async def erase(
        self, session: AsyncSession, subject: Subject, erasure: Erasure
    ) -> dict[str, int]:
        ids = set(subject.participant_ids)
        result = await session.execute(
            delete(Segment).where(Segment.subject_id.in_(ids)).returning(Segment.transcript_id)
        )
        transcripts = list(result.scalars())
        counts = {"transcript_segments_deleted": len(transcripts)}
        touched: dict[uuid.UUID, set[uuid.UUID]] = {}
        for model, key in ((Summary, "summaries_deleted"), (Agenda, "agendas_deleted")):
            query = select(model.id, model.booking_id, model.subjects).where(
                model.booking_id.in_(subject.booking_ids)
            )
            doomed = [
                (row_id, booking_id) for row_id, booking_id, subjects in
                (await session.execute(query)).all()
                if _names_in(subjects, subject.participant_ids)
            ]
            if doomed:
                await session.execute(delete(model).where(model.id.in_([d for d, _ in doomed])))
            for _, booking_id in doomed:
                touched.setdefault(booking_id, set())
            counts[key] = len(doomed)
        if transcripts:
            owners = select(Transcript.booking_id).where(Transcript.id.in_(set(transcripts)))
            for booking_id in (await session.execute(owners)).scalars():
                touched.setdefault(booking_id, set())
        by_booking = {p.booking_id: p.id for p in subject.participants}
        for booking_id in touched:
            self._deleted(session, booking_id, by_booking[booking_id], Purpose.TRANSCRIPTION,
                          "erasure: the person's words and the outputs made from them")
        counts["segments_scrubbed"] = await self._scrub(session, subject)
        return counts

    def _deleted(
        self, session: AsyncSession, booking_id: uuid.UUID, subject_id: uuid.UUID,
        purpose: Purpose, detail: str,
    ) -> None:
        do_register(
            session, at=self._rt.clock.now(), booking_id=booking_id, job_id=None,
            purpose=purpose, subjects=[subject_id], categories=["speech_text"], entry_ids=[],
            provider="callgate", model="", endpoint="", input_bytes=0, outcome=Outcome.DELETED,
            detail=f"data-subject request: {detail}",
        )

    async def _delete_words(
        self, session: AsyncSession, participant: Participant, *, include_agendas: bool,
        segments: bool = True, summaries: bool = True,
    ) -> dict[str, int]:
        booking_id, subject_id = participant.booking_id, participant.id
        counts: dict[str, int] = {}
        if segments:
            in_booking = select(Transcript.id).where(Transcript.booking_id == booking_id)
            result = await session.execute(
                delete(Segment).where(
                    Segment.subject_id == subject_id,
                    Segment.transcript_id.in_(in_booking.scalar_subquery()),
                )
            )
            counts["transcript_segments_deleted"] = int(getattr(result, "rowcount", 0) or 0)
        models: list[type[Summary] | type[Agenda]] = []
        if summaries:
            models.append(Summary)
        if include_agendas:
            models.append(Agenda)
        for model in models:
            rows = cast(
                "list[Summary | Agenda]",
                list(
                    (
                        await session.execute(select(model).where(model.booking_id == booking_id))
                    ).scalars()
                ),
            )
            doomed = [r.id for r in rows if str(subject_id) in r.subjects]
            if doomed:
                await session.execute(delete(model).where(model.id.in_(doomed)))
            key = "summaries_deleted" if model is Summary else "agendas_deleted"
            counts[key] = len(doomed)
        if any(counts.values()):
            detail = ", ".join(f"{k.replace('_deleted', '')}: {v}" for k, v in counts.items())
            self._deleted(session, booking_id, subject_id, Purpose.TRANSCRIPTION,
                          f"withdrawn, deleted {detail}")
        return counts

    async def _scrub(self, session: AsyncSession, subject: Subject) -> int:
        """Others' words that name the person: the name becomes "[erased]"."""
        names = [n for n in subject.names if n.strip()]
        if not names:
            return 0
        pattern = re.compile("|".join(re.escape(n) for n in names), re.IGNORECASE)
        query = (
            select(Segment)
            .join(Transcript, Transcript.id == Segment.transcript_id)
            .where(Transcript.booking_id.in_(subject.booking_ids))
        )
        scrubbed = 0
        sealer = Sealer(session, self._rt.keys, self._rt.clock.now())
        for segment in (await session.execute(query)).scalars():
            said = await sealer.open_line(segment.transcript_id, segment.subject_id, segment.text)
            if said is None:
                continue
            text = pattern.sub(SCRUBBED, said)
            if text != said:
                segment.text = await sealer.seal_line(
                    segment.transcript_id, segment.subject_id, text
                )
                scrubbed += 1
        return scrubbed

    async def delete_purpose(
        self, session: AsyncSession, participant: Participant, purpose: Purpose, cleanup: Cleanup
    ) -> dict[str, int]:
        if purpose is Purpose.TRANSCRIPTION:
            return await self._delete_words(session, participant, include_agendas=False)
        if purpose is Purpose.AI_SUMMARY:
            return await self._delete_words(
                session, participant, include_agendas=False, segments=False
            )
        if purpose is Purpose.AI_AGENDA:
            return await self._delete_words(
                session, participant, include_agendas=True, segments=False, summaries=False
            )
        return {}

    async def purge(self, category: Category, cutoff: Cutoff, *, dry_run: bool) -> int | None:
        db = self._rt.db
        if category is Category.TRANSCRIPTS:
            table = table_of(Transcript)
            expired = or_(table.c.retain_until <= cutoff.now, table.c.created_at < cutoff.before)
            expired = expired & cutoff.of_bookings(table.c.booking_id)
            return await delete_where(db, table, expired, dry_run=dry_run, batch=500)
        if category is Category.SUMMARIES:
            total = 0
            for model in (Summary, Agenda):
                table = table_of(model)
                expired = or_(
                    table.c.retain_until <= cutoff.now, table.c.created_at < cutoff.before
                ) & cutoff.of_bookings(table.c.booking_id)
                total += await delete_where(db, table, expired, dry_run=dry_run)
            return total
        return None
