"""Bookings: which client stated the booking's purpose (their words, their `ai.agenda` consent).

Existing bookings with a stated purpose get their first client, which is what callgate assumed
before the scheduler could say.

Revision ID: 0007_purpose_author
Revises: 0001_foundation
Create Date: 2026-11-22
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0007_purpose_author"
down_revision = "0001_foundation"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("participants") as batch:
        batch.add_column(
            sa.Column("purpose_author", sa.Boolean, nullable=False, server_default=sa.false())
        )
    op.execute(
        """
        UPDATE participants SET purpose_author = TRUE
        WHERE role = 'client' AND position = (
            SELECT MIN(p.position) FROM participants p
            WHERE p.booking_id = participants.booking_id AND p.role = 'client'
        ) AND booking_id IN (SELECT id FROM bookings WHERE stated_purpose IS NOT NULL)
        """
    )


def downgrade() -> None:
    with op.batch_alter_table("participants") as batch:
        batch.drop_column("purpose_author")
