"""Purpose-bound payloads: the only shape in which a person's data may reach an AI provider.

A `PurposeBoundPayload[P]` is built only here, by a `PayloadGate` bound to one job's purpose,
after asking consent/ which persons granted what; each piece carries the ledger entry ids that
allowed it. The provider's methods accept only the payload type of their purpose (mypy sees a
summary payload handed to `transcribe` as an error) and check at runtime that the payload is
sealed by this module for that purpose, so neither a cast, a hand-made payload nor
`dataclasses.replace` gets data out for another purpose.
"""

from __future__ import annotations

import enum
import hashlib
import hmac
import secrets
import uuid
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Generic, Literal, Protocol, TypeAlias, TypeVar

from core.audio import AudioSpan
from core.bookings import Booking, Participant, Role
from core.errors import PermissionDenied
from core.purposes import Purpose
from summaries.redaction import Redactor


class DataCategory(enum.StrEnum):
    BOOKING_TEXT = "booking_text"  # title, stated purpose of the session
    SPEECH_TEXT = "speech_text"  # what a person said (transcript segments)
    VOICE_AUDIO = "voice_audio"  # a person's recorded voice


class PurposeViolation(PermissionDenied):
    """Code tried to use data for a purpose it was not bound to (a bug, never user input)."""

    code = "purpose_violation"
    title = "Purpose violation"


class NotPermitted(Exception):
    """Consent does not allow the job; `reason` is recorded on the job and in the register."""

    def __init__(self, reason: str, *, excluded: Sequence[Exclusion] = ()) -> None:
        super().__init__(reason)
        self.reason = reason
        self.excluded = tuple(excluded)


@dataclass(frozen=True)
class Exclusion:
    """A person left out of a payload, and which purpose they did not grant."""

    subject_id: uuid.UUID
    missing: Purpose


@dataclass(frozen=True)
class Piece:
    """One item of personal data in a payload: whose, what kind, and which grants allowed it."""

    subject_id: uuid.UUID | None
    label: str
    category: DataCategory
    entry_ids: tuple[uuid.UUID, ...]
    text: str = ""
    audio: bytes = b""
    mime: str = ""
    start_ms: int = 0
    end_ms: int = 0

    @property
    def size(self) -> int:
        return len(self.text.encode()) + len(self.audio)


P = TypeVar("P", bound=Purpose)

_FACTORY = object()  # only this module holds it: no payload is built elsewhere
_SEAL_KEY = secrets.token_bytes(32)  # per process: a payload cannot be forged or re-purposed


@dataclass(frozen=True)
class PurposeBoundPayload(Generic[P]):
    purpose: P
    booking_id: uuid.UUID
    language: str
    pieces: tuple[Piece, ...]
    excluded: tuple[Exclusion, ...] = ()
    _factory: object = field(default=None, repr=False, compare=False)
    _seal: bytes = field(default=b"", repr=False, compare=False)

    def __post_init__(self) -> None:
        if self._factory is not _FACTORY:
            raise PurposeViolation("purpose-bound payloads are built only by the payload gate")

    @property
    def entry_ids(self) -> tuple[uuid.UUID, ...]:
        seen: dict[uuid.UUID, None] = {}
        for piece in self.pieces:
            seen.update(dict.fromkeys(piece.entry_ids))
        return tuple(seen)

    @property
    def subjects(self) -> tuple[uuid.UUID, ...]:
        found = (p.subject_id for p in self.pieces if p.subject_id is not None)
        return tuple(dict.fromkeys(found))

    @property
    def categories(self) -> tuple[DataCategory, ...]:
        return tuple(dict.fromkeys(p.category for p in self.pieces))

    @property
    def size(self) -> int:
        return sum(p.size for p in self.pieces)

    def digest(self) -> bytes:
        h = hashlib.sha256()
        h.update(f"{self.purpose.value}\x00{self.booking_id}\x00{self.language}".encode())
        for p in self.pieces:
            h.update(f"\x01{p.subject_id}\x00{p.label}\x00{p.category.value}".encode())
            h.update(f"\x00{p.start_ms}\x00{p.end_ms}\x00{sorted(map(str, p.entry_ids))}".encode())
            h.update(hashlib.sha256(p.text.encode()).digest() + hashlib.sha256(p.audio).digest())
        return h.digest()


