"""Data-subject requests and retention over the domains' `SubjectData`.

`Privacy` finds a person by their platform id, streams their export bundle (logged first),
erases them in one transaction across every domain (files unlinked after commit, then
`subject.erased` per booking), restricts or frees their processing (`subject.restricted`),
withdraws a consent and deletes what was captured under it, and runs the retention purge
(each organization's data by its own periods): periodically while entered on a lifespan, or
once from `callgate retention run`.

Size (about 425 lines): the requests and the retention run share the domain list and
the one-transaction erasure; they change together.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator, Sequence
from datetime import datetime, timedelta
from itertools import chain
from types import TracebackType
from typing import Any

import structlog
from sqlalchemy import delete, func, or_, select, update

from consent.decisions import DecisionRequest, do_decide
from consent.ledger import count_before, entry_view
from consent.notices import current_notice
from consent.purposes import Decision, Method, Purpose
from consent.restrictions import Restriction, get_restriction
from consent.writer import ledger_writer
from core.bookings import TOMBSTONE_PREFIX, Booking, Participant
from core.bus import publish_all
from core.errors import NotFound
from core.events import SubjectErased, SubjectRestricted
from core.organizations import effective_settings, get_orgs, org_settings
from core.outbox import SubjectErased as ErasedOut
from core.outbox import do_write
from core.runtime import Runtime
from core.subjects import (
    Category,
    Cleanup,
    Cutoff,
    Erasure,
    JsonLines,
    Part,
    Subject,
    SubjectData,
    periods,
    retention_days,
)
from core.tasks import stop_tasks
from privacy.bundle import zip_stream
from privacy.records import (
    ErasureRecord,
    ExportRecord,
    RetentionRun,
    Trigger,
    WithdrawalRecord,
)

log = structlog.get_logger(__name__)

RETENTION_LOCK = "privacy:retention"


class Privacy:
    """Enter on the lifespan (`async with`) for the periodic purge; reachable as
    `api.services.Services.privacy`. The domains are given in erasure order (identity last)."""

    def __init__(
        self, runtime: Runtime, domains: Sequence[SubjectData], *, periodic: bool = True
    ) -> None:
        self._rt = runtime
        self.domains = list(domains)
        self._periodic = periodic
        self._task: asyncio.Task[None] | None = None

    async def __aenter__(self) -> Privacy:
        if self._periodic and self._rt.settings.retention_interval_s > 0:
            self._task = asyncio.create_task(self._purge_periodically(), name="retention")
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        task, self._task = self._task, None
        await stop_tasks([task])

    # -- who ------------------------------------------------------------------------------

    async def access_subject(self, external_id: str, org_id: str) -> Subject:
        """The person and all their participant rows in the organization's bookings;
        NotFound when it holds none (another organization's people are not found)."""
        query = (
            select(Participant)
            .join(Booking, Booking.id == Participant.booking_id)
            .where(Participant.external_id == external_id, Booking.org_id == org_id)
            .order_by(Participant.created_at, Participant.id)
        )
        async with self._rt.db.session() as session:
            rows = tuple((await session.execute(query)).scalars())
        if not rows:
            raise NotFound("callgate holds nothing about this external id")
        return Subject(external_id, rows, org_id)

    async def search(self, q: str, org_id: str, limit: int = 50) -> list[dict[str, Any]]:
        """People of the organization whose external id or display name contains `q`
        (case-insensitive)."""
        wanted = q.strip().lower()
        query = (
            select(Participant.external_id, Participant.display_name, Booking.starts_at)
            .join(Booking, Booking.id == Participant.booking_id)
            .where(
                Booking.org_id == org_id,
                or_(  # `%` and `_` in the query are literal characters
                    func.lower(Participant.external_id).contains(wanted, autoescape=True),
                    func.lower(Participant.display_name).contains(wanted, autoescape=True),
                )
            )
            .order_by(Participant.external_id, Booking.starts_at)
            .limit(limit * 20)
        )
        async with self._rt.db.session() as session:
            rows = list((await session.execute(query)).all())
            ids = list(dict.fromkeys(external for external, _, _ in rows))[:limit]
            restricted = set(
                (
                    await session.execute(
                        select(Restriction.external_id).where(
                            Restriction.org_id == org_id, Restriction.external_id.in_(ids)
                        )
                    )
                ).scalars()
            )
        people: dict[str, dict[str, Any]] = {}
        for external, name, starts_at in rows:
            if external not in ids:
                continue
            person = people.setdefault(
                external,
                {
                    "external_id": external,
                    "display_names": [],
                    "bookings": 0,
                    "last_booking_at": None,
                    "restricted": external in restricted,
                    "erased": external.startswith(TOMBSTONE_PREFIX),
                },
            )
            if name not in person["display_names"]:
                person["display_names"].append(name)
            person["bookings"] += 1
            person["last_booking_at"] = starts_at.isoformat()
        return list(people.values())

    # -- access and portability -----------------------------------------------------------

    async def do_export(
        self, external_id: str, org_id: str, api_key_id: str | None
    ) -> tuple[uuid.UUID, AsyncIterator[bytes]]:
        """Log the export, then its bundle as a ZIP stream (JSON Lines plus recordings)."""
        subject = await self.access_subject(external_id, org_id)
        now = self._rt.clock.now()
        record = ExportRecord(id=uuid.uuid4(), at=now, org_id=org_id, external_id=external_id,
                              api_key_id=api_key_id)
        async with self._rt.db.session() as session:
            session.add(record)
        log.info("privacy.exported", export_id=str(record.id))
        return record.id, zip_stream(self._parts(subject, record.id), now)

    async def _parts(self, subject: Subject, export_id: uuid.UUID) -> AsyncIterator[Part]:
        yield JsonLines("subject.jsonl", self._about(subject, export_id))
        for domain in self.domains:
            async for part in domain.export(subject):
                yield part

    async def _about(
        self, subject: Subject, export_id: uuid.UUID
    ) -> AsyncIterator[dict[str, Any]]:
        async with self._rt.db.session() as session:
            restriction = await get_restriction(session, subject.org_id, subject.external_id)
            withdrawals = (
                await session.execute(
                    select(WithdrawalRecord)
                    .where(WithdrawalRecord.participant_id.in_(subject.participant_ids))
                    .order_by(WithdrawalRecord.at)
                )
            ).scalars()
            views = [w.view() for w in withdrawals]
            exports = (
                await session.execute(
                    select(ExportRecord.at).where(
                        ExportRecord.org_id == subject.org_id,
                        ExportRecord.external_id == subject.external_id,
                    )
                )
            ).scalars()
            export_times = sorted(at.isoformat() for at in exports)
        yield {
            "export_id": str(export_id),
            "generated_at": self._rt.clock.now().isoformat(),
            "external_id": subject.external_id,
            "display_names": list(subject.names),
            "participant_ids": [str(p) for p in subject.participant_ids],
            "restricted_since": restriction.restricted_at.isoformat() if restriction else None,
            "withdrawals_with_deletion": views,
            "exports": export_times,
        }

    # -- erasure --------------------------------------------------------------------------

    async def do_erase(
        self, external_id: str, org_id: str, api_key_id: str | None
    ) -> dict[str, Any]:
        """Erase the person everywhere in one transaction; files go after it commits."""
        subject = await self.access_subject(external_id, org_id)
        now = self._rt.clock.now()
        erasure = Erasure(f"{TOMBSTONE_PREFIX}{uuid.uuid4().hex}", now, Cleanup())
        counts: dict[str, Any] = {}
        async with self._rt.db.session() as session:
            for domain in self.domains:
                counts[domain.name] = await domain.erase(session, subject, erasure)
            await session.execute(
                update(ExportRecord)
                .where(ExportRecord.org_id == org_id, ExportRecord.external_id == external_id)
                .values(external_id=erasure.tombstone)
            )
            record = ErasureRecord(id=uuid.uuid4(), at=now, tombstone=erasure.tombstone,
                                   api_key_id=api_key_id, counts=counts)
            session.add(record)
            do_write(session, ErasedOut(subject.participant_ids, now), now, org_id=org_id)
        counts["files_removed"] = await asyncio.to_thread(erasure.cleanup.run)
        await self._rt.db.checkpoint()  # SQLite: the zeroed pages replace the WAL's copies
        events = [
            SubjectErased(booking_id=p.booking_id, subject_id=p.id, tombstone=erasure.tombstone)
            for p in subject.participants
        ]
        await publish_all(self._rt.bus, events)
        log.info("privacy.erased", erasure_id=str(record.id), tombstone=erasure.tombstone)
        return {**record.view(), "counts": counts}

    # -- restriction ----------------------------------------------------------------------

    async def do_restrict(
        self, external_id: str, org_id: str, restricted: bool, api_key_id: str | None
    ) -> dict[str, Any]:
        """Freeze (or free) all processing of the person; the gate reads it at once."""
        subject = await self.access_subject(external_id, org_id)
        now = self._rt.clock.now()
        async with self._rt.db.session() as session:
            row = await get_restriction(session, org_id, external_id)
            if restricted and row is None:
                row = Restriction(org_id=org_id, external_id=external_id, restricted_at=now,
                                  api_key_id=api_key_id)
                session.add(row)
            if not restricted and row is not None:
                await session.execute(
                    delete(Restriction).where(
                        Restriction.org_id == org_id, Restriction.external_id == external_id
                    )
                )
                row = None
        events = [
            SubjectRestricted(booking_id=p.booking_id, subject_id=p.id, restricted=restricted)
            for p in subject.participants
        ]
        await publish_all(self._rt.bus, events)
        log.info("privacy.restriction", restricted=restricted, bookings=len(events))
        return {
            "external_id": external_id,
            "restricted": row is not None,
            "restricted_at": row.restricted_at.isoformat() if row is not None else None,
        }

    # -- withdraw and delete --------------------------------------------------------------

    async def do_withdraw_and_delete(
        self, participant_id: uuid.UUID, purpose: Purpose
    ) -> dict[str, Any]:
        """Withdraw `purpose` on the ledger (as shown: the current notice), then delete what
        was captured of this participant under it; both logged."""
        async with self._rt.db.session() as session:
            participant = await session.get(Participant, participant_id)
            if participant is None:
                raise NotFound("this join link is not valid")
            notice = await current_notice(
                session, purpose, participant.booking.language, participant.booking.org_id
            )
        request = DecisionRequest(purpose, Decision.WITHDRAWN, notice.sha256,
                                  method=Method.WEB_DIALOG)
        entry = await do_decide(
            ledger_writer(self._rt), self._rt.bus, participant_id, request, self._rt.clock.now()
        )
        cleanup = Cleanup()
        counts: dict[str, int] = {}
        async with self._rt.db.session() as session:
            for domain in self.domains:
                for key, value in (
                    await domain.delete_purpose(session, participant, purpose, cleanup)
                ).items():
                    counts[key] = counts.get(key, 0) + value
            record = WithdrawalRecord(
                id=uuid.uuid4(), at=self._rt.clock.now(), booking_id=participant.booking_id,
                participant_id=participant.id, purpose=purpose, entry_id=entry.id, counts=counts,
            )
            session.add(record)
        await asyncio.to_thread(cleanup.run)
        log.info("privacy.withdrawn_and_deleted", withdrawal_id=str(record.id),
                 purpose=purpose.value, **counts)
        return {"entry": entry_view(entry), "withdrawal": record.view()}

    # -- retention ------------------------------------------------------------------------

    async def cutoffs(
        self, now: datetime, org_id: str | None = None
    ) -> dict[Category, list[Cutoff]]:
        """Each category's cuts. With `org_id`, that organization's alone; otherwise one per
        distinct period: the organizations with a period of their own in groups, and all the
        rest (orgless rows too) by the deployment's, so each domain purges with one statement
        per group, and with the plain one while no organization overrides the category."""
        settings = self._rt.settings
        async with self._rt.db.session() as session:
            orgs = await get_orgs(session)
        own = {org.id: periods(effective_settings(settings, org)) for org in orgs}
        default = periods(settings)
        if org_id is not None:
            mine = own.get(org_id, default)
            only = frozenset({org_id})
            return {c: [Cutoff(now, now - p, orgs=only)] for c, p in mine.items()}
        out: dict[Category, list[Cutoff]] = {}
        for category, period in default.items():
            groups: dict[timedelta, set[str]] = {}
            for org, theirs in own.items():
                if theirs[category] != period:
                    groups.setdefault(theirs[category], set()).add(org)
            others = frozenset(chain.from_iterable(groups.values()))
            out[category] = [Cutoff(now, now - period, others=others)] + [
                Cutoff(now, now - p, orgs=frozenset(ids)) for p, ids in sorted(groups.items())
            ]
        return out

    async def run_retention(
        self, *, dry_run: bool = False, trigger: Trigger = Trigger.API, org_id: str | None = None
    ) -> dict[str, Any]:
        """Delete (or with `dry_run` only count) what expired, per category, each
        organization's data by its own periods (with `org_id`: only that organization's);
        logged unless a dry run."""
        started = self._rt.clock.now()
        counts: dict[str, int] = {}
        for category, cuts in (await self.cutoffs(started, org_id)).items():
            total = 0
            for cutoff in cuts:
                for domain in self.domains:
                    found = await domain.purge(category, cutoff, dry_run=dry_run)
                    total += found or 0
            counts[category.value] = total
            log.info("retention.purged", category=category.value, count=total, dry_run=dry_run,
                     groups=len(cuts))
        kept = {Category.CONSENT_LEDGER.value: await self._ledger_expired(started)}
        run = RetentionRun(id=uuid.uuid4(), started_at=started, finished_at=self._rt.clock.now(),
                           dry_run=dry_run, trigger=trigger, counts={**counts, "kept": kept})
        if not dry_run:
            async with self._rt.db.session() as session:
                session.add(run)
        return {**run.view(), "counts": counts, "kept": kept}

    async def _ledger_expired(self, now: datetime) -> int:
        before = now - periods(self._rt.settings)[Category.CONSENT_LEDGER]
        async with self._rt.db.session() as session:
            return await count_before(session, before)

    async def retention_status(self, org_id: str) -> dict[str, Any]:
        """Per category: the organization's period, what of its data is expired now, and
        the last real run (of the whole deployment)."""
        preview = await self.run_retention(dry_run=True, org_id=org_id)
        async with self._rt.db.session() as session:
            last = (
                await session.execute(
                    select(RetentionRun)
                    .where(RetentionRun.dry_run.is_(False))
                    .order_by(RetentionRun.started_at.desc())
                    .limit(1)
                )
            ).scalar_one_or_none()
            days = retention_days(await org_settings(session, self._rt.settings, org_id))
        categories = []
        for category, period in days.items():
            append_only = category is Category.CONSENT_LEDGER
            categories.append({
                "category": category.value,
                "retention_days": period,
                "expired": (
                    preview["kept"][category.value] if append_only
                    else preview["counts"][category.value]
                ),
                "action": "kept (append-only ledger)" if append_only else "deleted",
                "last_purged": last.counts.get(category.value) if last is not None else None,
            })
        return {
            "interval_s": self._rt.settings.retention_interval_s,
            "last_run": last.view() if last is not None else None,
            "categories": categories,
        }

    async def claim_run(self) -> bool:
        """With Redis, one purge per interval across every node and worker."""
        if self._rt.redis is None:
            return True
        key = f"{self._rt.settings.redis_prefix}:{RETENTION_LOCK}"
        ttl = max(1, self._rt.settings.retention_interval_s - 1)
        return bool(await self._rt.redis.set(key, b"1", nx=True, ex=ttl))

    async def _purge_periodically(self) -> None:
        while True:
            await asyncio.sleep(self._rt.settings.retention_interval_s)
            try:
                if await self.claim_run():
                    await self.run_retention(trigger=Trigger.SCHEDULE)
            except Exception:  # a failed run is retried at the next interval
                log.exception("retention.run_failed")
