"""A person's data key is made once, even when two of their pages ask for it at the same moment
(one person in two bookings, each page sending its first recording offer): the second gets
the key the first made, never a unique-key error (seen as a 500 in the soak)."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime
from pathlib import Path

from sqlalchemy import func, select, text

from core.datakeys import DataKey, access_data_key
from core.runtime import Runtime
from core.settings import Settings
from tests import support
from tests.support.waiting import eventually


async def test_two_first_uses_at_once_share_one_key(pg_url: str, tmp_path: Path) -> None:
    runtime = Runtime.open(Settings(
        database_url=pg_url, data_dir=tmp_path, secret_key=support.SECRET,
        master_key=support.MASTER,
    ))
    now = datetime.now(UTC)

    async def other_page() -> bytes:
        async with runtime.db.session() as session:
            return await access_data_key(session, runtime.keys, "ext-twice", now)

    async def waiting_on_a_lock() -> bool:
        async with runtime.db.session() as session:
            waiting = await session.scalar(text(
                "SELECT count(*) FROM pg_stat_activity "
                "WHERE datname = current_database() AND wait_event_type = 'Lock'"
            ))
        return bool(waiting)

    try:
        async with runtime.db.session() as first:
            mine = await access_data_key(first, runtime.keys, "ext-twice", now)
            # The other page read no key (this one is not committed) and its insert now waits
            # for this transaction: it will meet the unique key once this one commits.
            theirs = asyncio.create_task(other_page())
            await eventually(waiting_on_a_lock, "the second page's insert waits on the first")
        assert await theirs == mine
        async with runtime.db.session() as session:
            rows = await session.scalar(
                select(func.count()).select_from(DataKey).where(DataKey.external_id == "ext-twice")
            )
        assert rows == 1
    finally:
        await runtime.close()
