"""Signed checkpoints of the ledger's head, and verification against them.

A checkpoint is Ed25519 over the canonical JSON of {seq, entry_hash, signed_at, key_id}.
The signing key is derived from the server secret (settings or `data_dir/secret.key`), so every
node of one deployment signs with the same key. An auditor who exported a checkpoint can later
prove the ledger was only appended to: the entry at the checkpoint's seq must still carry the
signed hash, and the chain must reach at least that far (a truncated tail is detected).
"""

from __future__ import annotations

import base64
import json
import uuid
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat
from sqlalchemy import BigInteger, String, Uuid, select
from sqlalchemy.ext.asyncio import AsyncSession
from sqlalchemy.orm import Mapped, mapped_column

from consent.ledger import Entry, timestamp
from consent.walk import ChainMemory, ChainReport, WalkRules, walk_chain, walk_remembering
from core.crypto import Keyring, sha256_hex
from core.database import Base, Database, UTCDateTime
from core.errors import Conflict


class LedgerTampered(Conflict):
    code = "ledger_tampered"
    title = "The consent ledger fails verification"


class Checkpoint(Base):
    __tablename__ = "consent_checkpoints"

    id: Mapped[uuid.UUID] = mapped_column(Uuid, primary_key=True, default=uuid.uuid4)
    seq: Mapped[int] = mapped_column(BigInteger, index=True)
    entry_hash: Mapped[str] = mapped_column(String(64))
    signed_at: Mapped[datetime] = mapped_column(UTCDateTime())
    key_id: Mapped[str] = mapped_column(String(16))
    public_key: Mapped[str] = mapped_column(String(64))
    signature: Mapped[str] = mapped_column(String(128))


@dataclass(frozen=True)
class Signer:
    """The deployment's checkpoint key (Ed25519, named by `key_id` in every checkpoint and
    receipt so a later key can sit beside it), the key that seals ledger entries, and those
    of previous server secrets (a rotated secret rotates both keys; checkpoints signed and
    entries sealed before stay valid)."""

    private: Ed25519PrivateKey
    seal_key: bytes
    previous_ids: tuple[str, ...] = ()
    previous_seal_keys: tuple[bytes, ...] = ()

    @classmethod
    def from_keyring(cls, keys: Keyring) -> Signer:
        seed = keys.derive("consent-checkpoint-ed25519", "v1")
        seal = keys.derive("consent-entry-seal", "v1")[:32]
        older = [cls.from_keyring(old) for old in keys.previous()]
        return cls(
            Ed25519PrivateKey.from_private_bytes(seed[:32]), seal,
            tuple(o.key_id for o in older), tuple(o.seal_key for o in older),
        )

    @property
    def trusted_ids(self) -> tuple[str, ...]:
        return (self.key_id, *self.previous_ids)

    def rules(self, **kwargs: Any) -> WalkRules:
        """What a walk of the chain checks, with every seal key this server trusts."""
        return WalkRules(self.seal_key, previous_seal_keys=self.previous_seal_keys, **kwargs)

    @property
    def public_raw(self) -> bytes:
        return self.private.public_key().public_bytes(Encoding.Raw, PublicFormat.Raw)

    @property
    def public_b64(self) -> str:
        return base64.b64encode(self.public_raw).decode()

    @property
    def key_id(self) -> str:
        return sha256_hex(self.public_raw)[:16]


def signed_bytes(seq: int, entry_hash: str, signed_at: datetime, key_id: str) -> bytes:
    body = {"seq": seq, "entry_hash": entry_hash, "signed_at": timestamp(signed_at),
            "key_id": key_id}
    return json.dumps(body, sort_keys=True, separators=(",", ":")).encode()


def signature_ok(checkpoint: Checkpoint) -> bool:
    try:
        key = Ed25519PublicKey.from_public_bytes(base64.b64decode(checkpoint.public_key))
        key.verify(
            base64.b64decode(checkpoint.signature),
            signed_bytes(
                checkpoint.seq, checkpoint.entry_hash, checkpoint.signed_at, checkpoint.key_id
            ),
        )
    except (InvalidSignature, ValueError):
        return False
    return True


