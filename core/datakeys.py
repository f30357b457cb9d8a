"""Per-person data keys: each person's recordings, transcript lines and summary shares are
encrypted under their own key (media and summaries both use them).

The key is stored only wrapped by the master key (`core.crypto.Keyring.wrap`), bound to the
person's external id. Erasing a person destroys the wrapped key (crypto-shredding): their files
stay on disk as noise, everyone else's stay readable.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from cryptography.exceptions import InvalidTag
from sqlalchemy import LargeBinary, String, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncSession
from sqlalchemy.orm import Mapped, mapped_column

from core.crypto import Keyring
from core.database import Base, Database, UTCDateTime
from core.errors import Gone, Unavailable


class DataKey(Base):
    __tablename__ = "data_keys"

    external_id: Mapped[str] = mapped_column(String(200), primary_key=True)
    wrapped: Mapped[bytes | None] = mapped_column(LargeBinary, nullable=True)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime())
    destroyed_at: Mapped[datetime | None] = mapped_column(UTCDateTime(), nullable=True)


def _context(external_id: str) -> str:
    return f"data-key:{external_id}"


async def access_data_key(
    session: AsyncSession, keys: Keyring, external_id: str, now: datetime
) -> bytes:
    """The person's data key, made on first use; Gone once it was destroyed (erased)."""
    row = await session.get(DataKey, external_id)
    if row is None:
        key = Keyring.new_data_key()
        made = DataKey(
            external_id=external_id, wrapped=keys.wrap(key, _context(external_id)), created_at=now
        )
        try:
            async with session.begin_nested():  # a savepoint: the caller's transaction lives on
                session.add(made)
        except IntegrityError:  # the person's other page made it at the same moment: theirs
            row = await session.get(DataKey, external_id, populate_existing=True)
            if row is None:
                raise
        else:
            return key
    if row.wrapped is None:
        raise Gone("this person's data key was destroyed (erased)")
    try:
        return keys.unwrap(row.wrapped, _context(external_id))
    except InvalidTag:
        raise Unavailable(
            "this person's data key is wrapped under a master key this server does not have "
            "(list it in CALLGATE_PREVIOUS_MASTER_KEYS)"
        ) from None


@dataclass
class Rewrap:
    """What one `do_rewrap_data_keys` pass did."""

    rewrapped: int = 0
    current: int = 0  # already under the current master key (an earlier, interrupted pass)


async def do_rewrap_data_keys(db: Database, keys: Keyring, batch: int = 200) -> Rewrap:
    """Re-wrap every live data key under the current master key, `batch` keys per
    transaction, in key order: an interrupted pass is simply run again (keys already
    re-wrapped are recognized and skipped). Data keys exist only in memory meanwhile; no
    recording is touched (they stay under their data keys)."""
    done = Rewrap()
    after = ""
    while True:
        async with db.session() as session:
            rows = list((await session.scalars(
                select(DataKey)
                .where(DataKey.external_id > after, DataKey.wrapped.is_not(None))
                .order_by(DataKey.external_id)
                .limit(batch)
            )).all())
            for row in rows:
                context = _context(row.external_id)
                wrapped = row.wrapped or b""  # never empty: selected as not null
                if keys.unwrap_current(wrapped, context) is not None:
                    done.current += 1
                    continue
                row.wrapped = keys.wrap(keys.unwrap(wrapped, context), context)
                done.rewrapped += 1
        if len(rows) < batch:
            return done
        after = rows[-1].external_id


async def do_destroy_data_key(session: AsyncSession, external_id: str, now: datetime) -> bool:
    """Destroy the wrapped key for good; True if there was one to destroy."""
    row = await session.get(DataKey, external_id)
    if row is None or row.wrapped is None:
        return False
    row.wrapped = None
    row.destroyed_at = now
    return True
