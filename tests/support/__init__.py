"""What the tests (and bench/) share: the real services and throwaway databases on them
(`databases`, re-exported here), waiting for conditions (`waiting.eventually`), bookings and
decisions through the real API (`bookings`, `consent`), seeded rows (`consent_bookings`,
`signaling`, `privacy`), media sources (`media`), a live server (`liveserver`), AI job helpers
(`ai`) and recording probes (`recording`). Import the submodule you need."""

from tests.support.databases import (
    MASTER,
    PG_DSN,
    REDIS_URL,
    SECRET,
    clone_pg,
    clone_sqlite,
    drop_pg,
    make_pg_template,
    make_sqlite_template,
    pg_url,
    run_blocking,
)
from tests.support.waiting import eventually

__all__ = [
    "MASTER",
    "PG_DSN",
    "REDIS_URL",
    "SECRET",
    "clone_pg",
    "clone_sqlite",
    "drop_pg",
    "eventually",
    "make_pg_template",
    "make_sqlite_template",
    "pg_url",
    "run_blocking",
]
