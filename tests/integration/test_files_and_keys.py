"""What callgate leaves on disk is its own user's alone, whatever the umask: the data folder
0700, the SQLite database (and its WAL) and the key files 0600. And `callgate keys revoke`
takes the key id or the whole key, and says in one line what is wrong with anything else."""

from __future__ import annotations

import os
import shutil
import stat
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy import text

from core.accounts import Scope, access_caller, do_create_key
from core.clock import SystemClock
from core.database import Database
from core.errors import AuthenticationFailed
from core.runtime import Runtime
from core.settings import Settings
from tests.support import databases as support


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


@pytest.fixture
def loose_umask() -> Iterator[None]:
    previous = os.umask(0o022)
    try:
        yield
    finally:
        os.umask(previous)


@pytest.mark.usefixtures("loose_umask")
async def test_data_folder_database_and_keys_are_private(
    sqlite_template: Path, tmp_path: Path
) -> None:
    data = tmp_path / "var"
    data.mkdir(mode=0o755)
    os.chmod(data, 0o755)  # noqa: S103  an existing, too open folder is tightened
    shutil.copyfile(sqlite_template, data / "callgate.db")
    assert mode(data / "callgate.db") == 0o644
    settings = Settings(database_url=f"sqlite+aiosqlite:///{data}/callgate.db", data_dir=data)
    runtime = Runtime.open(settings)
    try:
        async with runtime.db.session() as session:
            await do_create_key(session, Scope.ADMIN, "perm test", SystemClock().now())
            await session.execute(text("SELECT 1"))
    finally:
        await runtime.close()
    assert mode(data) == 0o700
    for name in ("callgate.db", "secret.key", "master.key"):
        assert mode(data / name) == 0o600, name
    for extra in ("callgate.db-wal", "callgate.db-shm"):
        if (data / extra).exists():
            assert mode(data / extra) == 0o600, extra

    fresh = tmp_path / "fresh"  # a folder callgate makes itself, with a new database file
    runtime = Runtime.open(
        Settings(database_url=f"sqlite+aiosqlite:///{fresh}/new.db", data_dir=fresh)
    )
    try:
        await runtime.db.ping()
    finally:
        await runtime.close()
    assert mode(fresh) == 0o700
    assert mode(fresh / "new.db") == 0o600


def callgate(*args: str, database_url: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "CALLGATE_DATABASE_URL": database_url}
    program = [sys.executable, "-c", "from api.cli import main; main()", *args]
    return subprocess.run(program, env=env, capture_output=True, text=True, timeout=120,
                          check=False)


def keys_in(database_url: str, count: int) -> list[str]:
    async def make() -> list[str]:
        db = Database(database_url)
        try:
            async with db.session() as session:
                return [
                    (await do_create_key(session, Scope.SCHEDULER, "cli", SystemClock().now()))[1]
                    for _ in range(count)
                ]
        finally:
            await db.close()

    return support.run_blocking(make)


def still_valid(database_url: str, key: str) -> bool:
    async def check() -> bool:
        db = Database(database_url)
        try:
            async with db.session() as session:
                await access_caller(session, key)
            return True
        except AuthenticationFailed:
            return False
        finally:
            await db.close()

    return support.run_blocking(check)


def test_keys_revoke_takes_the_id_or_the_whole_key(sqlite_url: str) -> None:
    by_key, by_id = keys_in(sqlite_url, 2)
    whole = callgate("keys", "revoke", by_key, database_url=sqlite_url)
    assert whole.returncode == 0, whole.stderr
    assert whole.stdout.strip() == f"revoked {by_key.split('_')[1]}"
    assert by_key not in whole.stdout  # the secret part is not echoed
    assert not still_valid(sqlite_url, by_key)

    key_id = by_id.split("_")[1]
    bare = callgate("keys", "revoke", key_id, database_url=sqlite_url)
    assert bare.returncode == 0, bare.stderr
    assert not still_valid(sqlite_url, by_id)

    for wrong, says in (("nonsense", "give the key id"), ("0" * 16, "no API key")):
        result = callgate("keys", "revoke", wrong, database_url=sqlite_url)
        assert result.returncode == 1
        lines = result.stderr.strip().splitlines()
        assert len(lines) == 1, result.stderr
        assert lines[0].startswith("error: ")
        assert says in lines[0]
        assert "Traceback" not in result.stderr
