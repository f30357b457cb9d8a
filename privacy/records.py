"""privacy's own rows: the logs of exports, erasures, withdrawals with deletion, retention runs.

None holds a name. An export row names the external id it exported until that person is
erased (then it holds the tombstone); an erasure row holds only the tombstone and counts.
"""

from __future__ import annotations

import enum
import uuid
from datetime import datetime
from typing import Any

from sqlalchemy import JSON, Boolean, String, Uuid
from sqlalchemy.orm import Mapped, mapped_column

from core.database import Base, UTCDateTime, enum_column
from core.purposes import Purpose


class Trigger(enum.StrEnum):
    SCHEDULE = "schedule"
    CLI = "cli"
    API = "api"


class ExportRecord(Base):
    __tablename__ = "subject_exports"

    id: Mapped[uuid.UUID] = mapped_column(Uuid, primary_key=True, default=uuid.uuid4)
    at: Mapped[datetime] = mapped_column(UTCDateTime())
    org_id: Mapped[str] = mapped_column(String(32))
    external_id: Mapped[str] = mapped_column(String(200), index=True)
    api_key_id: Mapped[str | None] = mapped_column(String(24), nullable=True)


class ErasureRecord(Base):
    __tablename__ = "subject_erasures"

    id: Mapped[uuid.UUID] = mapped_column(Uuid, primary_key=True, default=uuid.uuid4)
    at: Mapped[datetime] = mapped_column(UTCDateTime())
    tombstone: Mapped[str] = mapped_column(String(64))
    api_key_id: Mapped[str | None] = mapped_column(String(24), nullable=True)
    counts: Mapped[dict[str, Any]] = mapped_column(JSON)

    def view(self) -> dict[str, Any]:
        return {
            "id": str(self.id),
            "at": self.at.isoformat(),
            "tombstone": self.tombstone,
            "counts": dict(self.counts),
        }


class WithdrawalRecord(Base):
    __tablename__ = "consent_withdrawals"

    id: Mapped[uuid.UUID] = mapped_column(Uuid, primary_key=True, default=uuid.uuid4)
    at: Mapped[datetime] = mapped_column(UTCDateTime())
    booking_id: Mapped[uuid.UUID] = mapped_column(Uuid)
    participant_id: Mapped[uuid.UUID] = mapped_column(Uuid, index=True)
    purpose: Mapped[Purpose] = mapped_column(enum_column(Purpose, 32))
    entry_id: Mapped[uuid.UUID] = mapped_column(Uuid)
    counts: Mapped[dict[str, Any]] = mapped_column(JSON)

    def view(self) -> dict[str, Any]:
        return {
            "id": str(self.id),
            "at": self.at.isoformat(),
            "booking_id": str(self.booking_id),
            "purpose": self.purpose.value,
            "entry_id": str(self.entry_id),
            "deleted": dict(self.counts),
        }


class RetentionRun(Base):
    __tablename__ = "retention_runs"

    id: Mapped[uuid.UUID] = mapped_column(Uuid, primary_key=True, default=uuid.uuid4)
    started_at: Mapped[datetime] = mapped_column(UTCDateTime(), index=True)
    finished_at: Mapped[datetime] = mapped_column(UTCDateTime())
    dry_run: Mapped[bool] = mapped_column(Boolean)
    trigger: Mapped[Trigger] = mapped_column(enum_column(Trigger, 16))
    counts: Mapped[dict[str, Any]] = mapped_column(JSON)

    def view(self) -> dict[str, Any]:
        return {
            "id": str(self.id),
            "started_at": self.started_at.isoformat(),
            "finished_at": self.finished_at.isoformat(),
            "dry_run": self.dry_run,
            "trigger": self.trigger.value,
            "counts": dict(self.counts),
        }
