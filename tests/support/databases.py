"""Shared test plumbing: where the real services are, and throwaway databases on them."""

from __future__ import annotations

import asyncio
import base64
import concurrent.futures
import os
import secrets
import shutil
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import TypeVar

import asyncpg

from core.migrate import upgrade

PG_DSN = os.environ.get("CALLGATE_TEST_PG_DSN", "postgresql://postgres@127.0.0.1:54329/postgres")
REDIS_URL = os.environ.get("CALLGATE_TEST_REDIS_URL", "redis://127.0.0.1:6379/0")
SECRET = "test-secret-" + "x" * 40
MASTER = base64.b64encode(b"k" * 32).decode()
NEW_MASTER = base64.b64encode(b"n" * 32).decode()  # the master key a rotation moves to


T = TypeVar("T")


def run_blocking(make: Callable[[], Awaitable[T]]) -> T:
    """Run a coroutine to completion from sync code, even under a running event loop
    (pytest-asyncio sets session fixtures up inside its loop)."""

    async def runner() -> T:
        return await make()

    with concurrent.futures.ThreadPoolExecutor(1) as pool:
        return pool.submit(asyncio.run, runner()).result()


def pg_url(dbname: str) -> str:
    base = PG_DSN.rsplit("/", 1)[0].replace("postgresql://", "postgresql+asyncpg://", 1)
    return f"{base}/{dbname}"


async def _admin(sql: str) -> None:
    conn = await asyncpg.connect(PG_DSN)
    try:
        await conn.execute(sql)
    finally:
        await conn.close()


def make_pg_template() -> str:
    """A migrated database to clone per test (CREATE DATABASE ... TEMPLATE is fast)."""
    name = f"cg_tpl_{os.getpid()}_{secrets.token_hex(4)}"
    run_blocking(lambda: _admin(f'CREATE DATABASE "{name}"'))
    run_blocking(lambda: upgrade(pg_url(name)))
    return name


async def clone_pg(template: str) -> str:
    name = f"cg_t_{secrets.token_hex(6)}"
    await _admin(f'CREATE DATABASE "{name}" TEMPLATE "{template}"')
    return name


async def drop_pg(name: str) -> None:
    await _admin(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def make_sqlite_template(folder: Path) -> Path:
    path = folder / "template.db"
    run_blocking(lambda: upgrade(f"sqlite+aiosqlite:///{path}"))
    return path


def clone_sqlite(template: Path, target: Path) -> str:
    shutil.copyfile(template, target)
    return f"sqlite+aiosqlite:///{target}"
