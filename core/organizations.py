"""Organizations: the tenants one callgate serves (one booking platform each).

Every API key (but the operator's), booking, webhook endpoint, restriction and outbox event
belongs to one organization, and a key sees only its own organization's data: anything else
is "not found", exactly as if it did not exist. Participants belong to their booking, so a
join link belongs to the booking's organization too.

An organization may override some deployment settings (`OrgSettings`: the minimum age, how
long participants may read their session, the names in its notices, its retention period
per data category); what it leaves unset is the deployment's value (`CALLGATE_*`). The
purge cuts each organization's data by its own periods (`privacy.service`). A deployment
that never creates an organization runs entirely in `DEFAULT_ORG`, which the migration
creates and into which it moves every existing row.
"""

from __future__ import annotations

import re
import uuid
from datetime import datetime
from typing import Any

from pydantic import BaseModel, ConfigDict, Field
from sqlalchemy import JSON, String, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncSession
from sqlalchemy.orm import Mapped, mapped_column

from core.bookings import DEFAULT_ORG as DEFAULT_ORG
from core.bookings import Booking, Participant
from core.database import Base, UTCDateTime
from core.errors import Conflict, InvalidInput, NotFound
from core.settings import Settings

ORG_ID_PATTERN = r"^[a-z0-9][a-z0-9-]{1,30}[a-z0-9]$"


class Organization(Base):
    __tablename__ = "organizations"

    id: Mapped[str] = mapped_column(String(32), primary_key=True)
    name: Mapped[str] = mapped_column(String(200))
    # The overrides of `OrgSettings` (only the fields set); the rest is the deployment's.
    settings: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime())
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime())


MAX_RETENTION_DAYS = 3653  # ten years: longer is a mistake (days typed as hours), not a policy


def _days(what: str, setting: str) -> Any:
    return Field(
        default=None, ge=1, le=MAX_RETENTION_DAYS,
        description=f"Days {what} (default `CALLGATE_{setting}`).",
    )


class RetentionDays(BaseModel):
    """An organization's retention period per data category, in days (1 to 3653); unset
    (null) means the deployment's. A shorter period applies to what is held already at the
    next purge; a longer one to data made from then on (what exists keeps the deadline its
    notice stated)."""

    model_config = ConfigDict(extra="forbid", strict=True)

    recordings: int | None = _days("a recording is kept after it ends",
                                   "RECORDING_RETENTION_DAYS")
    transcripts: int | None = _days("a transcript is kept", "TRANSCRIPT_RETENTION_DAYS")
    summaries: int | None = _days("a summary is kept", "SUMMARY_RETENTION_DAYS")
    agendas: int | None = _days("an agenda is kept", "AGENDA_RETENTION_DAYS")
    join_logs: int | None = _days("join, recording-download and read logs are kept",
                                  "JOIN_LOG_RETENTION_DAYS")
    attendance: int | None = _days("attendance is kept after the join",
                                   "ATTENDANCE_RETENTION_DAYS")
    bookings: int | None = _days("a booking (with its participants and all they hold) is "
                                 "kept after it ends", "BOOKING_RETENTION_DAYS")
    webhook_log: int | None = _days("sent webhook events and their delivery log are kept",
                                    "WEBHOOK_LOG_RETENTION_DAYS")


# RetentionDays field -> the Settings field it overrides.
_RETENTION_SETTING = {
    "recordings": "recording_retention_days",
    "transcripts": "transcript_retention_days",
    "summaries": "summary_retention_days",
    "agendas": "agenda_retention_days",
    "join_logs": "join_log_retention_days",
    "attendance": "attendance_retention_days",
    "bookings": "booking_retention_days",
    "webhook_log": "webhook_log_retention_days",
}


