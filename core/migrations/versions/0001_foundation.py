"""Foundation: API keys, bookings, participants, used signaling tickets.

Revision ID: 0001_foundation
Revises:
Create Date: 2026-11-22
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0001_foundation"
down_revision = None
branch_labels = None
depends_on = None

TS = sa.DateTime(timezone=True)


def upgrade() -> None:
    op.create_table(
        "api_keys",
        sa.Column("id", sa.String(24), primary_key=True),
        sa.Column("secret_hash", sa.String(64), nullable=False),
        sa.Column("scope", sa.String(16), nullable=False),
        sa.Column("label", sa.String(200), nullable=False),
        sa.Column("created_at", TS, nullable=False),
        sa.Column("revoked_at", TS, nullable=True),
    )
    op.create_table(
        "bookings",
        sa.Column("id", sa.Uuid, primary_key=True),
        sa.Column("title", sa.String(200), nullable=False),
        sa.Column("stated_purpose", sa.Text, nullable=True),
        sa.Column("language", sa.String(35), nullable=False),
        sa.Column("starts_at", TS, nullable=False),
        sa.Column("ends_at", TS, nullable=False),
        sa.Column("status", sa.String(24), nullable=False),
        sa.Column("recording_policy", sa.String(24), nullable=False),
        sa.Column("requested_purposes", sa.JSON, nullable=False),
        sa.Column("record_automatically", sa.Boolean, nullable=False),
        sa.Column("room_name", sa.String(64), nullable=False),
        sa.Column("room_state", sa.String(24), nullable=False),
        sa.Column("room_attempts", sa.Integer, nullable=False),
        sa.Column("room_error", sa.Text, nullable=True),
        sa.Column("sequence", sa.Integer, nullable=False),
        sa.Column("created_by", sa.String(24), nullable=False),
        sa.Column("idempotency_key", sa.String(200), nullable=True),
        sa.Column("request_hash", sa.String(64), nullable=True),
        sa.Column("created_at", TS, nullable=False),
        sa.Column("updated_at", TS, nullable=False),
        sa.Column("cancelled_at", TS, nullable=True),
        sa.UniqueConstraint("room_name", name="uq_bookings_room_name"),
        sa.UniqueConstraint(
            "created_by", "idempotency_key", name="uq_bookings_created_by"
        ),
    )
    op.create_index("ix_bookings_starts_at", "bookings", ["starts_at"])
    op.create_index("ix_bookings_ends_at", "bookings", ["ends_at"])
    op.create_index("ix_bookings_status", "bookings", ["status"])
    op.create_table(
        "participants",
        sa.Column("id", sa.Uuid, primary_key=True),
        sa.Column(
            "booking_id",
            sa.Uuid,
            sa.ForeignKey(
                "bookings.id",
                ondelete="CASCADE",
                name="fk_participants_booking_id_bookings",
            ),
            nullable=False,
        ),
        sa.Column("position", sa.Integer, nullable=False),
        sa.Column("external_id", sa.String(200), nullable=False),
        sa.Column("display_name", sa.String(200), nullable=False),
        sa.Column("role", sa.String(24), nullable=False),
        sa.Column("adult", sa.Boolean, nullable=False),
        sa.Column("credential_hash", sa.String(64), nullable=False),
        sa.Column("credential_generation", sa.Integer, nullable=False),
        sa.Column("revoked_at", TS, nullable=True),
        sa.Column("created_at", TS, nullable=False),
        sa.UniqueConstraint("credential_hash", name="uq_participants_credential_hash"),
        sa.UniqueConstraint("booking_id", "external_id", name="uq_participants_booking_id"),
    )
    op.create_index("ix_participants_booking_id", "participants", ["booking_id"])
    op.create_index("ix_participants_external_id", "participants", ["external_id"])
    op.create_table(
        "used_tickets",
        sa.Column("nonce", sa.String(32), primary_key=True),
        sa.Column("participant_id", sa.Uuid, nullable=False),
        sa.Column("expires_at", TS, nullable=False),
    )
    op.create_index("ix_used_tickets_expires_at", "used_tickets", ["expires_at"])


def downgrade() -> None:
    op.drop_table("used_tickets")
    op.drop_table("participants")
    op.drop_table("bookings")
    op.drop_table("api_keys")
