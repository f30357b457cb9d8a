"""LiveKit webhook events already handled, so deduplication survives a restart without Redis.

Revision ID: 0011_hardening
Revises: 0012_access
Create Date: 2026-11-30
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0011_hardening"
down_revision = "0012_access"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "livekit_events",
        sa.Column("event_id", sa.String(200), nullable=False),
        sa.Column("received_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("event_id", name="pk_livekit_events"),
    )
    op.create_index("ix_livekit_events_received_at", "livekit_events", ["received_at"])


def downgrade() -> None:
    op.drop_index("ix_livekit_events_received_at", table_name="livekit_events")
    op.drop_table("livekit_events")
