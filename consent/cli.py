"""The `callgate ledger` commands' work: verify the chain, sign a checkpoint (from the CLI)."""

from __future__ import annotations

import asyncio
import json

from consent.checkpoints import Signer, checkpoint_view, do_checkpoint, verify
from consent.integrity import WITNESS_FILE, Witness
from core.clock import SystemClock
from core.database import Database
from core.runtime import build_keyring
from core.settings import Settings


def run_verify(settings: Settings) -> int:
    """Print the verification report as JSON; 0 when the chain is intact, 1 otherwise."""

    async def run() -> int:
        db = Database(settings.database_url)
        try:
            # The heads the running server witnessed, when this runs beside it.
            witness = Witness(settings.data_dir / WITNESS_FILE).marks()
            report = await verify(db, Signer.from_keyring(build_keyring(settings)), witness)
        finally:
            await db.close()
        print(json.dumps(report.view(), indent=2))
        return 0 if report.ok else 1

    return asyncio.run(run())


def run_checkpoint(settings: Settings) -> int:
    """Sign the head now and print the checkpoint as JSON."""

    async def run() -> int:
        db = Database(settings.database_url)
        try:
            signer = Signer.from_keyring(build_keyring(settings))
            checkpoint = await do_checkpoint(db, signer, SystemClock().now())
        finally:
            await db.close()
        print(json.dumps(checkpoint_view(checkpoint), indent=2))
        return 0

    return asyncio.run(run())
