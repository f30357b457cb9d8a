"""Editing the ledger the way an intruder with database access would (triggers off)."""

from __future__ import annotations

import base64

from sqlalchemy import text

from consent.checkpoints import Signer
from core.crypto import Keyring
from core.database import Database
from tests.support import databases as support

KEYRING = Keyring(support.SECRET.encode(), base64.b64decode(support.MASTER))
"""The test deployment's keys (the suite's fixed secret)."""
SEAL_KEY = Signer.from_keyring(KEYRING).seal_key


async def raw(db: Database, *statements: str) -> None:
    async with db.engine.begin() as conn:
        for statement in statements:
            await conn.execute(text(statement))


async def unprotected(db: Database, *statements: str) -> None:
    """Run `statements` with the append-only triggers out of the way."""
    if db.dialect == "postgresql":
        await raw(
            db,
            "ALTER TABLE consent_ledger DISABLE TRIGGER USER",
            "ALTER TABLE consent_checkpoints DISABLE TRIGGER USER",
            *statements,
            "ALTER TABLE consent_ledger ENABLE TRIGGER USER",
            "ALTER TABLE consent_checkpoints ENABLE TRIGGER USER",
        )
        return
    drops = [
        f"DROP TRIGGER IF EXISTS {table}_no_{verb}"
        for table in ("consent_ledger", "consent_checkpoints")
        for verb in ("update", "delete")
    ]
    await raw(db, *drops, *statements)