AgendaPayload: TypeAlias = PurposeBoundPayload[Literal[Purpose.AI_AGENDA]]
TranscriptionPayload: TypeAlias = PurposeBoundPayload[Literal[Purpose.TRANSCRIPTION]]
SummaryPayload: TypeAlias = PurposeBoundPayload[Literal[Purpose.AI_SUMMARY]]


def _seal(payload: PurposeBoundPayload[P]) -> PurposeBoundPayload[P]:
    mac = hmac.new(_SEAL_KEY, payload.digest(), hashlib.sha256).digest()
    object.__setattr__(payload, "_seal", mac)
    return payload


def check_payload(payload: PurposeBoundPayload[P], purpose: Purpose) -> None:
    """Raise PurposeViolation unless `payload` was sealed by the gate for exactly `purpose`."""
    if not isinstance(payload, PurposeBoundPayload):
        raise PurposeViolation("a provider takes only purpose-bound payloads")
    if payload.purpose is not purpose:
        raise PurposeViolation(f"a {payload.purpose} payload cannot be used for {purpose}")
    expected = hmac.new(_SEAL_KEY, payload.digest(), hashlib.sha256).digest()
    if not hmac.compare_digest(expected, payload._seal):
        raise PurposeViolation("the payload was not sealed by the gate or was altered")


class ConsentView(Protocol):
    """What the payload gate asks consent/: the grants in force for a booking right now."""

    async def grants(self, booking_id: uuid.UUID) -> Mapping[tuple[uuid.UUID, Purpose], uuid.UUID]:
        """(subject, purpose) -> id of the ledger entry that granted it, for grants in force."""
        ...


@dataclass(frozen=True)
class Utterance:
    """One transcript segment as stored: who (pseudonymously) said what, when."""

    subject_id: uuid.UUID
    label: str
    start_ms: int
    end_ms: int
    text: str


def speaker_labels(booking: Booking) -> dict[uuid.UUID, str]:
    """Pseudonymous names as the session shows them: `Host`, `Client 1`, `Client 2`, ..."""
    labels: dict[uuid.UUID, str] = {}
    clients = 0
    for person in booking.participants:
        if person.role is Role.HOST:
            labels[person.id] = "Host"
        else:
            clients += 1
            labels[person.id] = f"Client {clients}"
    return labels


def _names(booking: Booking) -> dict[str, str]:
    """Each participant's full name and its parts (3+ letters) -> their label; a part two
    people share becomes `[name]`, since it cannot say who was meant."""
    labels = speaker_labels(booking)
    names: dict[str, str] = {}
    for person in booking.participants:
        label = labels[person.id]
        names[person.display_name.casefold()] = label
        for part in person.display_name.split():
            key = part.strip(".,").casefold()
            if len(key) < 3 or key == person.display_name.casefold():
                continue
            names[key] = label if names.get(key, label) == label else "[name]"
    return names


