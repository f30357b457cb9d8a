"""The integrity watch: the running server re-verifies the ledger and raises an alarm.

Every `consent_verify_interval_s` (by the injected clock; the loop looks every
`consent_integrity_poll_s`) the whole chain is walked (consent/walk.py: every entry, without
hashing again the chunks whose stored bytes did not change) against the signed checkpoints and
the heads this server witnessed: the newest entry each commit produced (in memory) and every
head verified before (an append-only file, `data_dir/consent-witness.jsonl`, outside the database).
A failure becomes an alarm row in the database, so every node sees it: the gate answers no,
AI jobs find no grant, `/readyz` and the metrics report it, checkpoints are refused, until an
admin acknowledges it. An acknowledgement is MACed with the server secret, so someone who can
only write the database cannot clear the alarm by editing the row.
"""

from __future__ import annotations

import asyncio
import hmac
import json
import uuid
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import structlog
from sqlalchemy import BigInteger, String, Uuid, select
from sqlalchemy.ext.asyncio import AsyncSession
from sqlalchemy.orm import Mapped, mapped_column

from consent.checkpoints import (
    Checkpoint,
    LedgerTampered,
    Signer,
    do_checkpoint,
    latest_checkpoint,
    verify,
)
from consent.ledger import Entry, chain_head
from consent.walk import ChainMemory, ChainReport
from core.crypto import Keyring, hmac_sha256
from core.database import Base, Database, UTCDateTime
from core.errors import NotFound
from core.runtime import Runtime

log = structlog.get_logger(__name__)

WITNESS_FILE = "consent-witness.jsonl"


class Alarm(Base):
    __tablename__ = "consent_alarms"

    id: Mapped[uuid.UUID] = mapped_column(Uuid, primary_key=True, default=uuid.uuid4)
    detected_at: Mapped[datetime] = mapped_column(UTCDateTime(), index=True)
    first_bad_seq: Mapped[int] = mapped_column(BigInteger)
    problem: Mapped[str] = mapped_column(String(32))
    detail: Mapped[str] = mapped_column(String(500))
    head_seq: Mapped[int] = mapped_column(BigInteger)
    acknowledged_at: Mapped[datetime | None] = mapped_column(UTCDateTime(), default=None)
    acknowledged_by: Mapped[str | None] = mapped_column(String(64), default=None)
    acknowledgement_mac: Mapped[str | None] = mapped_column(String(64), default=None)


def alarm_key(keys: Keyring) -> bytes:
    """The key acknowledgements are MACed with (derived from the server secret)."""
    return keys.derive("consent-alarm-ack", "v1")


def _ack_message(alarm: Alarm) -> str:
    at = alarm.acknowledged_at.isoformat() if alarm.acknowledged_at else ""
    return f"{alarm.id}|{alarm.first_bad_seq}|{alarm.problem}|{at}|{alarm.acknowledged_by}"


def acknowledged(alarm: Alarm, key: bytes) -> bool:
    """True only for an acknowledgement this server made (a MAC under its secret)."""
    if alarm.acknowledged_at is None or alarm.acknowledgement_mac is None:
        return False
    expected = hmac_sha256(key, _ack_message(alarm)).hex()
    return hmac.compare_digest(expected, alarm.acknowledgement_mac)


def alarm_view(alarm: Alarm) -> dict[str, Any]:
    return {
        "id": str(alarm.id),
        "detected_at": alarm.detected_at.isoformat(),
        "first_bad_seq": alarm.first_bad_seq,
        "problem": alarm.problem,
        "detail": alarm.detail,
        "head_seq": alarm.head_seq,
        "acknowledged_at": alarm.acknowledged_at.isoformat() if alarm.acknowledged_at else None,
        "acknowledged_by": alarm.acknowledged_by,
    }


async def alarms(session: AsyncSession, limit: int = 100) -> list[Alarm]:
    query = select(Alarm).order_by(Alarm.detected_at.desc()).limit(limit)
    return list((await session.execute(query)).scalars())


async def active_alarm(session: AsyncSession, key: bytes) -> Alarm | None:
    """The newest alarm no admin acknowledged (through this server)."""
    for alarm in await alarms(session):
        if not acknowledged(alarm, key):
            return alarm
    return None


async def do_acknowledge(db: Database, key: bytes, by: str, now: datetime) -> list[Alarm]:
    """Acknowledge every standing alarm; the ones acknowledged (NotFound when none)."""
    async with db.session() as session:
        standing = [a for a in await alarms(session, 1000) if not acknowledged(a, key)]
        if not standing:
            raise NotFound("no integrity alarm is standing")
        for alarm in standing:
            alarm.acknowledged_at, alarm.acknowledged_by = now, by[:64]
            alarm.acknowledgement_mac = hmac_sha256(key, _ack_message(alarm)).hex()
    log.warning("consent_ledger.alarm_acknowledged", by=by, alarms=len(standing))
    return standing


@dataclass(frozen=True)
class Standing:
    """An alarm as this node last read it from the database."""

    first_bad_seq: int
    problem: str
    detail: str

    def sentence(self) -> str:
        return (
            f"consent ledger tampering detected at entry {self.first_bad_seq} "
            f"({self.problem}); an admin must acknowledge it"
        )


