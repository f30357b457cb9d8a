"""Notices: the text a person reads before deciding, per purpose and language, versioned.

A notice is identified by its SHA-256; an old version is never changed (the table refuses
UPDATE and DELETE), a new text is a new version. Each organization has its own set (its own
versions, with its operator's and AI provider's names and retention days: the defaults are
rendered with the organization's settings). Defaults ship in English
(`consent/notices/<purpose>.md`); operators add their own as files
(`<data_dir>/notices/<purpose>.<language>.md`, published at start-up when the text changed,
for the default organization) or through the admin API (for the caller's organization).
"""

from __future__ import annotations

import uuid
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

from sqlalchemy import Boolean, Integer, String, Text, Uuid, func, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncSession
from sqlalchemy.orm import Mapped, mapped_column

from consent.purposes import Purpose
from core.bookings import Booking, BookingStatus
from core.crypto import sha256_hex
from core.database import Base, Database, UTCDateTime, enum_column
from core.errors import InvalidInput, NotFound
from core.events import NoticeChanged
from core.organizations import DEFAULT_ORG, effective_settings, get_orgs
from core.settings import Settings
from core.subjects import Category
from core.subjects import retention_days as category_days

DEFAULTS = Path(__file__).resolve().parent / "notices"
DEFAULT_LANGUAGE = "en"
MAX_TEXT = 20_000


class Notice(Base):
    __tablename__ = "consent_notices"

    id: Mapped[uuid.UUID] = mapped_column(Uuid, primary_key=True, default=uuid.uuid4)
    org_id: Mapped[str] = mapped_column(String(32))  # whose notice set it is in
    purpose: Mapped[Purpose] = mapped_column(enum_column(Purpose, 32))
    language: Mapped[str] = mapped_column(String(35))
    version: Mapped[int] = mapped_column(Integer)
    text: Mapped[str] = mapped_column(Text)
    sha256: Mapped[str] = mapped_column(String(64), index=True)
    source: Mapped[str] = mapped_column(String(200))
    created_at: Mapped[datetime] = mapped_column(UTCDateTime())
    # A material change: grants under earlier versions stop counting from `effective_at`.
    material: Mapped[bool] = mapped_column(Boolean, default=False)
    change_note: Mapped[str | None] = mapped_column(Text, default=None)
    effective_at: Mapped[datetime | None] = mapped_column(UTCDateTime(), default=None)


@dataclass(frozen=True)
class NoticeText:
    purpose: Purpose
    language: str
    text: str
    source: str
    material: bool = False  # earlier grants for the purpose stop counting from effective_at
    change_note: str | None = None  # what changed, shown to people asked again
    effective_at: datetime | None = None  # default: at once


# Which data category keeps each purpose's data (the notice states its period in days);
# agendas have their own period, inside the summaries category.
RETENTION_CATEGORY: dict[Purpose, Category] = {
    Purpose.RECORDING_AUDIO: Category.RECORDINGS,
    Purpose.RECORDING_VIDEO: Category.RECORDINGS,
    Purpose.TRANSCRIPTION: Category.TRANSCRIPTS,
    Purpose.AI_SUMMARY: Category.SUMMARIES,
}


def retention_days(settings: Settings, purpose: Purpose) -> int:
    """How many days the data made for `purpose` is kept (`settings`: the organization's
    effective ones, `core.organizations.effective_settings`)."""
    if purpose is Purpose.AI_AGENDA:
        return settings.agenda_retention_days
    return category_days(settings)[RETENTION_CATEGORY[purpose]]


def default_texts(settings: Settings, *, files: bool = True) -> list[NoticeText]:
    """The shipped English notices with the operator's and AI provider's names and each
    purpose's retention days filled in (from `settings`: an organization's are
    `core.organizations.effective_settings`), then, with `files`, the operator's own files
    from `<data_dir>/notices/`."""
    names = {"operator": settings.consent_operator_name, "ai_provider": settings.ai_provider_name()}
    out = []
    for purpose in Purpose:
        raw = (DEFAULTS / f"{purpose.value}.md").read_text(encoding="utf-8")
        text = raw.format(**names, retention_days=retention_days(settings, purpose))
        out.append(NoticeText(purpose, DEFAULT_LANGUAGE, text, "default"))
    folder = settings.data_dir / "notices"
    if files and folder.is_dir():
        for path in sorted(folder.glob("*.md")):
            purpose_code, _, language = path.stem.rpartition(".")
            if purpose_code in {p.value for p in Purpose} and language:
                text = path.read_text(encoding="utf-8")
                out.append(NoticeText(Purpose(purpose_code), language, text, f"file:{path.name}"))
    return out


