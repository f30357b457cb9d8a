"""The identity side of data-subject rights (core.subjects.SubjectData): bookings,
participant rows, join links, the join log (redeemed signaling tickets) and attendance.

Retention also deletes the webhook log: sent events and their finished deliveries.

Erasure replaces the person's external id and display name with the tombstone, ends
their join links, deletes their attendance, and drops the purpose they stated and the
Idempotency-Key fingerprints of their bookings; the participant rows stay (they anchor the
ledger's pseudonymous subject ids, which then lead nowhere). Retention deletes bookings
(cascading to everything hanging off them), old join-log rows and old attendance.
"""

from __future__ import annotations

import secrets
from collections.abc import AsyncIterator
from typing import Any

from sqlalchemy import delete, func, or_, select, update
from sqlalchemy.ext.asyncio import AsyncSession

from core.batches import delete_where, table_of
from core.bookings import Booking, Participant
from core.crypto import sha256_hex
from core.outbox import OutboxEvent, do_scrub
from core.purposes import Purpose
from core.runtime import Runtime
from core.subjects import (
    ERASED_NAME,
    Category,
    Cleanup,
    Cutoff,
    Erasure,
    JsonLines,
    Part,
    Subject,
)
from core.webhooks import Delivery, DeliveryStatus, Endpoint
from signaling.attendance import Stay
from signaling.participants import Correction
from signaling.tickets import UsedTicket