class Witness:
    """Heads this server saw, outside the database: an append-only file plus the newest
    head committed by this process (not yet in the file)."""

    def __init__(self, path: Path) -> None:
        self._path = path
        self._marks: dict[int, str] = {}
        self._pending: tuple[int, str] | None = None
        self._load()

    def _load(self) -> None:
        if not self._path.is_file():
            return
        for line in self._path.read_text(encoding="utf-8").splitlines():
            try:
                item = json.loads(line)
                self._marks[int(item["seq"])] = str(item["entry_hash"])
            except (ValueError, KeyError, TypeError):
                continue  # a torn last line after a crash

    def saw(self, entries: list[Entry]) -> None:
        newest = entries[-1]
        if self._pending is None or newest.seq > self._pending[0]:
            self._pending = (newest.seq, newest.entry_hash)

    def marks(self) -> dict[int, str]:
        out = dict(self._marks)
        if self._pending is not None:
            out[self._pending[0]] = self._pending[1]
        return out

    def record(self, seq: int, entry_hash: str, at: datetime) -> None:
        """Append a verified head to the file (once per seq)."""
        if seq == 0 or self._marks.get(seq) == entry_hash:
            return
        self._path.parent.mkdir(parents=True, exist_ok=True)
        line = json.dumps({"seq": seq, "entry_hash": entry_hash, "at": at.isoformat()})
        with self._path.open("a", encoding="utf-8") as out:
            out.write(line + "\n")
        self._marks[seq] = entry_hash
        if self._pending is not None and self._pending[0] <= seq:
            self._pending = None


class IntegrityWatch:
    """One per process (inside the live gate): verifies, witnesses, signs, raises alarms."""

    def __init__(self, runtime: Runtime, signer: Signer) -> None:
        self._rt = runtime
        self._signer = signer
        self._ack_key = alarm_key(runtime.keys)
        self.witness = Witness(runtime.settings.data_dir / WITNESS_FILE)
        self.memory = ChainMemory()  # chunks checked entry by entry (consent/walk.py)
        self.standing: Standing | None = None
        self.last_report: ChainReport | None = None
        self.checked_at: datetime | None = None
        self._next_check: datetime | None = None
        self._started_at: datetime | None = None

    @property
    def ack_key(self) -> bytes:
        return self._ack_key

    async def run(self) -> None:
        """The loop: read the shared alarm state, and verify whenever the clock says so."""
        poll = self._rt.settings.consent_integrity_poll_s
        while True:
            try:
                await self.tick()
            except asyncio.CancelledError:
                raise
            except Exception:
                log.warning("consent_ledger.integrity_check_failed", exc_info=True)
            await asyncio.sleep(poll)

    async def tick(self) -> None:
        now = self._rt.clock.now()
        if self._started_at is None:
            self._started_at = now
        if self._next_check is None or now >= self._next_check:
            self._next_check = now + timedelta(
                seconds=self._rt.settings.consent_verify_interval_s
            )
            await self.check(now)
        await self.refresh()

    async def refresh(self) -> None:
        async with self._rt.db.session() as session:
            alarm = await active_alarm(session, self._ack_key)
        self.standing = (
            Standing(alarm.first_bad_seq, alarm.problem, alarm.detail) if alarm else None
        )

    async def check(self, now: datetime) -> ChainReport:
        """Walk the whole chain once; raise an alarm on failure, else witness the head and
        sign a checkpoint when one is due."""
        report = await verify(self._rt.db, self._signer, self.witness.marks(), self.memory)
        self.last_report = report
        if not report.ok:
            await self._raise(report, now)
        else:
            self.witness.record(report.head_seq, report.head_hash, now)
            await self.refresh()
            if self.standing is None:
                await self.checkpoint_if_due(now)
        self.checked_at = now  # last: whoever reads it sees the whole check done
        return report

    async def _raise(self, report: ChainReport, now: datetime) -> None:
        seq, problem = report.first_bad_seq or 0, report.problem or "unknown"
        log.error(
            "consent_ledger.tampered", first_bad_seq=seq, problem=problem,
            detail=report.detail, head_seq=report.head_seq,
        )
        async with self._rt.db.session() as session:
            for alarm in await alarms(session, 1000):
                if alarm.first_bad_seq == seq and alarm.problem == problem:
                    return  # already raised (acknowledged or not): one row per finding
            session.add(Alarm(
                detected_at=now, first_bad_seq=seq, problem=problem,
                detail=(report.detail or "")[:500], head_seq=report.head_seq,
            ))

    async def checkpoint_if_due(self, now: datetime) -> bool:
        """Sign the head when the last checkpoint (or, before the first, this watch's start)
        is older than the interval and the chain has grown since; True when signed."""
        interval = timedelta(seconds=self._rt.settings.consent_checkpoint_interval_s)
        async with self._rt.db.session() as session:
            last = await latest_checkpoint(session)
            seq, _ = await chain_head(session)
        since = last.signed_at if last is not None else (self._started_at or now)
        if seq == 0 or now - since < interval or (last is not None and last.seq == seq):
            return False
        await self.do_checkpoint(now)
        return True

    async def do_checkpoint(self, now: datetime) -> Checkpoint:
        """Sign the head now, refused while an alarm stands or the chain fails."""
        await self.refresh()
        if self.standing is not None:
            raise LedgerTampered(
                "refusing to sign: " + self.standing.sentence(),
                extra={"first_bad_seq": self.standing.first_bad_seq,
                       "problem": self.standing.problem},
            )
        return await do_checkpoint(self._rt.db, self._signer, now)
