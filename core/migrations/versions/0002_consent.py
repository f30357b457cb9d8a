"""Consent: notices, the append-only hash-chained ledger, signed checkpoints.

The ledger, the notices and the checkpoints are insert-only: triggers on both backends refuse
UPDATE and DELETE, so a bug (or a hurried operator) cannot rewrite what a person decided.

Revision ID: 0002_consent
Revises: 0001_foundation
Create Date: 2026-11-22
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0002_consent"
down_revision = "0001_foundation"
branch_labels = None
depends_on = None

TS = sa.DateTime(timezone=True)
IMMUTABLE = ("consent_ledger", "consent_notices", "consent_checkpoints")


def upgrade() -> None:
    op.create_table(
        "consent_notices",
        sa.Column("id", sa.Uuid, primary_key=True),
        sa.Column("purpose", sa.String(32), nullable=False),
        sa.Column("language", sa.String(35), nullable=False),
        sa.Column("version", sa.Integer, nullable=False),
        sa.Column("text", sa.Text, nullable=False),
        sa.Column("sha256", sa.String(64), nullable=False),
        sa.Column("source", sa.String(200), nullable=False),
        sa.Column("created_at", TS, nullable=False),
        sa.UniqueConstraint(
            "purpose", "language", "version", name="uq_consent_notices_purpose"
        ),
    )
    op.create_index("ix_consent_notices_sha256", "consent_notices", ["sha256"])
    op.create_table(
        "consent_ledger",
        sa.Column("seq", sa.BigInteger, primary_key=True, autoincrement=False),
        sa.Column("id", sa.Uuid, nullable=False),
        sa.Column("at", TS, nullable=False),
        sa.Column("booking_id", sa.Uuid, nullable=False),
        sa.Column("subject_id", sa.Uuid, nullable=False),
        sa.Column("purpose", sa.String(32), nullable=False),
        sa.Column("decision", sa.String(16), nullable=False),
        sa.Column("notice_id", sa.Uuid, nullable=False),
        sa.Column("notice_sha256", sa.String(64), nullable=False),
        sa.Column("method", sa.String(24), nullable=False),
        sa.Column("actor", sa.String(16), nullable=False),
        sa.Column("prev_hash", sa.String(64), nullable=False),
        sa.Column("entry_hash", sa.String(64), nullable=False),
        sa.UniqueConstraint("id", name="uq_consent_ledger_id"),
    )
    # Newest-first log pages: each filter has an index ending in seq, so a page is one range
    # scan backwards from the cursor.
    op.create_index("ix_consent_ledger_booking", "consent_ledger", ["booking_id", "seq"])
    op.create_index("ix_consent_ledger_subject", "consent_ledger", ["subject_id", "seq"])
    op.create_index(
        "ix_consent_ledger_purpose", "consent_ledger", ["purpose", "decision", "seq"]
    )
    op.create_index("ix_consent_ledger_decision", "consent_ledger", ["decision", "seq"])
    op.create_index("ix_consent_ledger_at", "consent_ledger", ["at", "seq"])
    op.create_table(
        "consent_checkpoints",
        sa.Column("id", sa.Uuid, primary_key=True),
        sa.Column("seq", sa.BigInteger, nullable=False),
        sa.Column("entry_hash", sa.String(64), nullable=False),
        sa.Column("signed_at", TS, nullable=False),
        sa.Column("key_id", sa.String(16), nullable=False),
        sa.Column("public_key", sa.String(64), nullable=False),
        sa.Column("signature", sa.String(128), nullable=False),
    )
    op.create_index("ix_consent_checkpoints_seq", "consent_checkpoints", ["seq"])
    for table in IMMUTABLE:
        _refuse_changes(table)


def _refuse_changes(table: str) -> None:
    if op.get_bind().dialect.name == "postgresql":
        op.execute(
            f"""
            CREATE FUNCTION {table}_refuse() RETURNS trigger LANGUAGE plpgsql AS $$
            BEGIN
              RAISE EXCEPTION '{table} is append-only: % refused', TG_OP
                USING ERRCODE = 'insufficient_privilege';
            END $$
            """
        )
        op.execute(
            f"CREATE TRIGGER {table}_append_only BEFORE UPDATE OR DELETE ON {table} "
            f"FOR EACH ROW EXECUTE FUNCTION {table}_refuse()"
        )
        # TRUNCATE bypasses row triggers; refuse it separately.
        op.execute(
            f"CREATE TRIGGER {table}_no_truncate BEFORE TRUNCATE ON {table} "
            f"FOR EACH STATEMENT EXECUTE FUNCTION {table}_refuse()"
        )
        return
    for verb in ("UPDATE", "DELETE"):
        op.execute(
            f"CREATE TRIGGER {table}_no_{verb.lower()} BEFORE {verb} ON {table} "
            f"BEGIN SELECT RAISE(ABORT, '{table} is append-only: {verb} refused'); END"
        )


def downgrade() -> None:
    postgres = op.get_bind().dialect.name == "postgresql"
    for table in IMMUTABLE:
        if postgres:
            op.execute(f"DROP TRIGGER IF EXISTS {table}_append_only ON {table}")
            op.execute(f"DROP TRIGGER IF EXISTS {table}_no_truncate ON {table}")
            op.execute(f"DROP FUNCTION IF EXISTS {table}_refuse()")
        else:
            op.execute(f"DROP TRIGGER IF EXISTS {table}_no_update")
            op.execute(f"DROP TRIGGER IF EXISTS {table}_no_delete")
    op.drop_table("consent_checkpoints")
    op.drop_table("consent_ledger")
    op.drop_table("consent_notices")