class OrgSettings(BaseModel):
    """What an organization may set for itself; unset (null) means the deployment's value.
    Strict: a number sent as a string or a boolean is refused, never converted."""

    model_config = ConfigDict(extra="forbid", strict=True)

    operator_name: str | None = Field(
        default=None, min_length=1, max_length=200,
        description="Who records and processes, as the notices name them "
        "(default `CALLGATE_CONSENT_OPERATOR_NAME`).",
    )
    ai_provider_name: str | None = Field(
        default=None, min_length=1, max_length=200,
        description="The AI provider as the notices name it "
        "(default `CALLGATE_CONSENT_AI_PROVIDER`).",
    )
    minimum_age: int | None = Field(
        default=None, ge=0, le=18,
        description="Nobody younger is booked (default `CALLGATE_MINIMUM_AGE`).",
    )
    participant_access_days: int | None = Field(
        default=None, ge=0, le=3650,
        description="Days after a session its participants may read what `recording_access` "
        "gives them (default `CALLGATE_PARTICIPANT_ACCESS_DAYS`).",
    )
    retention_days: RetentionDays | None = Field(
        default=None,
        description="Retention per data category in days (1 to 3653); a category left "
        "unset keeps the deployment's period. The purge deletes this organization's data by "
        "these periods, and its notices state them. The consent ledger is not here: it is "
        "append-only, one chain for the deployment (`CALLGATE_LEDGER_RETENTION_DAYS`).",
    )


# OrgSettings field -> the Settings field it overrides.
_SETTING_OF = {
    "operator_name": "consent_operator_name",
    "ai_provider_name": "consent_ai_provider",
}


def effective_settings(settings: Settings, org: Organization | None) -> Settings:
    """The deployment's settings with the organization's overrides in place."""
    if org is None or not org.settings:
        return settings
    overrides = OrgSettings.model_validate(org.settings).model_dump(exclude_none=True)
    retention = overrides.pop("retention_days", {})
    update = {_SETTING_OF.get(k, k): v for k, v in overrides.items()}
    update.update({_RETENTION_SETTING[k]: v for k, v in retention.items()})
    if not update:
        return settings
    return settings.model_copy(update=update)


async def org_settings(session: AsyncSession, settings: Settings, org_id: str) -> Settings:
    """The settings that hold for `org_id` (the deployment's, where it set nothing)."""
    return effective_settings(settings, await session.get(Organization, org_id))


async def booking_settings(
    session: AsyncSession, settings: Settings, booking_id: uuid.UUID
) -> Settings:
    """The settings that hold for a booking's organization (the deployment's for a booking
    that is gone)."""
    org_id = await session.scalar(select(Booking.org_id).where(Booking.id == booking_id))
    return await org_settings(session, settings, org_id or DEFAULT_ORG)


def check_org_id(org_id: str) -> str:
    if not re.match(ORG_ID_PATTERN, org_id):
        raise InvalidInput.field(
            ("body", "id"), "3 to 32 of a-z, 0-9 and '-', not starting or ending with '-'"
        )
    return org_id


async def access_org(session: AsyncSession, org_id: str) -> Organization:
    org = await session.get(Organization, org_id, populate_existing=True)
    if org is None:
        raise NotFound(f"no organization {org_id!r}")
    return org


async def get_orgs(session: AsyncSession) -> list[Organization]:
    query = select(Organization).order_by(Organization.created_at, Organization.id)
    return list((await session.scalars(query)).all())


async def do_create_org(
    session: AsyncSession, org_id: str, name: str, overrides: OrgSettings, now: datetime
) -> Organization:
    """A new organization (Conflict if the id is taken)."""
    org = Organization(
        id=check_org_id(org_id), name=name, settings=overrides.model_dump(exclude_none=True),
        created_at=now, updated_at=now,
    )
    session.add(org)
    try:
        await session.flush()
    except IntegrityError:
        raise Conflict(f"an organization {org_id!r} exists already") from None
    return org


def do_update_settings(org: Organization, changes: dict[str, Any], now: datetime) -> None:
    """Merge `changes` (an OrgSettings subset; null clears an override) into the org's;
    `retention_days` merges per category the same way."""
    merged = {**org.settings, **changes}
    retention = changes.get("retention_days")
    if isinstance(retention, dict):
        merged["retention_days"] = {**org.settings.get("retention_days", {}), **retention}
    org.settings = OrgSettings.model_validate(merged).model_dump(exclude_none=True)
    org.updated_at = now


async def access_org_participant(
    session: AsyncSession, org_id: str, participant_id: uuid.UUID
) -> Participant:
    """A participant of one of the organization's bookings; anyone else is not found."""
    query = (
        select(Participant).join(Booking, Booking.id == Participant.booking_id)
        .where(Participant.id == participant_id, Booking.org_id == org_id)
    )
    participant = (await session.execute(query)).scalar_one_or_none()
    if participant is None:
        raise NotFound(f"no participant {participant_id}")
    return participant
