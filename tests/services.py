"""Wait for the real PostgreSQL and Redis the tests use; fail loudly when they do not answer.

Run by `make services` before the suite. There is no skip: a missing service is a failure.
"""

from __future__ import annotations

import asyncio
import sys
import time

import asyncpg
import redis.asyncio as aioredis

from tests.support import PG_DSN, REDIS_URL


async def _wait(deadline_s: float = 30.0) -> list[str]:
    problems: list[str] = []
    for name, probe in (("PostgreSQL", _pg), ("Redis", _redis)):
        start = time.monotonic()
        while True:
            try:
                await probe()
                break
            except Exception as exc:  # keep polling until the deadline
                if time.monotonic() - start > deadline_s:
                    problems.append(f"{name} is not reachable: {exc!r}")
                    break
                await asyncio.sleep(0.5)
    return problems


async def _pg() -> None:
    conn = await asyncpg.connect(PG_DSN)
    await conn.close()


async def _redis() -> None:
    client = aioredis.from_url(REDIS_URL)
    try:
        await client.ping()
    finally:
        await client.aclose()


def main() -> int:
    problems = asyncio.run(_wait())
    for problem in problems:
        print(problem, file=sys.stderr)
    if not problems:
        print(f"services ready: PostgreSQL ({PG_DSN}), Redis ({REDIS_URL})")
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
