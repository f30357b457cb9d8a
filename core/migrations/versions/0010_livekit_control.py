"""LiveKit mode: the identities kept out of each room (revoked links, erased people), and
every egress callgate started (whose track, which purpose, which consent entry, which state).

A revoked person's LiveKit token stays valid until it expires; LiveKit only checks it when
connecting. Every node refuses a join these rows name (a token of a link generation below
`admit_from`), by removing the person again.

Revision ID: 0010_livekit_control
Revises: 0007_purpose_author
Create Date: 2026-11-30
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0010_livekit_control"
down_revision = "0007_purpose_author"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "livekit_revocations",
        sa.Column("room_name", sa.String(64), primary_key=True),
        sa.Column("identity", sa.String(64), primary_key=True),
        sa.Column(
            "booking_id",
            sa.Uuid,
            sa.ForeignKey(
                "bookings.id", ondelete="CASCADE", name="fk_livekit_revocations_booking_id_bookings"
            ),
            nullable=False,
        ),
        sa.Column("reason", sa.String(16), nullable=False),
        sa.Column("admit_from", sa.BigInteger, nullable=False),
        sa.Column("revoked_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("removed_at", sa.DateTime(timezone=True), nullable=True),
    )
    op.create_index(
        "ix_livekit_revocations_booking_id", "livekit_revocations", ["booking_id"]
    )


    op.create_table(
        "livekit_egresses",
        sa.Column("id", sa.Uuid, primary_key=True),
        sa.Column("egress_id", sa.String(64), nullable=True, unique=True),
        sa.Column(
            "booking_id",
            sa.Uuid,
            sa.ForeignKey(
                "bookings.id", ondelete="CASCADE", name="fk_livekit_egresses_booking_id_bookings"
            ),
            nullable=False,
        ),
        sa.Column("participant_id", sa.Uuid, nullable=False),
        sa.Column("room_name", sa.String(64), nullable=False),
        sa.Column("track_sid", sa.String(64), nullable=False),
        sa.Column("kind", sa.String(8), nullable=False),
        sa.Column("consent_entry_ids", sa.JSON, nullable=False),
        sa.Column("state", sa.String(16), nullable=False),
        sa.Column("started_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
    )
    op.create_index("ix_livekit_egresses_booking_id", "livekit_egresses", ["booking_id"])
    live = sa.text("state IN ('starting', 'active')")
    op.create_index(
        "ix_livekit_egresses_live_track", "livekit_egresses", ["room_name", "track_sid"],
        unique=True, sqlite_where=live, postgresql_where=live,
    )


def downgrade() -> None:
    op.drop_table("livekit_egresses")
    op.drop_table("livekit_revocations")
