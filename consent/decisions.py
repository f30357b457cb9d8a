"""Decisions by participants: what they are asked, and recording what they answered.

`do_decide` checks the booking requested the purpose and that the person saw the current
notice, appends to the ledger in one transaction, and publishes `consent.changed` after commit.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession

from consent.ledger import Entry, NewDecision, changed_event, latest_decisions
from consent.notices import Notice, current_notice, notice_view, supersessions
from consent.purposes import Actor, Decision, Method, Purpose
from consent.writer import LedgerWriter
from core.bookings import Booking, BookingStatus, Participant
from core.bus import EventBus, publish_all
from core.database import Database
from core.errors import Conflict, Gone, InvalidInput, NotFound
from core.outbox import ConsentChanged, do_write


class PurposeNotRequested(InvalidInput):
    code = "purpose_not_requested"
    title = "Purpose not requested"


class NoticeOutdated(Conflict):
    code = "notice_outdated"
    title = "A newer notice exists"


class NoticeMismatch(InvalidInput):
    code = "notice_mismatch"
    title = "Unknown notice"


class GuardianNotApplicable(InvalidInput):
    code = "guardian_not_applicable"
    title = "Only a minor has a guardian decide"


@dataclass(frozen=True)
class DecisionRequest:
    purpose: Purpose
    decision: Decision
    notice_sha256: str
    method: Method = Method.WEB_DIALOG
    actor: Actor = Actor.SUBJECT


def access_open_booking(booking: Booking) -> Booking:
    """The booking, if decisions can still be made on it (not cancelled)."""
    if booking.status is BookingStatus.CANCELLED:
        raise Gone("this booking was cancelled")
    return booking


def requested(booking: Booking) -> list[Purpose]:
    """The purposes the booking requests, in the order it named them."""
    return [Purpose(code) for code in dict.fromkeys(booking.requested_purposes)]


async def consent_overview(db: Database, participant_id: uuid.UUID) -> dict[str, Any]:
    """What GET /v1/consent shows: each requested purpose, its notice, the current decision."""
    async with db.session() as session:
        participant = await session.get(Participant, participant_id)
        if participant is None:
            raise NotFound("this join link is not valid")
        booking = access_open_booking(participant.booking)
        latest = await latest_decisions(session, booking.id, participant.id)
        replaced = await supersessions(session, {e.notice_id for e in latest.values()})
        purposes = []
        for purpose in requested(booking):
            notice = await current_notice(session, purpose, booking.language, booking.org_id)
            entry = latest.get(purpose)
            # A grant under a notice a material change replaced: the page asks again.
            change = (
                replaced.get(entry.notice_id)
                if entry is not None and entry.decision is Decision.GRANTED
                else None
            )
            purposes.append(
                {
                    "purpose": purpose.value,
                    "notice": {k: v for k, v in notice_view(notice).items() if k in NOTICE_KEYS},
                    "decision": entry.decision.value if entry is not None else None,
                    "decided_at": entry.at.isoformat() if entry is not None else None,
                    "reconsent_required": change is not None,
                    "notice_change": (change.change_note or "the notice changed materially")
                    if change is not None else None,
                }
            )
    return {"booking_id": str(booking.id), "subject_id": str(participant.id), "purposes": purposes}


NOTICE_KEYS = ("id", "version", "language", "text", "sha256")


async def _shown_notice(
    session: Any, booking: Booking, purpose: Purpose, sha256: str
) -> Notice:
    notice = await current_notice(session, purpose, booking.language, booking.org_id)
    if notice.sha256 == sha256.lower():
        return notice
    query = select(Notice.version).where(
        Notice.org_id == booking.org_id, Notice.purpose == purpose,
        Notice.sha256 == sha256.lower(),
    )
    older = (await session.execute(query.limit(1))).scalar_one_or_none()
    if older is not None:
        raise NoticeOutdated(
            f"the notice for {purpose.value} changed; show version {notice.version} and ask again",
            extra={"current_notice_sha256": notice.sha256, "current_version": notice.version},
        )
    raise NoticeMismatch(
        f"notice_sha256 is not a notice for {purpose.value}",
        extra={"current_notice_sha256": notice.sha256},
    )


async def do_decide(
    ledger: LedgerWriter,
    bus: EventBus,
    participant_id: uuid.UUID,
    request: DecisionRequest,
    now: datetime,
) -> Entry:
    """Record one decision on the ledger, then tell every node (`consent.changed`). The
    checks run first; the append joins the next group commit and returns once durable."""
    async with ledger.db.session() as session:
        participant = await session.get(Participant, participant_id)
        if participant is None:
            raise NotFound("this join link is not valid")
        booking = access_open_booking(participant.booking)
        if request.actor is Actor.GUARDIAN and participant.adult:
            raise GuardianNotApplicable("this participant is an adult and decides alone")
        if request.purpose not in requested(booking):
            raise PurposeNotRequested(
                f"this booking does not ask for {request.purpose.value}",
                extra={"requested_purposes": [p.value for p in requested(booking)]},
            )
        notice = await _shown_notice(session, booking, request.purpose, request.notice_sha256)
        new = NewDecision(
            booking_id=booking.id,
            subject_id=participant.id,
            purpose=request.purpose,
            decision=request.decision,
            notice_id=notice.id,
            notice_sha256=notice.sha256,
            method=request.method,
            actor=request.actor,
        )

    def outbox(session: AsyncSession, entry: Entry) -> None:
        # The webhook outbox row commits in the same transaction as the ledger entry.
        do_write(session, ConsentChanged(
            booking.id, participant.id, entry.purpose.value, entry.decision.value, entry.id, now
        ), now)

    entry = await ledger.append(new, now, effect=outbox)
    await publish_all(bus, [changed_event(entry)])
    return entry
