"""Consent ledger (PostgreSQL): each entry's canonical body, kept by the database itself.

`consent_ledger.body` is a generated column (STORED): PostgreSQL renders the canonical JSON an
entry's hash covers from the entry's own columns whenever a row is written, and no statement
can write it otherwise. A full verification then reads these bytes instead of rendering them
per entry in every walk (consent/walk.py trusts them only while the column is still generated
by exactly this expression, and renders from the columns otherwise). Only immutable
pg_catalog functions: a generated column allows nothing else, and nothing a database role can
redefine. Adding the column rewrites the table once, computing the body of every existing row
(no row trigger fires). SQLite has no such column; its walk renders in Python.

Revision ID: 0014_ledger_body
Revises: 0013_organizations
Create Date: 2026-12-01
"""

from __future__ import annotations

from alembic import op

revision = "0014_ledger_body"
down_revision = "0013_organizations"
branch_labels = None
depends_on = None


def _part(field: str, width: int) -> str:
    return f"lpad(EXTRACT({field} FROM at AT TIME ZONE 'UTC')::integer::text, {width}, '0')"


_MICROS = "EXTRACT(MICROSECONDS FROM at AT TIME ZONE 'UTC')::bigint"

# A frozen copy of consent.walk.BODY_SQL as of this revision.
BODY = (
    "'{\"actor\":\"' || actor::text || '\",\"at\":\"' || "
    f"{_part('YEAR', 4)} || '-' || {_part('MONTH', 2)} || '-' || {_part('DAY', 2)} || 'T' || "
    f"{_part('HOUR', 2)} || ':' || {_part('MINUTE', 2)} || ':' || "
    f"lpad(({_MICROS} / 1000000)::text, 2, '0') || '.' || "
    f"lpad(({_MICROS} % 1000000)::text, 6, '0') || "
    "'Z\",\"booking\":\"' || booking_id::text || '\",\"decision\":\"' || decision::text || "
    "'\",\"id\":\"' || id::text || '\",\"method\":\"' || method::text || "
    "'\",\"notice_id\":\"' || notice_id::text || '\",\"notice_sha256\":\"' || "
    "notice_sha256::text || '\",\"purpose\":\"' || purpose::text || '\",\"seq\":' || "
    "seq::text || ',\"subject\":\"' || subject_id::text || '\"}'"
)


def upgrade() -> None:
    if op.get_bind().dialect.name != "postgresql":
        return
    op.execute(
        f"ALTER TABLE consent_ledger ADD COLUMN body text GENERATED ALWAYS AS ({BODY}) STORED"
    )


def downgrade() -> None:
    if op.get_bind().dialect.name != "postgresql":
        return
    op.execute("ALTER TABLE consent_ledger DROP COLUMN body")
