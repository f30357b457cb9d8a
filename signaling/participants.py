"""Changes to one participant of a booking, by an API caller of the booking's organization:
a new join link (`do_revoke_participant`) and a correction of what the platform stated about
the person (`do_correct_participant`, logged as a `Correction`). Another organization's
booking or participant is not found.
"""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import Any

from pydantic import BaseModel, ConfigDict, Field
from sqlalchemy import JSON, ForeignKey, String, Uuid
from sqlalchemy.orm import Mapped, mapped_column

from core import outbox
from core.accounts import Caller
from core.bookings import AgeBand, Participant, Role
from core.bus import publish_all
from core.database import Base, UTCDateTime
from core.errors import FieldError, Gone, InvalidInput
from core.events import LinkRevoked, ParticipantUpdated
from core.organizations import org_settings
from core.outbox import do_write
from core.runtime import Runtime
from core.settings import Settings
from signaling.bookingrules import age_errors
from signaling.bookings import access_booking_participant
from signaling.credentials import credential_hash, join_credential
from signaling.livekit import Removal, Rooms


async def do_revoke_participant(
    runtime: Runtime, org_id: str, booking_id: uuid.UUID, participant_id: uuid.UUID,
    *, rooms: Rooms | None = None,
) -> Participant:
    """Give the participant a new join link; the old one stops working at once, and so does
    everything it handed out (tickets, sockets, the recording connection, event streams:
    `link.revoked`). With `rooms` (livekit mode) the person is removed from the room and the
    old token kept out."""
    async with runtime.db.session() as session:
        participant = await access_booking_participant(
            session, org_id, booking_id, participant_id
        )
        participant.credential_generation += 1
        participant.credential_hash = credential_hash(
            join_credential(runtime.keys, participant.id, participant.credential_generation)
        )
        now = runtime.clock.now()
        do_write(session, outbox.LinkRevoked(
            booking_id, participant.id, participant.external_id, participant.role.value, now
        ), now)
    await publish_all(
        runtime.bus, [LinkRevoked(booking_id=booking_id, participant_id=participant_id)]
    )
    if rooms is not None:
        await rooms.revoke(booking_id, participant_id, Removal.REVOKED)
    return participant


class ParticipantCorrection(BaseModel):
    """A correction of what the platform stated about a person (GDPR art. 16)."""

    model_config = ConfigDict(extra="forbid")

    display_name: str | None = Field(default=None, min_length=1, max_length=200)
    age_band: AgeBand | None = None
    age: int | None = Field(default=None, ge=0, le=130)


class Correction(Base):
    """One rectification: when, by which key, which fields (their old values are not kept:
    they were wrong, and are the person's data)."""

    __tablename__ = "participant_corrections"

    id: Mapped[uuid.UUID] = mapped_column(Uuid, primary_key=True, default=uuid.uuid4)
    at: Mapped[datetime] = mapped_column(UTCDateTime())
    booking_id: Mapped[uuid.UUID] = mapped_column(
        ForeignKey("bookings.id", ondelete="CASCADE"), index=True
    )
    participant_id: Mapped[uuid.UUID] = mapped_column(
        ForeignKey("participants.id", ondelete="CASCADE"), index=True
    )
    api_key_id: Mapped[str] = mapped_column(String(24))
    fields: Mapped[list[str]] = mapped_column(JSON)

    def view(self) -> dict[str, Any]:
        return {"at": self.at.isoformat(), "booking_id": str(self.booking_id),
                "participant_id": str(self.participant_id), "api_key_id": self.api_key_id,
                "fields": list(self.fields)}


def _corrected_age(
    participant: Participant, request: ParticipantCorrection, settings: Settings
) -> tuple[AgeBand, int | None]:
    """The band and age after the correction, or InvalidInput."""
    band, age = participant.age_band, participant.age
    if request.age is not None:
        band, age = AgeBand.of_age(request.age), request.age
    elif request.age_band is not None:
        band = request.age_band
        if age is not None and AgeBand.of_age(age) is not band:
            age = None  # the old age contradicts the corrected band
    errors = age_errors(("body",), band, request.age_band, age, None, settings)
    if not errors and participant.role is Role.HOST and band is not AgeBand.ADULT:
        errors.append(FieldError(("body", "age_band"), "the host must be an adult"))
    if errors:
        raise InvalidInput(f"{errors[0].loc[-1]}: {errors[0].msg}", errors=errors)
    return band, age


async def do_correct_participant(
    runtime: Runtime, caller: Caller, booking_id: uuid.UUID, participant_id: uuid.UUID,
    request: ParticipantCorrection,
) -> Participant:
    """Correct a person's display name or age: logged, pushed to the pages at once
    (`participant.updated`), in every invite and join from now on. Nothing else changes: the
    link, the consent given, the role. A band change makes the gate re-read the booking, so
    the guardian rule follows it."""
    if request.display_name is None and request.age_band is None and request.age is None:
        raise InvalidInput.field(("body",), "give display_name, age_band or age")
    async with runtime.db.session() as session:
        participant = await access_booking_participant(
            session, caller.org_id, booking_id, participant_id
        )
        if participant.revoked_at is not None:
            raise Gone("this person was erased")
        settings = await org_settings(session, runtime.settings, caller.org_id)
        band, age = _corrected_age(participant, request, settings)
        name = request.display_name or participant.display_name
        fields = [
            field for field, old, new in (
                ("display_name", participant.display_name, name),
                ("age_band", participant.age_band, band), ("age", participant.age, age),
            ) if old != new
        ]
        participant.display_name, participant.age_band, participant.age = name, band, age
        if fields:
            session.add(Correction(
                at=runtime.clock.now(), booking_id=booking_id, participant_id=participant_id,
                api_key_id=caller.key_id, fields=fields,
            ))
    if fields:
        event = ParticipantUpdated(
            booking_id=booking_id, participant_id=participant_id, display_name=name,
            age_band=band.value,
        )
        await publish_all(runtime.bus, [event])
    return participant
