"""Deleting many rows without holding a long lock: a bounded batch per transaction."""

from __future__ import annotations

from typing import Any, cast

from sqlalchemy import ColumnElement, Table, delete, func, literal_column, select
from sqlalchemy.engine import CursorResult

from core.database import Database

BATCH = 5000


def table_of(model: Any) -> Table:
    """The Core table of an ORM model (typed as a plain FromClause by SQLAlchemy)."""
    return cast(Table, model.__table__)


async def count_where(db: Database, table: Table, condition: ColumnElement[bool]) -> int:
    async with db.session() as session:
        found = await session.scalar(select(func.count()).select_from(table).where(condition))
    return int(found or 0)


async def delete_where(
    db: Database,
    table: Table,
    condition: ColumnElement[bool],
    *,
    dry_run: bool = False,
    batch: int = BATCH,
) -> int:
    """Delete the rows of `table` matching `condition`, `batch` at a time (each batch its
    own short transaction); with `dry_run`, only count them."""
    if dry_run:
        return await count_where(db, table, condition)
    # By physical row id (PostgreSQL ctid, SQLite rowid) from an index scan of `condition`:
    # each batch touches only its own rows, where an IN over the primary key made PostgreSQL
    # scan the whole table once per batch.
    postgres = db.dialect == "postgresql"
    row: ColumnElement[Any] = literal_column("ctid" if postgres else "rowid")
    total = 0
    while True:
        chosen = select(row).select_from(table).where(condition).limit(batch)
        if postgres:
            matched = row == func.any(func.array(chosen.scalar_subquery()))
        else:
            matched = row.in_(chosen.scalar_subquery())
        async with db.session() as session:
            result: CursorResult[Any] = await session.execute(  # type: ignore[assignment]
                delete(table).where(matched)
            )
        done = int(result.rowcount or 0)
        total += done
        if done < batch:
            return total
