"""Lifecycle, attendance, outbox and outgoing webhooks.

Bookings get the time of each lifecycle transition (the states themselves live in `status`);
attendance keeps each join and leave per pseudonymous participant; the outbox holds every
event told to the outside, written in the transaction of the change; webhook endpoints and
their deliveries carry the events out.

Revision ID: 0009_lifecycle
Revises: 0010_livekit_control
Create Date: 2026-11-30
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0009_lifecycle"
down_revision = "0010_livekit_control"
branch_labels = None
depends_on = None

WHEN = sa.DateTime(timezone=True)


def _fk(table: str, column: str, target: str) -> sa.ForeignKey:
    return sa.ForeignKey(
        f"{target}.id", ondelete="CASCADE", name=f"fk_{table}_{column}_{target}"
    )


def upgrade() -> None:
    with op.batch_alter_table("bookings") as batch:
        for column in ("opened_at", "live_at", "ended_at", "closed_at"):
            batch.add_column(sa.Column(column, WHEN, nullable=True))
    op.create_table(
        "attendance",
        sa.Column("id", sa.Uuid, primary_key=True),
        sa.Column("booking_id", sa.Uuid, _fk("attendance", "booking_id", "bookings"),
                  nullable=False),
        sa.Column("participant_id", sa.Uuid,
                  _fk("attendance", "participant_id", "participants"), nullable=False),
        sa.Column("joined_at", WHEN, nullable=False),
        sa.Column("left_at", WHEN, nullable=True),
        sa.Column("left_how", sa.String(24), nullable=True),
    )
    op.create_index("ix_attendance_booking_id", "attendance", ["booking_id"])
    op.create_index("ix_attendance_participant_id", "attendance", ["participant_id"])
    op.create_table(
        "outbox_events",
        sa.Column("seq", sa.Integer, primary_key=True, autoincrement=True),
        sa.Column("id", sa.String(40), nullable=False),
        sa.Column("type", sa.String(40), nullable=False),
        sa.Column("booking_id", sa.Uuid, nullable=True),
        sa.Column("payload", sa.JSON, nullable=False),
        sa.Column("created_at", WHEN, nullable=False),
        sa.Column("dispatched", sa.Boolean, nullable=False, server_default=sa.false()),
        sa.UniqueConstraint("id", name="uq_outbox_events_id"),
    )
    op.create_index("ix_outbox_events_dispatched", "outbox_events", ["dispatched"])
    op.create_index("ix_outbox_events_created_at", "outbox_events", ["created_at"])
    op.create_table(
        "webhook_endpoints",
        sa.Column("id", sa.Uuid, primary_key=True),
        sa.Column("url", sa.Text, nullable=False),
        sa.Column("description", sa.String(200), nullable=False),
        sa.Column("event_types", sa.JSON, nullable=False),
        sa.Column("secret", sa.Text, nullable=False),
        sa.Column("previous_secret", sa.Text, nullable=True),
        sa.Column("previous_secret_until", WHEN, nullable=True),
        sa.Column("disabled_at", WHEN, nullable=True),
        sa.Column("disabled_reason", sa.String(200), nullable=True),
        sa.Column("failing_since", WHEN, nullable=True),
        sa.Column("created_by", sa.String(24), nullable=False),
        sa.Column("created_at", WHEN, nullable=False),
        sa.Column("updated_at", WHEN, nullable=False),
    )
    op.create_table(
        "webhook_deliveries",
        sa.Column("id", sa.Uuid, primary_key=True),
        sa.Column("endpoint_id", sa.Uuid,
                  _fk("webhook_deliveries", "endpoint_id", "webhook_endpoints"), nullable=False),
        sa.Column("event_seq", sa.Integer, nullable=False),
        sa.Column("event_id", sa.String(40), nullable=False),
        sa.Column("event_type", sa.String(40), nullable=False),
        sa.Column("ordering_key", sa.String(40), nullable=False),
        sa.Column("status", sa.String(16), nullable=False),
        sa.Column("attempts", sa.Integer, nullable=False),
        sa.Column("next_attempt_at", WHEN, nullable=False),
        sa.Column("lease_until", WHEN, nullable=True),
        sa.Column("last_attempt_at", WHEN, nullable=True),
        sa.Column("last_status_code", sa.Integer, nullable=True),
        sa.Column("last_error", sa.String(300), nullable=True),
        sa.Column("delivered_at", WHEN, nullable=True),
        sa.Column("created_at", WHEN, nullable=False),
        sa.UniqueConstraint("endpoint_id", "event_seq", name="uq_webhook_deliveries_endpoint_id"),
    )
    op.create_index(
        "ix_webhook_deliveries_due", "webhook_deliveries", ["status", "next_attempt_at"]
    )
    op.create_index(
        "ix_webhook_deliveries_order", "webhook_deliveries",
        ["endpoint_id", "ordering_key", "event_seq"],
    )


def downgrade() -> None:
    op.drop_table("webhook_deliveries")
    op.drop_table("webhook_endpoints")
    op.drop_table("outbox_events")
    op.drop_table("attendance")
    with op.batch_alter_table("bookings") as batch:
        for column in ("closed_at", "ended_at", "live_at", "opened_at"):
            batch.drop_column(column)