def normalize_language(language: str) -> str:
    return language.strip().replace("_", "-").lower()


async def latest_notice(
    session: AsyncSession, purpose: Purpose, language: str, org_id: str = DEFAULT_ORG
) -> Notice | None:
    query = (
        select(Notice)
        .where(
            Notice.org_id == org_id, Notice.purpose == purpose,
            Notice.language == normalize_language(language),
        )
        .order_by(Notice.version.desc())
        .limit(1)
    )
    return (await session.execute(query)).scalar_one_or_none()


async def current_notice(
    session: AsyncSession, purpose: Purpose, language: str, org_id: str
) -> Notice:
    """The organization's notice shown for `purpose` to someone whose booking speaks
    `language`: that language, else its primary subtag (de-AT -> de), else English."""
    wanted = normalize_language(language)
    for candidate in dict.fromkeys((wanted, wanted.split("-")[0], DEFAULT_LANGUAGE)):
        notice = await latest_notice(session, purpose, candidate, org_id)
        if notice is not None:
            return notice
    raise NotFound(f"no notice is published for {purpose.value}")


async def do_publish_notice(
    session: AsyncSession, text: NoticeText, now: datetime, org_id: str = DEFAULT_ORG
) -> tuple[Notice, bool]:
    """Publish `text` as the next version of the organization's notice, unless it equals the
    latest; (notice, created)."""
    body = text.text.strip() + "\n"
    if not text.text.strip():
        raise InvalidInput.field(("body", "text"), "a notice cannot be empty")
    if len(body) > MAX_TEXT + 1:  # the text, plus the line break it is stored with
        raise InvalidInput.field(("body", "text"), f"at most {MAX_TEXT} characters")
    language = normalize_language(text.language)
    latest = await latest_notice(session, text.purpose, language, org_id)
    digest = sha256_hex(body)
    if latest is not None and latest.sha256 == digest:
        return latest, False
    notice = Notice(
        org_id=org_id,
        purpose=text.purpose,
        language=language,
        version=(latest.version + 1) if latest is not None else 1,
        text=body,
        sha256=digest,
        source=text.source,
        created_at=now,
        material=text.material,
        change_note=text.change_note,
        effective_at=(text.effective_at or now) if text.material else None,
    )
    session.add(notice)
    await session.flush()
    return notice, True


async def seed_notices(
    db: Database, settings: Settings, now: datetime, org_id: str = DEFAULT_ORG
) -> int:
    """Publish the organization's shipped notices (rendered with `settings`, its own) and,
    for the default organization, the file notices, where they differ from the stored ones;
    how many were new. Safe to run on several nodes at once (a lost race is a unique-key
    conflict)."""
    created = 0
    for text in default_texts(settings, files=org_id == DEFAULT_ORG):
        try:
            async with db.session() as session:
                latest = await latest_notice(session, text.purpose, text.language, org_id)
                # A shipped default never replaces a version an operator published; it does
                # replace an older default, so the notice keeps stating the current retention
                # days and names from the settings.
                if latest is not None and text.source == "default" and latest.source != "default":
                    continue
                _, new = await do_publish_notice(session, text, now, org_id)
                created += int(new)
        except IntegrityError:
            continue
    return created


async def seed_all_notices(db: Database, settings: Settings, now: datetime) -> int:
    """`seed_notices` for every organization, each with its own settings."""
    async with db.session() as session:
        orgs = await get_orgs(session)
    created = 0
    for org in orgs:
        created += await seed_notices(db, effective_settings(settings, org), now, org.id)
    return created