class PayloadGate:
    """Builds the payloads of one job's purpose; asking for another purpose is refused."""

    def __init__(self, consent: ConsentView, purpose: Purpose) -> None:
        self._consent = consent
        self.purpose = purpose

    def _bound(self, purpose: Purpose) -> None:
        if purpose is not self.purpose:
            raise PurposeViolation(f"a {self.purpose} job cannot build a {purpose} payload")

    async def _grants(
        self, booking: Booking, people: Iterable[Participant], needed: Sequence[Purpose]
    ) -> tuple[dict[uuid.UUID, tuple[uuid.UUID, ...]], list[Exclusion]]:
        """Entry ids per person who granted every `needed` purpose; the others, excluded."""
        for purpose in needed:
            if purpose not in booking.purposes:
                raise NotPermitted(f"the booking does not request {purpose}")
        grants = await self._consent.grants(booking.id)
        allowed: dict[uuid.UUID, tuple[uuid.UUID, ...]] = {}
        excluded: list[Exclusion] = []
        for person in people:
            missing = [p for p in needed if (person.id, p) not in grants]
            if missing:
                excluded.append(Exclusion(person.id, missing[0]))
            else:
                allowed[person.id] = tuple(grants[(person.id, p)] for p in needed)
        return allowed, excluded

    def _make(
        self,
        purpose: P,
        booking: Booking,
        pieces: Sequence[Piece],
        excluded: Sequence[Exclusion],
    ) -> PurposeBoundPayload[P]:
        payload = PurposeBoundPayload(
            purpose=purpose,
            booking_id=booking.id,
            language=booking.language,
            pieces=tuple(pieces),
            excluded=tuple(excluded),
            _factory=_FACTORY,
        )
        return _seal(payload)

    async def agenda(self, booking: Booking) -> AgendaPayload:
        """Title (the host's) and stated purpose (the words of the client who stated it,
        `stated_by`), if both granted `ai.agenda`. Nobody else's data goes in."""
        self._bound(Purpose.AI_AGENDA)
        host = booking.host
        stater = booking.purpose_author
        allowed, excluded = await self._grants(
            booking, booking.agenda_people, (Purpose.AI_AGENDA,)
        )
        if excluded:
            reason = "the host and the client who stated the purpose must grant ai.agenda"
            raise NotPermitted(reason, excluded=excluded)
        scrub = Redactor(_names(booking))
        title = scrub(booking.title).text
        pieces = [Piece(host.id, "title", DataCategory.BOOKING_TEXT, allowed[host.id], title)]
        if booking.stated_purpose and stater is not None:
            stated = scrub(booking.stated_purpose).text
            pieces.append(
                Piece(stater.id, "stated_purpose", DataCategory.BOOKING_TEXT,
                      allowed[stater.id], stated)
            )
        return self._make(Purpose.AI_AGENDA, booking, pieces, ())

    async def transcription(
        self, booking: Booking, spans: Sequence[AudioSpan]
    ) -> TranscriptionPayload:
        """Only the spans of persons who granted both `recording.audio` and `transcription`."""
        self._bound(Purpose.TRANSCRIPTION)
        needed = (Purpose.RECORDING_AUDIO, Purpose.TRANSCRIPTION)
        allowed, excluded = await self._grants(booking, booking.participants, needed)
        labels = speaker_labels(booking)
        pieces = [
            Piece(
                s.subject_id, labels[s.subject_id], DataCategory.VOICE_AUDIO,
                allowed[s.subject_id], audio=s.audio, mime=s.mime,
                start_ms=s.start_ms, end_ms=s.end_ms,
            )
            for s in sorted(spans, key=lambda s: (s.start_ms, str(s.subject_id)))
            if s.subject_id in allowed and s.subject_id in labels
        ]
        if not pieces:
            raise NotPermitted("no consented audio to transcribe", excluded=excluded)
        return self._make(Purpose.TRANSCRIPTION, booking, pieces, excluded)

    async def summary(
        self, booking: Booking, utterances: Sequence[Utterance], *, consenting_only: bool
    ) -> SummaryPayload:
        """The transcript, if every speaker in it granted `transcription` and `ai.summary`;
        with `consenting_only`, just the consenting speakers' segments."""
        self._bound(Purpose.AI_SUMMARY)
        speakers = {u.subject_id for u in utterances}
        people = [p for p in booking.participants if p.id in speakers]
        needed = (Purpose.TRANSCRIPTION, Purpose.AI_SUMMARY)
        allowed, excluded = await self._grants(booking, people, needed)
        if excluded and not consenting_only:
            raise NotPermitted(
                "not every speaker in the transcript granted ai.summary", excluded=excluded
            )
        scrub = Redactor(_names(booking))
        pieces = [
            Piece(
                u.subject_id, u.label, DataCategory.SPEECH_TEXT, allowed[u.subject_id],
                scrub(u.text).text, start_ms=u.start_ms, end_ms=u.end_ms,
            )
            for u in utterances
            if u.subject_id in allowed
        ]
        if not pieces:
            raise NotPermitted("no speaker in the transcript granted ai.summary", excluded=excluded)
        return self._make(Purpose.AI_SUMMARY, booking, pieces, excluded)
