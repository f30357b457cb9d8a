"""What a scheduler sends to book (`BookingRequest`, `Person`, `RescheduleRequest`) and every
rule it must satisfy (`validate_booking`), checked before anything is stored; a bad request
names each field that was wrong. The settings given are the organization's
(`core.organizations.effective_settings`: its minimum age, the deployment's limits).
"""

from __future__ import annotations

import json
from datetime import datetime

from pydantic import BaseModel, ConfigDict, Field

from core.bookings import CHILD_BELOW, AgeBand
from core.crypto import Keyring
from core.errors import FieldError, InvalidInput
from core.inputs import Instant, Line, Paragraph
from core.purposes import REQUIRES, Purpose, RecordingAccess, RecordingPolicy
from core.settings import Settings


class Person(BaseModel):
    """A booked person as the platform knows them."""

    model_config = ConfigDict(extra="forbid")

    external_id: Line = Field(min_length=1, max_length=200, examples=["user-4711"])
    display_name: Line = Field(min_length=1, max_length=200, examples=["Ada Lovelace"])
    age_band: AgeBand | None = Field(
        default=None,
        description="`adult` (18+), `minor` (13-17) or `child` (under 13). Minors and children "
        "decide with their guardian; nobody under the organization's minimum age (default "
        "`CALLGATE_MINIMUM_AGE`) is booked. State this, `age`, or the older `adult`.",
    )
    age: int | None = Field(
        default=None, ge=0, le=130, description="Age in years; sets `age_band` when given."
    )
    adult: bool | None = Field(
        default=None, description="Deprecated (use `age_band`): true = adult, false = minor."
    )

    def band(self) -> AgeBand | None:
        """The age band the request states (consistency is `_age_errors`' job)."""
        if self.age is not None:
            return AgeBand.of_age(self.age)
        if self.age_band is not None:
            return self.age_band
        if self.adult is not None:
            return AgeBand.ADULT if self.adult else AgeBand.MINOR
        return None


class BookingRequest(BaseModel):
    """What a scheduler books."""

    model_config = ConfigDict(extra="forbid")

    title: Line = Field(min_length=1, max_length=200, examples=["Mentoring session"])
    stated_purpose: Paragraph | None = Field(
        default=None, max_length=2000, description="Why the session happens, in the client's words."
    )
    stated_by: Line | None = Field(
        default=None, min_length=1, max_length=200,
        description="`external_id` of the client who stated the purpose (their words go to "
        "`ai.agenda` only if they grant it); default: the first client.",
        examples=["user-4711"],
    )
    language: str = Field(
        min_length=2, max_length=35, pattern=r"^[A-Za-z]{2,8}(-[A-Za-z0-9]{1,8})*$",
        description="BCP 47 language tag of the session (notices are shown in it).",
        examples=["en"],
    )
    starts_at: Instant = Field(description="Start, with a timezone offset.")
    ends_at: Instant = Field(description="End, with a timezone offset.")
    host: Person
    clients: list[Person] = Field(description="1..max_clients clients.")
    requested_purposes: list[Purpose] = Field(
        default_factory=list, description="What may be asked for consent; nothing else is."
    )
    recording_policy: RecordingPolicy = RecordingPolicy.PER_PARTICIPANT
    recording_access: RecordingAccess = Field(
        default=RecordingAccess.OWN,
        description="Who may read the recordings, transcript and summary after the call: "
        "`admins` (admin keys only), `own` (each person their own files, transcript lines and "
        "the summaries they are in), `host` (the host everything, clients their own), "
        "`participants` (everyone in the booking). Participants read through their join link "
        "for a set number of days after the session (docs/privacy.md).",
    )
    record_automatically: bool = False


class RescheduleRequest(BaseModel):
    """A new window for a booking."""

    model_config = ConfigDict(extra="forbid")

    starts_at: Instant
    ends_at: Instant


def window_errors(
    starts_at: datetime, ends_at: datetime, settings: Settings, now: datetime
) -> list[FieldError]:
    if ends_at <= starts_at:
        return [FieldError(("body", "ends_at"), "must be after starts_at")]
    if ends_at <= now and not settings.allow_past_bookings:
        return [FieldError(("body", "ends_at"), "the session would already be over")]
    if ends_at - starts_at > settings.max_booking_duration:
        limit = f"{settings.max_booking_hours:g} h"
        return [FieldError(("body", "ends_at"), f"the session may last at most {limit}")]
    return []


