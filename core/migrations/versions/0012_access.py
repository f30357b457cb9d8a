"""Access after the call: who may read a booking's recordings, transcript and summary
(`bookings.recording_access`, existing bookings get the default `own`), and the log of every
read of them (`data_reads`: who, what, when, how many bytes, whose data; no names).
Participants' `adult` flag becomes an age band (adult -> `adult`, not adult -> `minor`) with
an optional age, and corrections of names and ages are logged (`participant_corrections`:
which fields, when, by which key; no values).

Revision ID: 0012_access
Revises: 0008_ledger_integrity
Create Date: 2026-11-30
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0012_access"
down_revision = "0008_ledger_integrity"
branch_labels = None
depends_on = None

TS = sa.DateTime(timezone=True)


def upgrade() -> None:
    with op.batch_alter_table("bookings") as batch:
        batch.add_column(
            sa.Column("recording_access", sa.String(24), nullable=False, server_default="own")
        )
    with op.batch_alter_table("participants") as batch:
        batch.add_column(
            sa.Column("age_band", sa.String(24), nullable=False, server_default="adult")
        )
        batch.add_column(sa.Column("age", sa.Integer, nullable=True))
    op.execute("UPDATE participants SET age_band = 'minor' WHERE NOT adult")
    with op.batch_alter_table("participants") as batch:
        batch.drop_column("adult")
    op.create_table(
        "participant_corrections",
        sa.Column("id", sa.Uuid, primary_key=True),
        sa.Column("at", TS, nullable=False),
        sa.Column(
            "booking_id", sa.Uuid, sa.ForeignKey("bookings.id", ondelete="CASCADE"),
            nullable=False,
        ),
        sa.Column(
            "participant_id", sa.Uuid, sa.ForeignKey("participants.id", ondelete="CASCADE"),
            nullable=False,
        ),
        sa.Column("api_key_id", sa.String(24), nullable=False),
        sa.Column("fields", sa.JSON, nullable=False),
    )
    op.create_index(
        "ix_participant_corrections_booking_id", "participant_corrections", ["booking_id"]
    )
    op.create_index(
        "ix_participant_corrections_participant_id", "participant_corrections",
        ["participant_id"],
    )
    op.create_table(
        "data_reads",
        sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
        sa.Column("at", TS, nullable=False),
        sa.Column(
            "booking_id", sa.Uuid, sa.ForeignKey("bookings.id", ondelete="CASCADE"),
            nullable=False,
        ),
        sa.Column("kind", sa.String(24), nullable=False),
        sa.Column("item_id", sa.Uuid, nullable=False),
        sa.Column("reader_participant_id", sa.Uuid, nullable=True),
        sa.Column("reader_api_key_id", sa.String(24), nullable=True),
        sa.Column("subjects", sa.JSON, nullable=False),
        sa.Column("bytes", sa.BigInteger, nullable=False),
    )
    op.create_index("ix_data_reads_at", "data_reads", ["at"])
    op.create_index("ix_data_reads_booking_id", "data_reads", ["booking_id"])
    op.create_index(
        "ix_data_reads_reader_participant_id", "data_reads", ["reader_participant_id"]
    )


def downgrade() -> None:
    op.drop_table("data_reads")
    op.drop_table("participant_corrections")
    with op.batch_alter_table("participants") as batch:
        batch.add_column(
            sa.Column("adult", sa.Boolean, nullable=False, server_default=sa.true())
        )
    op.execute("UPDATE participants SET adult = (age_band = 'adult')")
    with op.batch_alter_table("participants") as batch:
        batch.drop_column("age")
        batch.drop_column("age_band")
    with op.batch_alter_table("bookings") as batch:
        batch.drop_column("recording_access")
