"""The database: one async SQLAlchemy engine, SQLite (embedded) or PostgreSQL (scale).

Every table is declared on `Base`; times are stored timezone-aware (`UTCDateTime`) so code
never sees a naive datetime, whichever backend is below.
"""

from __future__ import annotations

import asyncio
import contextlib
import enum
import os
import sqlite3
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from sqlalchemy import DateTime, Enum, MetaData, event, text
from sqlalchemy.engine import Dialect
from sqlalchemy.engine.interfaces import DBAPIConnection
from sqlalchemy.ext.asyncio import (
    AsyncEngine,
    AsyncSession,
    async_sessionmaker,
    create_async_engine,
)
from sqlalchemy.orm import DeclarativeBase
from sqlalchemy.pool import ConnectionPoolEntry
from sqlalchemy.types import TypeDecorator

# Stable constraint names so Alembic migrations are the same on SQLite and PostgreSQL.
NAMING = {
    "ix": "ix_%(column_0_label)s",
    "uq": "uq_%(table_name)s_%(column_0_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}


class Base(DeclarativeBase):
    metadata = MetaData(naming_convention=NAMING)


class UTCDateTime(TypeDecorator[datetime]):
    """A timestamp that only accepts and only returns timezone-aware UTC datetimes."""

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError("naive datetime given to a UTC column")
        value = value.astimezone(UTC)
        # SQLite keeps text; store it naive-UTC so string order is time order.
        return value.replace(tzinfo=None) if dialect.name == "sqlite" else value

    def process_result_value(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


def enum_column(cls: type[enum.StrEnum], length: int = 24) -> Enum:
    """A portable enum column storing the member's value (a stable code), not its name."""
    return Enum(
        cls, native_enum=False, length=length, values_callable=lambda e: [m.value for m in e]
    )


def is_sqlite(url: str) -> bool:
    return url.startswith("sqlite")


def _sqlite_path(url: str) -> Path | None:
    path = url.split(":///", 1)[1] if ":///" in url else ""
    return Path(path) if path and path != ":memory:" else None


def private_file(path: Path) -> None:
    """Make `path` exist with mode 0600 whatever the umask (SQLite gives its -wal and -shm
    files the database file's mode)."""
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
    os.close(fd)
    os.chmod(path, 0o600)


class _SQLiteConnection(sqlite3.Connection):
    """A connection whose close ends its transaction first.

    sqlite3_close_v2 does not close a connection that still has a statement open (a cursor
    something still references: a query cancelled between its first row and the rest, whose
    traceback holds the cursor). The connection lingers as a "zombie", with its transaction
    and the write lock BEGIN IMMEDIATE took, until that cursor is freed, and every other
    writer waits busy_timeout and fails with "database is locked". SQLAlchemy closes a
    connection without a rollback when a cancellation interrupts it (it invalidates it);
    rolling back here aborts the open statements and releases the lock whatever still
    references them."""

    def close(self) -> None:
        with contextlib.suppress(sqlite3.Error):
            if self.in_transaction:
                self.rollback()
        super().close()


def create_engine(url: str, **kwargs: Any) -> AsyncEngine:
    """An engine for `url`; on SQLite with WAL, foreign keys and serialized writers."""
    if not is_sqlite(url):
        kwargs.setdefault("pool_size", 20)
        kwargs.setdefault("max_overflow", 20)
        kwargs.setdefault("pool_pre_ping", True)
        return create_async_engine(url, **kwargs)
    path = _sqlite_path(url)
    if path is not None:
        path.parent.mkdir(parents=True, exist_ok=True)
        private_file(path)
    connect_args = dict(kwargs.pop("connect_args", {}))
    connect_args.setdefault("factory", _SQLiteConnection)
    engine = create_async_engine(url, connect_args=connect_args, **kwargs)

    @event.listens_for(engine.sync_engine, "connect")
    def _on_connect(dbapi_conn: DBAPIConnection, _record: ConnectionPoolEntry) -> None:
        # Take transaction control from pysqlite so BEGIN IMMEDIATE below is what runs.
        dbapi_conn.isolation_level = None
        cursor = dbapi_conn.cursor()
        cursor.execute("PRAGMA journal_mode=WAL")
        cursor.execute("PRAGMA foreign_keys=ON")
        cursor.execute("PRAGMA busy_timeout=10000")
        cursor.execute("PRAGMA synchronous=NORMAL")
        # Deleted and overwritten content is zeroed, not left in free pages: an erased
        # person's bytes leave the file (with `checkpoint()` for the WAL).
        cursor.execute("PRAGMA secure_delete=ON")
        cursor.close()

    @event.listens_for(engine.sync_engine, "begin")
    def _on_begin(conn: Any) -> None:
        # A deferred transaction that later writes can fail with "database is locked" at
        # once; IMMEDIATE takes the write lock up front and waits (busy_timeout) instead.
        conn.exec_driver_sql("BEGIN IMMEDIATE")

    return engine


class Database:
    """Owns the engine and hands out sessions; `close()` is idempotent."""

    def __init__(self, url: str, **engine_kwargs: Any) -> None:
        self.url = url
        self.engine = create_engine(url, **engine_kwargs)
        self.sessions = async_sessionmaker(self.engine, expire_on_commit=False)
        self._closed = False

    @property
    def dialect(self) -> str:
        return self.engine.dialect.name

    @asynccontextmanager
    async def session(self) -> AsyncIterator[AsyncSession]:
        """A session whose transaction commits on success and rolls back on any error."""
        async with self.sessions() as session, session.begin():
            yield session

    async def checkpoint(self) -> None:
        """SQLite: copy the WAL into the database file and truncate it, so content just
        deleted (zeroed under secure_delete) is no longer readable in the WAL either. A
        reader holding an old snapshot can stall it; tried a few times. No-op elsewhere."""
        if self.dialect != "sqlite":
            return
        for _ in range(20):
            async with self.engine.connect() as conn:
                # On the driver connection itself: SQLAlchemy would open a transaction first,
                # and a checkpoint cannot run inside one.
                raw = await conn.get_raw_connection()
                driver: Any = raw.driver_connection
                cursor = await driver.execute("PRAGMA wal_checkpoint(TRUNCATE)")
                busy = await cursor.fetchone()
                await cursor.close()
            if busy is None or busy[0] == 0:
                return
            await asyncio.sleep(0.05)

    async def ping(self) -> None:
        async with self.engine.connect() as conn:
            await conn.execute(text("SELECT 1"))

    async def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        await self.engine.dispose()
