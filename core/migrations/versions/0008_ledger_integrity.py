"""Consent: sealed ledger entries, integrity alarms, material notice changes.

- `consent_ledger.entry_mac`: the seal (keyed BLAKE2b of the entry hash) of every entry written
  from now on; older entries stay unsealed and are covered by the signed checkpoints.
- `consent_alarms`: what the integrity watch found, shared by every node, and who acknowledged
  it (the only table here that is updated: the acknowledgement).
- `consent_notices.material`, `change_note`, `effective_at`: a version marked as a material
  change makes earlier grants for its purpose stop counting from `effective_at`.

Revision ID: 0008_ledger_integrity
Revises: 0002_consent, 0009_lifecycle
Create Date: 2026-11-30
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0008_ledger_integrity"
# The consent tables come from 0002; 0009 is the newest migration on main when this was rebased.
down_revision = ("0002_consent", "0009_lifecycle")
branch_labels = None
depends_on = None

TS = sa.DateTime(timezone=True)


def upgrade() -> None:
    # ADD COLUMN changes no row, so the append-only triggers are not involved.
    op.add_column("consent_ledger", sa.Column("entry_mac", sa.String(64), nullable=True))
    op.add_column(
        "consent_notices",
        sa.Column("material", sa.Boolean, nullable=False, server_default=sa.false()),
    )
    op.add_column("consent_notices", sa.Column("change_note", sa.Text, nullable=True))
    op.add_column("consent_notices", sa.Column("effective_at", TS, nullable=True))
    op.create_table(
        "consent_alarms",
        sa.Column("id", sa.Uuid, primary_key=True),
        sa.Column("detected_at", TS, nullable=False),
        sa.Column("first_bad_seq", sa.BigInteger, nullable=False),
        sa.Column("problem", sa.String(32), nullable=False),
        sa.Column("detail", sa.String(500), nullable=False),
        sa.Column("head_seq", sa.BigInteger, nullable=False),
        sa.Column("acknowledged_at", TS, nullable=True),
        sa.Column("acknowledged_by", sa.String(64), nullable=True),
        sa.Column("acknowledgement_mac", sa.String(64), nullable=True),
    )
    op.create_index("ix_consent_alarms_detected_at", "consent_alarms", ["detected_at"])


def downgrade() -> None:
    op.drop_index("ix_consent_alarms_detected_at", "consent_alarms")
    op.drop_table("consent_alarms")
    with op.batch_alter_table("consent_notices") as batch:
        batch.drop_column("effective_at")
        batch.drop_column("change_note")
        batch.drop_column("material")
    with op.batch_alter_table("consent_ledger") as batch:
        batch.drop_column("entry_mac")
