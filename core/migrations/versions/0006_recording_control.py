"""Media: whether each booking is being recorded, shared by every node and kept over restarts.

Revision ID: 0006_recording_control
Revises: 0003_media
Create Date: 2026-11-22
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0006_recording_control"
down_revision = "0003_media"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "recording_controls",
        sa.Column(
            "booking_id",
            sa.Uuid,
            sa.ForeignKey(
                "bookings.id", ondelete="CASCADE", name="fk_recording_controls_booking_id_bookings"
            ),
            primary_key=True,
        ),
        sa.Column("recording", sa.Boolean, nullable=False),
        sa.Column("changed_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("changed_by", sa.String(80), nullable=False),
    )


def downgrade() -> None:
    op.drop_table("recording_controls")
