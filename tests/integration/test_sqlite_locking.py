"""SQLite: a query that a cancellation interrupts leaves no lock behind.

Every transaction on SQLite takes the write lock up front (BEGIN IMMEDIATE). A task cancelled
while its query runs (a service stopping, a client hanging up) has its connection closed
without a rollback, and its cursor stays referenced by the cancellation's traceback: SQLite
then kept the connection open, with its transaction and the lock, and every other writer
(another node, a restarted app on the same file) waited out its busy timeout and failed with
"database is locked" (CI saw it once, in a test that restarts the app).
"""

from __future__ import annotations

import asyncio
import sqlite3
import threading
from pathlib import Path
from typing import Any

from sqlalchemy import event, text

from core.database import Database


async def test_a_query_cancelled_midway_leaves_the_database_free_for_other_writers(
    tmp_path: Path,
) -> None:
    path = tmp_path / "callgate.db"
    db = Database(f"sqlite+aiosqlite:///{path}")
    running, release = threading.Event(), threading.Event()

    def gate() -> int:  # the query's first row waits here until the test lets it go
        running.set()
        release.wait(60)
        return 1

    @event.listens_for(db.engine.sync_engine, "connect")
    def _with_gate(dbapi_connection: Any, _record: Any) -> None:
        dbapi_connection.create_function("gate", 0, gate)

    try:
        async with db.session() as session:
            await session.execute(text("CREATE TABLE decisions (n integer)"))

        async def read() -> None:
            async with db.session() as session:  # BEGIN IMMEDIATE: the write lock
                await session.execute(text("SELECT gate() FROM (VALUES (1), (2), (3))"))

        reading = asyncio.create_task(read())
        assert await asyncio.to_thread(running.wait, 60), "the query never started"
        reading.cancel()
        release.set()  # its first row comes back to a task that no longer waits for it
        kept = await asyncio.gather(reading, return_exceptions=True)  # its traceback lives on
        assert isinstance(kept[0], asyncio.CancelledError)

        other = sqlite3.connect(path, timeout=0, isolation_level=None)  # does not wait
        try:
            other.execute("INSERT INTO decisions VALUES (1)")
            assert other.execute("SELECT count(*) FROM decisions").fetchone() == (1,)
        finally:
            other.close()
        async with db.session() as session:  # and the engine itself goes on writing
            await session.execute(text("INSERT INTO decisions VALUES (2)"))
            count = (await session.execute(text("SELECT count(*) FROM decisions"))).scalar()
        assert count == 2
    finally:
        release.set()
        await db.close()
