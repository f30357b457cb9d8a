"""Media: recordings, per-person data keys, the recording download log.

Revision ID: 0003_media
Revises: 0001_foundation
Create Date: 2026-11-22
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0003_media"
down_revision = "0001_foundation"
branch_labels = None
depends_on = None

TS = sa.DateTime(timezone=True)


def upgrade() -> None:
    op.create_table(
        "data_keys",
        sa.Column("external_id", sa.String(200), primary_key=True),
        sa.Column("wrapped", sa.LargeBinary, nullable=True),
        sa.Column("created_at", TS, nullable=False),
        sa.Column("destroyed_at", TS, nullable=True),
    )
    op.create_table(
        "recordings",
        sa.Column("id", sa.Uuid, primary_key=True),
        sa.Column(
            "booking_id",
            sa.Uuid,
            sa.ForeignKey("bookings.id", ondelete="CASCADE", name="fk_recordings_booking_id_bookings"),
            nullable=False,
        ),
        sa.Column(
            "participant_id",
            sa.Uuid,
            sa.ForeignKey(
                "participants.id", ondelete="CASCADE", name="fk_recordings_participant_id_participants"
            ),
            nullable=False,
        ),
        sa.Column("kind", sa.String(24), nullable=False),
        sa.Column("state", sa.String(24), nullable=False),
        sa.Column("media_type", sa.String(40), nullable=False),
        sa.Column("started_at", TS, nullable=False),
        sa.Column("ended_at", TS, nullable=True),
        sa.Column("consent_entry_ids", sa.JSON, nullable=False),
        sa.Column("frames", sa.Integer, nullable=False),
        sa.Column("size", sa.BigInteger, nullable=False),
        sa.Column("sha256", sa.String(64), nullable=True),
        sa.Column("retain_until", TS, nullable=False),
        sa.Column("path", sa.String(300), nullable=False),
    )
    op.create_index("ix_recordings_booking_id", "recordings", ["booking_id"])
    op.create_index("ix_recordings_participant_id", "recordings", ["participant_id"])
    op.create_index("ix_recordings_retain_until", "recordings", ["retain_until"])
    op.create_index("ix_recordings_state", "recordings", ["state"])
    op.create_table(
        "recording_downloads",
        sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
        sa.Column(
            "recording_id",
            sa.Uuid,
            sa.ForeignKey(
                "recordings.id", ondelete="CASCADE", name="fk_recording_downloads_recording_id_recordings"
            ),
            nullable=False,
        ),
        sa.Column("at", TS, nullable=False),
        sa.Column("participant_id", sa.Uuid, nullable=True),
        sa.Column("api_key_id", sa.String(24), nullable=True),
        sa.Column("byte_range", sa.String(100), nullable=True),
    )
    op.create_index("ix_recording_downloads_recording_id", "recording_downloads", ["recording_id"])


def downgrade() -> None:
    op.drop_table("recording_downloads")
    op.drop_table("recordings")
    op.drop_table("data_keys")