async def list_notices(session: AsyncSession, org_id: str) -> list[Notice]:
    """The latest version of every (purpose, language) of the organization's notices."""
    newest = (
        select(Notice.purpose, Notice.language, func.max(Notice.version).label("version"))
        .where(Notice.org_id == org_id)
        .group_by(Notice.purpose, Notice.language)
        .subquery()
    )
    query = (
        select(Notice)
        .where(Notice.org_id == org_id)
        .join(
            newest,
            (Notice.purpose == newest.c.purpose)
            & (Notice.language == newest.c.language)
            & (Notice.version == newest.c.version),
        )
        .order_by(Notice.purpose, Notice.language)
    )
    return list((await session.execute(query)).scalars())


@dataclass(frozen=True)
class Supersession:
    """A material version newer than a notice: grants under that notice stop counting."""

    version: int
    effective_at: datetime
    change_note: str | None


async def versions_of(
    session: AsyncSession, notice_ids: Iterable[uuid.UUID]
) -> dict[uuid.UUID, int]:
    """The version number of each given notice (ids that name no notice are left out)."""
    query = select(Notice.id, Notice.version).where(Notice.id.in_(set(notice_ids)))
    return {row[0]: row[1] for row in await session.execute(query)}


async def supersessions(
    session: AsyncSession, notice_ids: Iterable[uuid.UUID]
) -> dict[uuid.UUID, Supersession]:
    """For each given notice with a newer material version of its purpose and language, the
    one that takes effect first (the moment grants under the given notice stop counting)."""
    ids = set(notice_ids)
    if not ids:
        return {}
    shown = list((await session.execute(select(Notice).where(Notice.id.in_(ids)))).scalars())
    keys = {(n.org_id, n.purpose, n.language) for n in shown}
    material = [
        n for n in (
            await session.execute(select(Notice).where(Notice.material.is_(True)))
        ).scalars()
        if (n.org_id, n.purpose, n.language) in keys
    ]
    out: dict[uuid.UUID, Supersession] = {}
    for notice in shown:
        later = [
            m for m in material
            if (m.org_id, m.purpose, m.language) == (notice.org_id, notice.purpose, notice.language)
            and m.version > notice.version
        ]
        if later:
            first = min(later, key=lambda m: (m.effective_at or m.created_at, m.version))
            out[notice.id] = Supersession(
                first.version, first.effective_at or first.created_at, first.change_note
            )
    return out


async def bookings_asking(
    session: AsyncSession, purpose: Purpose, now: datetime, org_id: str
) -> list[uuid.UUID]:
    """The organization's bookings not yet over and not cancelled that request `purpose`
    (whose pages a material change of its notice concerns)."""
    query = select(Booking.id, Booking.requested_purposes).where(
        Booking.org_id == org_id, Booking.ends_at > now,
        Booking.status != BookingStatus.CANCELLED,
    )
    return [
        booking_id
        for booking_id, purposes in (await session.execute(query)).all()
        if purpose.value in purposes
    ]


def notice_changed_event(notice: Notice, booking_ids: list[uuid.UUID]) -> NoticeChanged:
    return NoticeChanged(
        purpose=notice.purpose,
        language=notice.language,
        notice_id=notice.id,
        version=notice.version,
        booking_ids=booking_ids,
    )


async def notice_versions(
    session: AsyncSession, purpose: Purpose, language: str, org_id: str
) -> list[Notice]:
    """Every version of one purpose's notice in one language, oldest first."""
    query = (
        select(Notice)
        .where(
            Notice.org_id == org_id, Notice.purpose == purpose,
            Notice.language == normalize_language(language),
        )
        .order_by(Notice.version)
    )
    return list((await session.execute(query)).scalars())


async def get_notice_by_sha256(session: AsyncSession, sha256: str) -> Notice | None:
    query = select(Notice).where(Notice.sha256 == sha256.lower()).order_by(Notice.version)
    return (await session.execute(query.limit(1))).scalar_one_or_none()


def notice_view(notice: Notice) -> dict[str, object]:
    return {
        "id": str(notice.id),
        "purpose": notice.purpose.value,
        "version": notice.version,
        "language": notice.language,
        "text": notice.text,
        "sha256": notice.sha256,
        "source": notice.source,
        "created_at": notice.created_at.isoformat(),
        "material": notice.material,
        "change_note": notice.change_note,
        "effective_at": notice.effective_at.isoformat() if notice.effective_at else None,
    }
