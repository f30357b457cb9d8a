"""LiveKit webhook events already handled, kept in the database so a delivery LiveKit retries
(or anyone replays) after a restart is still recognized without Redis.

Rows older than a day are pruned as new ones arrive: LiveKit gives up retrying long before.
"""

from __future__ import annotations

from datetime import datetime, timedelta

from sqlalchemy import String, delete
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Mapped, mapped_column

from core.database import Base, Database, UTCDateTime

KEPT = timedelta(days=1)


class WebhookEventSeen(Base):
    __tablename__ = "livekit_events"

    event_id: Mapped[str] = mapped_column(String(200), primary_key=True)
    received_at: Mapped[datetime] = mapped_column(UTCDateTime(), index=True)


async def do_mark_seen(db: Database, event_id: str, now: datetime) -> bool:
    """Record the event; False if it was recorded before (a duplicate)."""
    try:
        async with db.session() as session:
            await session.execute(
                delete(WebhookEventSeen).where(WebhookEventSeen.received_at < now - KEPT)
            )
            session.add(WebhookEventSeen(event_id=event_id, received_at=now))
    except IntegrityError:
        return False
    return True
