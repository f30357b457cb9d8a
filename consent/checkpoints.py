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
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat
from sqlalchemy import BigInteger, String, Uuid, select
from sqlalchemy.ext.asyncio import AsyncSession
from sqlalchemy.orm import Mapped, mapped_column

from consent.ledger import ChainReport, chain_head, lock_chain, timestamp, walk_chain
from core.crypto import Keyring, sha256_hex
from core.database import Base, Database, UTCDateTime


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
    """The deployment's checkpoint key."""

    private: Ed25519PrivateKey

    @classmethod
    def from_keyring(cls, keys: Keyring) -> Signer:
        seed = keys.derive("consent-checkpoint-ed25519", "v1")
        return cls(Ed25519PrivateKey.from_private_bytes(seed[:32]))

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
    """Sign the current head (taken under the chain lock, so it is a real head)."""
    async with db.session() as session:
        await lock_chain(session)
        seq, head = await chain_head(session)
        checkpoint = Checkpoint(
            seq=seq,
            entry_hash=head,
            signed_at=now,
            key_id=signer.key_id,
            public_key=signer.public_b64,
        )
        checkpoint.signature = base64.b64encode(
            signer.private.sign(signed_bytes(seq, head, now, signer.key_id))
        ).decode()
        session.add(checkpoint)
    return checkpoint


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


async def verify(db: Database, signer: Signer) -> ChainReport:
    """Walk the whole chain and check it against every checkpoint; the first problem wins."""
    report = ChainReport()
    async with db.session() as session:
        checkpoints = list(
            (await session.execute(select(Checkpoint).order_by(Checkpoint.seq))).scalars()
        )
    marks: dict[int, str] = {}
    for checkpoint in checkpoints:
        if not signature_ok(checkpoint) or checkpoint.key_id != signer.key_id:
            report.fail(checkpoint.seq, "bad_checkpoint_signature",
                        f"checkpoint {checkpoint.id} is not signed by this server's key")
            return report
        if marks.setdefault(checkpoint.seq, checkpoint.entry_hash) != checkpoint.entry_hash:
            report.fail(checkpoint.seq, "checkpoint_mismatch", "two checkpoints disagree")
            return report
    await walk_chain(db, report, marks)
    last = checkpoints[-1] if checkpoints else None
    if report.ok and last is not None and report.head_seq < last.seq:
        report.fail(
            report.head_seq + 1,
            "truncated",
            f"the chain ends at {report.head_seq} but a checkpoint signed seq {last.seq}",
        )
    if last is not None:
        report.checkpoints.append(
            {**checkpoint_view(last), "extended_by_chain": report.ok}
        )
    return report