async def do_checkpoint(db: Database, signer: Signer, now: datetime) -> Checkpoint:
    """Sign the head, but only a head that verifies: the chain from the newest valid
    checkpoint (whose entry must still carry the signed hash) to the head is walked first, and
    a broken chain is refused (`LedgerTampered`). The whole chain is walked by the integrity
    watch (consent/integrity.py), which refuses while an alarm stands."""
    async with db.session() as session:
        last = await latest_checkpoint(session)
    report = await verify_since(db, signer, last)
    if not report.ok:
        raise LedgerTampered(
            f"refusing to sign: entry {report.first_bad_seq} fails ({report.problem})",
            extra={"first_bad_seq": report.first_bad_seq, "problem": report.problem},
        )
    checkpoint = Checkpoint(
        seq=report.head_seq,
        entry_hash=report.head_hash,
        signed_at=now,
        key_id=signer.key_id,
        public_key=signer.public_b64,
    )
    checkpoint.signature = base64.b64encode(
        signer.private.sign(signed_bytes(report.head_seq, report.head_hash, now, signer.key_id))
    ).decode()
    async with db.session() as session:
        session.add(checkpoint)
    return checkpoint


async def verify_since(db: Database, signer: Signer, last: Checkpoint | None) -> ChainReport:
    """Walk from just past `last` (trusted once its signature and its entry check out) to the
    head; the whole chain when there is no checkpoint yet."""
    report = ChainReport()
    if last is None:
        await walk_chain(db, report, signer.rules())
        return report
    if not signature_ok(last) or last.key_id not in signer.trusted_ids:
        report.fail(last.seq, "bad_checkpoint_signature", "the newest checkpoint is forged")
        return report
    sealed = False
    if last.seq > 0:
        async with db.session() as session:
            stored = await session.get(Entry, last.seq)
        if stored is None or stored.entry_hash != last.entry_hash:
            report.fail(last.seq, "checkpoint_mismatch", "differs from a signed checkpoint")
            return report
        sealed = stored.entry_mac is not None
    report.head_seq, report.head_hash = last.seq, last.entry_hash
    rules = signer.rules(
        start_seq=last.seq + 1, start_prev=last.entry_hash, sealed=sealed
    )
    await walk_chain(db, report, rules)
    return report


async def latest_checkpoint(session: AsyncSession) -> Checkpoint | None:
    query = select(Checkpoint).order_by(Checkpoint.seq.desc(), Checkpoint.signed_at.desc())
    return (await session.execute(query.limit(1))).scalar_one_or_none()


async def list_checkpoints(session: AsyncSession, limit: int = 1000) -> list[Checkpoint]:
    query = select(Checkpoint).order_by(Checkpoint.signed_at.desc()).limit(limit)
    return list((await session.execute(query)).scalars())


def checkpoint_view(checkpoint: Checkpoint) -> dict[str, Any]:
    return {
        "id": str(checkpoint.id),
        "seq": checkpoint.seq,
        "entry_hash": checkpoint.entry_hash,
        "signed_at": checkpoint.signed_at.isoformat(),
        "key_id": checkpoint.key_id,
        "public_key": checkpoint.public_key,
        "algorithm": "Ed25519",
        "signature": checkpoint.signature,
        "signed_message": signed_bytes(
            checkpoint.seq, checkpoint.entry_hash, checkpoint.signed_at, checkpoint.key_id
        ).decode(),
    }


async def verify(
    db: Database,
    signer: Signer,
    witness: Mapping[int, str] | None = None,
    memory: ChainMemory | None = None,
) -> ChainReport:
    """Walk the whole chain and check it against every checkpoint and every head this server
    witnessed (`witness`: seq -> entry hash, kept outside the database); the first problem
    wins. With `memory` (the integrity watch's), chunks whose stored bytes did not change since
    this process checked them entry by entry are not hashed again (consent/walk.py)."""
    report = ChainReport()
    async with db.session() as session:
        checkpoints = list(
            (await session.execute(select(Checkpoint).order_by(Checkpoint.seq))).scalars()
        )
    marks: dict[int, str] = dict(witness or {})
    for checkpoint in checkpoints:
        if not signature_ok(checkpoint) or checkpoint.key_id not in signer.trusted_ids:
            report.fail(checkpoint.seq, "bad_checkpoint_signature",
                        f"checkpoint {checkpoint.id} is not signed by this server's key")
            return report
        if marks.setdefault(checkpoint.seq, checkpoint.entry_hash) != checkpoint.entry_hash:
            report.fail(checkpoint.seq, "checkpoint_mismatch",
                        "a checkpoint disagrees with another or with a witnessed head")
            return report
    last = checkpoints[-1] if checkpoints else None
    if memory is None:
        await walk_chain(db, report, signer.rules(marks=marks))
    else:
        await walk_remembering(db, report, signer.rules(marks=marks), memory)
    reached = max(marks, default=0)
    if report.ok and report.head_seq < reached:
        report.fail(
            report.head_seq + 1,
            "truncated",
            f"the chain ends at {report.head_seq} but seq {reached} was signed or witnessed",
        )
    if last is not None:
        report.checkpoints.append(
            {**checkpoint_view(last), "extended_by_chain": report.ok}
        )
    return report