def age_errors(
    loc: tuple[str | int, ...], band: AgeBand | None, stated: AgeBand | None, age: int | None,
    adult: bool | None, settings: Settings,
) -> list[FieldError]:
    """What is wrong with a person's stated age: missing, contradicting itself, or below the
    organization's minimum age."""
    if band is None:
        return [FieldError((*loc, "age_band"), "state age_band (or age)")]
    if stated is not None and stated is not band:
        return [FieldError((*loc, "age_band"), f"age {age} is in the band {band.value}")]
    if adult is not None and adult is not (band is AgeBand.ADULT):
        return [FieldError((*loc, "adult"), f"contradicts the age band {band.value}")]
    minimum = settings.minimum_age
    if age is not None and age < minimum:
        return [FieldError((*loc, "age"), f"nobody under {minimum} is booked here")]
    if age is None and band is AgeBand.CHILD and minimum > 0:
        why = "children are not booked here" if minimum >= CHILD_BELOW else "state the age"
        return [FieldError((*loc, "age_band"), f"{why} (minimum age {minimum})")]
    return []


def _person_errors(
    loc: tuple[str | int, ...], person: Person, settings: Settings
) -> list[FieldError]:
    return age_errors(loc, person.band(), person.age_band, person.age, person.adult, settings)


def _people_errors(request: BookingRequest, settings: Settings) -> list[FieldError]:
    errors: list[FieldError] = _person_errors(("body", "host"), request.host, settings)
    for index, client in enumerate(request.clients):
        errors += _person_errors(("body", "clients", index), client, settings)
    if not errors and request.host.band() is not AgeBand.ADULT:
        field = "age_band" if request.host.age_band or request.host.age is not None else "adult"
        errors.append(FieldError(("body", "host", field), "the host must be an adult"))
    if not 1 <= len(request.clients) <= settings.max_clients:
        errors.append(
            FieldError(("body", "clients"), f"book 1 to {settings.max_clients} clients")
        )
    seen = {request.host.external_id}
    for index, person in enumerate(request.clients):
        if person.external_id in seen:
            errors.append(
                FieldError(("body", "clients", index, "external_id"), "duplicate participant")
            )
        seen.add(person.external_id)
    if request.stated_by is not None:
        if request.stated_by not in {c.external_id for c in request.clients}:
            errors.append(FieldError(("body", "stated_by"), "must be one of the clients"))
        if request.stated_purpose is None:
            errors.append(FieldError(("body", "stated_by"), "names who stated no purpose"))
    return errors


def purpose_author(request: BookingRequest) -> str | None:
    """The external id of the client whose words `stated_purpose` are, if any."""
    if request.stated_purpose is None or not request.clients:
        return None
    return request.stated_by or request.clients[0].external_id


def _purpose_errors(purposes: list[Purpose]) -> list[FieldError]:
    errors: list[FieldError] = []
    chosen = set(purposes)
    if len(chosen) != len(purposes):
        errors.append(FieldError(("body", "requested_purposes"), "a purpose is listed twice"))
    for purpose in purposes:
        missing = REQUIRES.get(purpose, frozenset()) - chosen
        if missing:
            names = ", ".join(sorted(p.value for p in missing))
            errors.append(
                FieldError(("body", "requested_purposes"), f"{purpose.value} requires {names}")
            )
    return errors


def validate_booking(request: BookingRequest, settings: Settings, now: datetime) -> None:
    """Every rule a booking must satisfy; InvalidInput naming each failing field."""
    errors = [
        *window_errors(request.starts_at, request.ends_at, settings, now),
        *_people_errors(request, settings),
        *_purpose_errors(request.requested_purposes),
    ]
    if errors:
        detail = "; ".join(f"{'.'.join(str(p) for p in e.loc[1:])}: {e.msg}" for e in errors)
        raise InvalidInput(detail, errors=errors)


def request_hashes(keys: Keyring, request: BookingRequest) -> list[str]:
    """The Idempotency-Key fingerprint of a request: keyed (HMAC under the server secret), so
    nobody holding the database can recompute it from a guess at the people in it. Erasure
    drops it (signaling/subjects.py). The first is the current secret's; then the previous
    secrets', which a replay made before a rotation still matches."""
    canonical = json.dumps(request.model_dump(mode="json"), sort_keys=True, separators=(",", ":"))
    return [mac.hex() for mac in keys.derivations("idempotency", canonical)]
