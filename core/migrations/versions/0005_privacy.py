"""Privacy: restrictions of processing, and the logs of exports, erasures, withdrawals with
deletion, and retention runs.

None of these tables holds a name. The export log holds the external id it exported, which an
erasure replaces with the tombstone; the erasure log holds only the tombstone.

Revision ID: 0005_privacy
Revises: 0001_foundation
Create Date: 2026-11-22
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0005_privacy"
down_revision = "0001_foundation"
branch_labels = None
depends_on = None

TS = sa.DateTime(timezone=True)


def upgrade() -> None:
    op.create_table(
        "subject_restrictions",
        sa.Column("external_id", sa.String(200), primary_key=True),
        sa.Column("restricted_at", TS, nullable=False),
        sa.Column("api_key_id", sa.String(24), nullable=True),
    )
    op.create_table(
        "subject_exports",
        sa.Column("id", sa.Uuid, primary_key=True),
        sa.Column("at", TS, nullable=False),
        sa.Column("external_id", sa.String(200), nullable=False),
        sa.Column("api_key_id", sa.String(24), nullable=True),
    )
    op.create_index("ix_subject_exports_external_id", "subject_exports", ["external_id"])
    op.create_table(
        "subject_erasures",
        sa.Column("id", sa.Uuid, primary_key=True),
        sa.Column("at", TS, nullable=False),
        sa.Column("tombstone", sa.String(64), nullable=False),
        sa.Column("api_key_id", sa.String(24), nullable=True),
        sa.Column("counts", sa.JSON, nullable=False),
    )
    op.create_table(
        "consent_withdrawals",
        sa.Column("id", sa.Uuid, primary_key=True),
        sa.Column("at", TS, nullable=False),
        sa.Column("booking_id", sa.Uuid, nullable=False),
        sa.Column("participant_id", sa.Uuid, nullable=False),
        sa.Column("purpose", sa.String(32), nullable=False),
        sa.Column("entry_id", sa.Uuid, nullable=False),
        sa.Column("counts", sa.JSON, nullable=False),
    )
    op.create_index(
        "ix_consent_withdrawals_participant_id", "consent_withdrawals", ["participant_id"]
    )
    op.create_table(
        "retention_runs",
        sa.Column("id", sa.Uuid, primary_key=True),
        sa.Column("started_at", TS, nullable=False),
        sa.Column("finished_at", TS, nullable=False),
        sa.Column("dry_run", sa.Boolean, nullable=False),
        sa.Column("trigger", sa.String(16), nullable=False),
        sa.Column("counts", sa.JSON, nullable=False),
    )
    op.create_index("ix_retention_runs_started_at", "retention_runs", ["started_at"])


def downgrade() -> None:
    op.drop_table("retention_runs")
    op.drop_table("consent_withdrawals")
    op.drop_table("subject_erasures")
    op.drop_table("subject_exports")
    op.drop_table("subject_restrictions")
