"""AI jobs: job rows, the processing register, transcripts and segments, summaries, agendas.

Revision ID: 0004_summaries
Revises: 0001_foundation
Create Date: 2026-11-22
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0004_summaries"
down_revision = "0001_foundation"
branch_labels = None
depends_on = None

TS = sa.DateTime(timezone=True)


def _booking_fk(table: str) -> sa.Column:  # type: ignore[type-arg]
    return sa.Column(
        "booking_id",
        sa.Uuid,
        sa.ForeignKey("bookings.id", ondelete="CASCADE", name=f"fk_{table}_booking_id_bookings"),
        nullable=False,
    )


def _output(table: str, *columns: sa.Column) -> None:  # type: ignore[type-arg]
    op.create_table(
        table,
        sa.Column("id", sa.Uuid, primary_key=True),
        _booking_fk(table),
        sa.Column("job_id", sa.Uuid, nullable=False),
        sa.Column("purpose", sa.String(32), nullable=False),
        sa.Column("language", sa.String(35), nullable=False),
        *columns,
        sa.Column("created_at", TS, nullable=False),
        sa.Column("retain_until", TS, nullable=False),
        sa.UniqueConstraint("job_id", name=f"uq_{table}_job_id"),
    )
    op.create_index(f"ix_{table}_booking_id", table, ["booking_id"])
    op.create_index(f"ix_{table}_retain_until", table, ["retain_until"])


def upgrade() -> None:
    op.create_table(
        "jobs",
        sa.Column("id", sa.Uuid, primary_key=True),
        _booking_fk("jobs"),
        sa.Column("kind", sa.String(24), nullable=False),
        sa.Column("status", sa.String(24), nullable=False),
        sa.Column("generation", sa.Integer, nullable=False),
        sa.Column("dedupe_key", sa.String(200), nullable=False),
        sa.Column("attempts", sa.Integer, nullable=False),
        sa.Column("provider_attempts", sa.Integer, nullable=False),
        sa.Column("progress", sa.Integer, nullable=False),
        sa.Column("error_code", sa.String(64), nullable=True),
        sa.Column("error", sa.Text, nullable=True),
        sa.Column("result_id", sa.Uuid, nullable=True),
        sa.Column("excluded_subjects", sa.JSON, nullable=False),
        sa.Column("created_at", TS, nullable=False),
        sa.Column("updated_at", TS, nullable=False),
        sa.Column("started_at", TS, nullable=True),
        sa.Column("finished_at", TS, nullable=True),
        sa.UniqueConstraint("dedupe_key", name="uq_jobs_dedupe_key"),
    )
    op.create_index("ix_jobs_booking_id", "jobs", ["booking_id"])
    op.create_index("ix_jobs_status", "jobs", ["status"])
    op.create_table(
        "processing_register",
        sa.Column("id", sa.Uuid, primary_key=True),
        sa.Column("at", TS, nullable=False),
        sa.Column("booking_id", sa.Uuid, nullable=False),
        sa.Column("job_id", sa.Uuid, nullable=True),
        sa.Column("purpose", sa.String(32), nullable=False),
        sa.Column("subjects", sa.JSON, nullable=False),
        sa.Column("data_categories", sa.JSON, nullable=False),
        sa.Column("entry_ids", sa.JSON, nullable=False),
        sa.Column("provider", sa.String(40), nullable=False),
        sa.Column("model", sa.String(100), nullable=False),
        sa.Column("endpoint", sa.String(200), nullable=False),
        sa.Column("input_bytes", sa.Integer, nullable=False),
        sa.Column("outcome", sa.String(16), nullable=False),
        sa.Column("detail", sa.Text, nullable=False),
    )
    op.create_index("ix_processing_register_at", "processing_register", ["at"])
    op.create_index("ix_processing_register_booking_id", "processing_register", ["booking_id"])
    op.create_index("ix_processing_register_job_id", "processing_register", ["job_id"])
    _output("transcripts")
    op.create_table(
        "transcript_segments",
        sa.Column("id", sa.Uuid, primary_key=True),
        sa.Column(
            "transcript_id",
            sa.Uuid,
            sa.ForeignKey(
                "transcripts.id",
                ondelete="CASCADE",
                name="fk_transcript_segments_transcript_id_transcripts",
            ),
            nullable=False,
        ),
        sa.Column("position", sa.Integer, nullable=False),
        sa.Column("subject_id", sa.Uuid, nullable=False),
        sa.Column("label", sa.String(64), nullable=False),
        sa.Column("start_ms", sa.Integer, nullable=False),
        sa.Column("end_ms", sa.Integer, nullable=False),
        sa.Column("text", sa.Text, nullable=False),
        sa.Column("entry_ids", sa.JSON, nullable=False),
    )
    op.create_index(
        "ix_transcript_segments_transcript_id", "transcript_segments", ["transcript_id"]
    )
    op.create_index("ix_transcript_segments_subject_id", "transcript_segments", ["subject_id"])
    _output(
        "summaries",
        sa.Column("body", sa.JSON, nullable=False),
        sa.Column("subjects", sa.JSON, nullable=False),
        sa.Column("entry_ids", sa.JSON, nullable=False),
    )
    _output(
        "agendas",
        sa.Column("items", sa.JSON, nullable=False),
        sa.Column("subjects", sa.JSON, nullable=False),
        sa.Column("entry_ids", sa.JSON, nullable=False),
    )


def downgrade() -> None:
    op.drop_table("agendas")
    op.drop_table("summaries")
    op.drop_table("transcript_segments")
    op.drop_table("transcripts")
    op.drop_table("processing_register")
    op.drop_table("jobs")