class SignalingSubjects:
    name = "signaling"

    def __init__(self, runtime: Runtime) -> None:
        self._rt = runtime

    async def export(self, subject: Subject) -> AsyncIterator[Part]:
        yield JsonLines("bookings.jsonl", self._bookings(subject))
        yield JsonLines("joins.jsonl", self._joins(subject))
        yield JsonLines("attendance.jsonl", self._attendance(subject))
        yield JsonLines("corrections.jsonl", self._corrections(subject))

    async def _attendance(self, subject: Subject) -> AsyncIterator[dict[str, Any]]:
        query = (
            select(Stay).where(Stay.participant_id.in_(subject.participant_ids))
            .order_by(Stay.joined_at)
        )
        async with self._rt.db.session() as session:
            stays = list((await session.scalars(query)).all())
        for stay in stays:
            yield {
                "booking_id": str(stay.booking_id),
                "participant_id": str(stay.participant_id),
                "joined_at": stay.joined_at.isoformat(),
                "left_at": stay.left_at.isoformat() if stay.left_at else None,
                "how": stay.left_how.value if stay.left_how else None,
            }

    async def _corrections(self, subject: Subject) -> AsyncIterator[dict[str, Any]]:
        query = (
            select(Correction).where(Correction.participant_id.in_(subject.participant_ids))
            .order_by(Correction.at)
        )
        async with self._rt.db.session() as session:
            rows = list((await session.execute(query)).scalars())
        for row in rows:
            yield row.view()

    async def _bookings(self, subject: Subject) -> AsyncIterator[dict[str, Any]]:
        ids = list(subject.booking_ids)
        async with self._rt.db.session() as session:
            query = select(Booking).where(Booking.id.in_(ids))
            bookings = {b.id: b for b in (await session.execute(query)).scalars()}
            counted = select(Participant.booking_id, func.count()).where(
                Participant.booking_id.in_(ids)
            ).group_by(Participant.booking_id)
            sizes = {booking_id: int(n) for booking_id, n in (await session.execute(counted))}
        for participant in subject.participants:
            booking = bookings.get(participant.booking_id)
            if booking is None:
                continue
            yield {
                "booking_id": str(booking.id),
                "title": booking.title,
                "stated_purpose": booking.stated_purpose,
                "language": booking.language,
                "starts_at": booking.starts_at.isoformat(),
                "ends_at": booking.ends_at.isoformat(),
                "status": booking.status.value,
                "requested_purposes": list(booking.requested_purposes),
                "recording_policy": booking.recording_policy.value,
                "other_participants": sizes.get(booking.id, 1) - 1,
                "participant": {
                    "id": str(participant.id),
                    "external_id": participant.external_id,
                    "display_name": participant.display_name,
                    "role": participant.role.value,
                    "age_band": participant.age_band.value,
                    "age": participant.age,
                    "created_at": participant.created_at.isoformat(),
                    "join_link_revoked_at": (
                        participant.revoked_at.isoformat() if participant.revoked_at else None
                    ),
                },
            }

    async def _joins(self, subject: Subject) -> AsyncIterator[dict[str, Any]]:
        query = (
            select(UsedTicket.participant_id, UsedTicket.expires_at)
            .where(UsedTicket.participant_id.in_(subject.participant_ids))
            .order_by(UsedTicket.expires_at)
        )
        async with self._rt.db.session() as session:
            rows = list((await session.execute(query)).all())
        ttl = self._rt.settings.ticket_ttl_s
        for participant_id, expires_at in rows:
            yield {
                "participant_id": str(participant_id),
                "ticket_expires_at": expires_at.isoformat(),
                "ticket_ttl_s": ttl,
            }

    async def erase(
        self, session: AsyncSession, subject: Subject, erasure: Erasure
    ) -> dict[str, int]:
        changes = [
            {
                "id": participant.id,
                "external_id": erasure.tombstone,
                "display_name": ERASED_NAME,
                # A hash of nothing anyone holds: the old link matches no row any more.
                "credential_hash": sha256_hex(secrets.token_bytes(32)),
                "credential_generation": participant.credential_generation + 1,
                "revoked_at": participant.revoked_at or erasure.at,
            }
            for participant in subject.participants
        ]
        await session.execute(update(Participant), changes)  # one executemany by primary key
        ended = sum(1 for p in subject.participants if p.revoked_at is None)
        stays = await session.execute(
            delete(Stay).where(Stay.participant_id.in_(subject.participant_ids))
        )
        scrubbed = await do_scrub(
            session, subject.booking_ids, subject.external_id, erasure.tombstone
        )
        return {
            "participants_tombstoned": len(changes), "join_links_ended": ended,
            "attendance_deleted": int(getattr(stays, "rowcount", 0) or 0),
            "events_scrubbed": scrubbed,
            **await self._erase_booking_traces(session, subject),
        }

    async def _erase_booking_traces(
        self, session: AsyncSession, subject: Subject
    ) -> dict[str, int]:
        """The person's words (the purpose they stated) go with them; so does each booking's
        Idempotency-Key fingerprint, which was computed over their name and id."""
        stated_in = [p.booking_id for p in subject.participants if p.purpose_author]
        if stated_in:
            await session.execute(
                update(Booking).where(Booking.id.in_(stated_in)).values(stated_purpose=None)
            )
            await session.execute(
                update(Participant)
                .where(Participant.id.in_(subject.participant_ids))
                .values(purpose_author=False)
            )
        await session.execute(
            update(Booking).where(Booking.id.in_(subject.booking_ids)).values(request_hash=None)
        )
        return {"stated_purposes_erased": len(stated_in)}

    async def delete_purpose(
        self, session: AsyncSession, participant: Participant, purpose: Purpose, cleanup: Cleanup
    ) -> dict[str, int]:
        return {}

    async def purge(self, category: Category, cutoff: Cutoff, *, dry_run: bool) -> int | None:
        db = self._rt.db
        if category is Category.JOIN_LOGS:
            tickets = table_of(UsedTicket)
            expired = (tickets.c.expires_at < cutoff.before) & cutoff.of_participants(
                tickets.c.participant_id
            )
            return await delete_where(db, tickets, expired, dry_run=dry_run)
        if category is Category.ATTENDANCE:
            stays = table_of(Stay)
            expired = (stays.c.joined_at < cutoff.before) & cutoff.of_bookings(stays.c.booking_id)
            return await delete_where(db, stays, expired, dry_run=dry_run)
        if category is Category.BOOKINGS:
            bookings = table_of(Booking)
            expired = (bookings.c.ends_at < cutoff.before) & cutoff.of_orgs(bookings.c.org_id)
            return await delete_where(db, bookings, expired, dry_run=dry_run, batch=500)
        if category is Category.WEBHOOK_LOG:
            return await self._purge_webhook_log(cutoff, dry_run=dry_run)
        return None

    async def _purge_webhook_log(self, cutoff: Cutoff, *, dry_run: bool) -> int:
        """Deliveries done (delivered or failed) before the cut, then the sent events no
        delivery names any more (one still listed can be replayed, so it stays). Pending
        deliveries and the events they send are never purged. (The outbox lives here as its
        erasure does, `core.outbox.do_scrub`.)"""
        db = self._rt.db
        deliveries, events = table_of(Delivery), table_of(OutboxEvent)
        done = (
            (deliveries.c.status != DeliveryStatus.PENDING.value)
            & (deliveries.c.created_at < cutoff.before)
        )
        named = select(Delivery.id).where(Delivery.event_seq == events.c.seq).exists()
        sent = events.c.dispatched.is_(True) & (events.c.created_at < cutoff.before) & ~named
        if not cutoff.everywhere:  # an endpoint's organization; an event's booking's, or its own
            endpoints = select(Endpoint.id).where(cutoff.of_orgs(Endpoint.org_id))
            done = done & deliveries.c.endpoint_id.in_(endpoints.scalar_subquery())
            sent = sent & or_(
                events.c.booking_id.is_not(None) & cutoff.of_bookings(events.c.booking_id),
                events.c.booking_id.is_(None)
                & cutoff.of_orgs(func.coalesce(events.c.org_id, "")),
            )
        purged = await delete_where(db, deliveries, done, dry_run=dry_run)
        return purged + await delete_where(db, events, sent, dry_run=dry_run)
