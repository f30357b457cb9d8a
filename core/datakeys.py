"""Per-person data keys: each person's recordings, transcript lines and summary shares are
encrypted under their own key (media and summaries both use them).

The key is stored only wrapped by the master key (`core.crypto.Keyring.wrap`), bound to the
person's external id. Erasing a person destroys the wrapped key (crypto-shredding): their files
stay on disk as noise, everyone else's stay readable.
"""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import LargeBinary, String
from sqlalchemy.ext.asyncio import AsyncSession
from sqlalchemy.orm import Mapped, mapped_column

from core.crypto import Keyring
from core.database import Base, UTCDateTime
from core.errors import Gone


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
        session.add(
            DataKey(external_id=external_id, wrapped=keys.wrap(key, _context(external_id)),
                    created_at=now)
        )
        await session.flush()
        return key
    if row.wrapped is None:
        raise Gone("this person's data key was destroyed (erased)")
    return keys.unwrap(row.wrapped, _context(external_id))


async def do_destroy_data_key(session: AsyncSession, external_id: str, now: datetime) -> bool:
    """Destroy the wrapped key for good; True if there was one to destroy."""
    row = await session.get(DataKey, external_id)
    if row is None or row.wrapped is None:
        return False
    row.wrapped = None
    row.destroyed_at = now
    return True
