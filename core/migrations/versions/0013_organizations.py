"""Organizations: one callgate serves several booking platforms, each seeing only its own.

The table `organizations` (id, name, per-organization setting overrides) starts with the
`default` organization, which gets every existing API key, booking, webhook endpoint,
restriction, export log row and consent notice (each organization has its own notice set): a single-organization deployment keeps working with no step
of its own (its `CALLGATE_*` settings are the default organization's values, since it
overrides nothing). Outbox events may name their organization (events without a booking).

It also needs the privacy tables (restrictions, exports), which branch off on their own
(0005_privacy), so it follows both.

Revision ID: 0013_organizations
Revises: 0011_hardening, 0005_privacy
Create Date: 2026-11-30
"""

from __future__ import annotations

from datetime import UTC, datetime

import sqlalchemy as sa
from alembic import op

revision = "0013_organizations"
down_revision = ("0011_hardening", "0005_privacy")
branch_labels = None
depends_on = None

TS = sa.DateTime(timezone=True)
DEFAULT = "default"


def upgrade() -> None:
    orgs = op.create_table(
        "organizations",
        sa.Column("id", sa.String(32), nullable=False),
        sa.Column("name", sa.String(200), nullable=False),
        sa.Column("settings", sa.JSON, nullable=False),
        sa.Column("created_at", TS, nullable=False),
        sa.Column("updated_at", TS, nullable=False),
        sa.PrimaryKeyConstraint("id", name="pk_organizations"),
    )
    now = datetime.now(UTC)
    op.bulk_insert(orgs, [
        {"id": DEFAULT, "name": "Default organization", "settings": {},
         "created_at": now, "updated_at": now},
    ])
    with op.batch_alter_table("api_keys") as batch:  # operator keys: NULL
        batch.add_column(sa.Column("org_id", sa.String(32), nullable=True))
        batch.create_foreign_key(
            "fk_api_keys_org_id_organizations", "organizations", ["org_id"], ["id"]
        )
        batch.create_index("ix_api_keys_org_id", ["org_id"])
    op.execute("UPDATE api_keys SET org_id = 'default'")
    for table in ("bookings", "webhook_endpoints"):
        with op.batch_alter_table(table) as batch:
            batch.add_column(
                sa.Column("org_id", sa.String(32), nullable=False, server_default=DEFAULT)
            )
            batch.create_foreign_key(
                f"fk_{table}_org_id_organizations", "organizations", ["org_id"], ["id"]
            )
            batch.create_index(f"ix_{table}_org_id", ["org_id"])
    with op.batch_alter_table("subject_exports") as batch:
        batch.add_column(
            sa.Column("org_id", sa.String(32), nullable=False, server_default=DEFAULT)
        )
    op.add_column("outbox_events", sa.Column("org_id", sa.String(32), nullable=True))
    # Restrictions are per organization: (org_id, external_id) becomes the key.
    op.create_table(
        "subject_restrictions_by_org",
        sa.Column("org_id", sa.String(32), nullable=False),
        sa.Column("external_id", sa.String(200), nullable=False),
        sa.Column("restricted_at", TS, nullable=False),
        sa.Column("api_key_id", sa.String(24), nullable=True),
        sa.PrimaryKeyConstraint("org_id", "external_id", name="pk_subject_restrictions_org"),
    )
    op.execute(
        "INSERT INTO subject_restrictions_by_org (org_id, external_id, restricted_at, "
        "api_key_id) SELECT 'default', external_id, restricted_at, api_key_id "
        "FROM subject_restrictions"
    )
    op.drop_table("subject_restrictions")
    op.rename_table("subject_restrictions_by_org", "subject_restrictions")
    _notices_by_org()


NOTICES = "consent_notices"
OLD_UNIQUE = ["purpose", "language", "version"]


def _notices_by_org() -> None:
    """Each organization versions its own notices: (org_id, purpose, language, version) is
    unique. The table is append-only (triggers from 0002): adding a column with a constant
    default changes no row; on SQLite the new unique key needs the table rebuilt, so its
    triggers are dropped and made again around the rebuild."""
    op.add_column(
        NOTICES, sa.Column("org_id", sa.String(32), nullable=False, server_default=DEFAULT)
    )
    _swap_unique("uq_consent_notices_purpose", "uq_consent_notices_org_id",
                 ["org_id", *OLD_UNIQUE])


def _swap_unique(old: str, new: str, columns: list[str], *, drop_org: bool = False) -> None:
    if op.get_bind().dialect.name == "postgresql":
        op.drop_constraint(old, NOTICES, type_="unique")
        op.create_unique_constraint(new, NOTICES, columns)
        if drop_org:
            op.drop_column(NOTICES, "org_id")
        return
    for verb in ("update", "delete"):
        op.execute(f"DROP TRIGGER IF EXISTS {NOTICES}_no_{verb}")
    with op.batch_alter_table(NOTICES, recreate="always") as batch:
        batch.drop_constraint(old, type_="unique")
        batch.create_unique_constraint(new, columns)
        if drop_org:
            batch.drop_column("org_id")
    for verb in ("UPDATE", "DELETE"):
        op.execute(
            f"CREATE TRIGGER {NOTICES}_no_{verb.lower()} BEFORE {verb} ON {NOTICES} "
            f"BEGIN SELECT RAISE(ABORT, '{NOTICES} is append-only: {verb} refused'); END"
        )


def downgrade() -> None:
    # Notices of other organizations than the default cannot go back into one set.
    _swap_unique(
        "uq_consent_notices_org_id", "uq_consent_notices_purpose", OLD_UNIQUE, drop_org=True
    )
    op.create_table(
        "subject_restrictions_global",
        sa.Column("external_id", sa.String(200), primary_key=True),
        sa.Column("restricted_at", TS, nullable=False),
        sa.Column("api_key_id", sa.String(24), nullable=True),
    )
    op.execute(
        "INSERT INTO subject_restrictions_global (external_id, restricted_at, api_key_id) "
        "SELECT external_id, MIN(restricted_at), MIN(api_key_id) FROM subject_restrictions "
        "GROUP BY external_id"
    )
    op.drop_table("subject_restrictions")
    op.rename_table("subject_restrictions_global", "subject_restrictions")
    op.drop_column("outbox_events", "org_id")
    with op.batch_alter_table("subject_exports") as batch:
        batch.drop_column("org_id")
    for table in ("webhook_endpoints", "bookings", "api_keys"):
        with op.batch_alter_table(table) as batch:
            batch.drop_index(f"ix_{table}_org_id")
            batch.drop_constraint(f"fk_{table}_org_id_organizations", type_="foreignkey")
            batch.drop_column("org_id")
    op.drop_table("organizations")
