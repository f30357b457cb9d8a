"""Consent receipts: a person's decisions in one booking, signed, provable to a checkpoint.

A receipt is a compact JWS (RFC 7515, EdDSA/Ed25519, RFC 8037) signed with the checkpoint key
(`kid` names it). Its payload lists each sealed ledger entry of the person in the booking with
every field the entry's hash covers, the notice's version and hash, and a proof: the body hashes
of every entry from the person's first one up to a signed checkpoint, so anyone holding the
public key can recompute the links to the checkpoint's signed hash without seeing the other
entries' content. `verify_receipt` checks all of it offline.
"""

from __future__ import annotations

import base64
import hashlib
import json
import uuid
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

import jwt
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey
from sqlalchemy import select

from consent.checkpoints import Checkpoint, Signer, checkpoint_view, signed_bytes
from consent.ledger import Entry, body_hash_of, canonical_text, link, timestamp
from consent.notices import Notice
from core.bookings import Participant
from core.database import Database
from core.errors import NotFound

MEDIA_TYPE = "application/jose"
TYP = "callgate-consent-receipt+jws"


class NoDecisions(NotFound):
    code = "no_decisions"
    title = "Nothing to put on a receipt yet"


async def receipt_entries(
    db: Database, participant_id: uuid.UUID
) -> tuple[Participant, list[Entry]]:
    """The person's sealed entries in their booking, in chain order."""
    async with db.session() as session:
        participant = await session.get(Participant, participant_id)
        if participant is None:
            raise NotFound("this join link is not valid")
        query = (
            select(Entry)
            .where(Entry.booking_id == participant.booking_id)
            .where(Entry.subject_id == participant.id)
            .where(Entry.entry_mac.is_not(None))
            .order_by(Entry.seq)
        )
        entries = list((await session.execute(query)).scalars())
    if not entries:
        raise NoDecisions("you have made no decision in this booking yet")
    return participant, entries


async def covering_checkpoint(db: Database, signer: Signer, seq: int) -> Checkpoint | None:
    """The first checkpoint by this key at or after `seq` (the shortest proof)."""
    async with db.session() as session:
        query = (
            select(Checkpoint)
            .where(Checkpoint.seq >= seq, Checkpoint.key_id == signer.key_id)
            .order_by(Checkpoint.seq, Checkpoint.signed_at)
            .limit(1)
        )
        return (await session.execute(query)).scalar_one_or_none()


async def build_receipt(
    db: Database,
    signer: Signer,
    participant: Participant,
    entries: list[Entry],
    checkpoint: Checkpoint,
    now: datetime,
) -> str:
    """The compact JWS of the receipt (the checkpoint must cover the newest entry)."""
    first = entries[0].seq
    async with db.session() as session:
        bodies = [
            body_hash_of(entry)
            for entry in (
                await session.execute(
                    select(Entry)
                    .where(Entry.seq > first, Entry.seq <= checkpoint.seq)
                    .order_by(Entry.seq)
                )
            ).scalars()
        ]
        notice_ids = {e.notice_id for e in entries}
        notices = {
            n.id: n
            for n in (
                await session.execute(select(Notice).where(Notice.id.in_(notice_ids)))
            ).scalars()
        }
    payload = {
        "typ": "callgate.consent-receipt",
        "v": 1,
        "iat": int(now.timestamp()),
        "booking_id": str(participant.booking_id),
        "subject_id": str(participant.id),
        "decisions": [_decision(entry, notices.get(entry.notice_id)) for entry in entries],
        "proof": {
            "from_seq": first,
            "body_hashes": bodies,
            "checkpoint": {
                k: v for k, v in checkpoint_view(checkpoint).items() if k in CHECKPOINT_KEYS
            },
        },
    }
    raw = json.dumps(payload, sort_keys=True, separators=(",", ":")).encode()
    return jwt.api_jws.encode(
        raw, signer.private, algorithm="EdDSA", headers={"kid": signer.key_id, "typ": TYP}
    )


CHECKPOINT_KEYS = ("seq", "entry_hash", "signed_at", "key_id", "signature", "signed_message")


def _decision(entry: Entry, notice: Notice | None) -> dict[str, Any]:
    return {
        "seq": entry.seq,
        "id": str(entry.id),
        "at": timestamp(entry.at),
        "purpose": entry.purpose.value,
        "decision": entry.decision.value,
        "actor": entry.actor.value,
        "method": entry.method.value,
        "notice": {
            "id": str(entry.notice_id),
            "sha256": entry.notice_sha256,
            "version": notice.version if notice is not None else None,
        },
        "prev_hash": entry.prev_hash,
        "entry_hash": entry.entry_hash,
    }


# -- offline verification -------------------------------------------------------------------


@dataclass
class ReceiptCheck:
    ok: bool
    problem: str | None = None
    payload: dict[str, Any] = field(default_factory=dict)

    def view(self) -> dict[str, Any]:
        out: dict[str, Any] = {"ok": self.ok, "problem": self.problem}
        if self.ok:
            out["booking_id"] = self.payload["booking_id"]
            out["subject_id"] = self.payload["subject_id"]
            out["decisions"] = [
                {k: d[k] for k in ("seq", "at", "purpose", "decision")}
                for d in self.payload["decisions"]
            ]
            out["checkpoint_seq"] = self.payload["proof"]["checkpoint"]["seq"]
        return out


def public_key_from(text: str) -> Ed25519PublicKey:
    """A public key given as base64 of the 32 raw bytes (as the checkpoint export has it)."""
    return Ed25519PublicKey.from_public_bytes(base64.b64decode(text.strip(), validate=True))


def verify_receipt(token: str, public_key: Ed25519PublicKey) -> ReceiptCheck:
    """Check a receipt with only the public key: the JWS signature, each entry's hash, the
    links from the first entry to the checkpoint, and the checkpoint's own signature."""
    try:
        raw = jwt.api_jws.decode(token.strip(), public_key, algorithms=["EdDSA"])
        payload = json.loads(raw)
    except (jwt.InvalidTokenError, ValueError):
        return ReceiptCheck(False, "bad_signature")
    try:
        problem = _check_proof(payload, public_key)
    except (KeyError, TypeError, ValueError):
        problem = "malformed"
    return ReceiptCheck(problem is None, problem, payload if problem is None else {})


def _check_proof(payload: dict[str, Any], public_key: Ed25519PublicKey) -> str | None:
    decisions = {int(d["seq"]): d for d in payload["decisions"]}
    proof = payload["proof"]
    checkpoint = proof["checkpoint"]
    first = int(proof["from_seq"])
    if not decisions or min(decisions) != first:
        return "malformed"
    head = decisions[first]["prev_hash"]
    for offset in range(len(proof["body_hashes"]) + 1):
        seq = first + offset
        given = None if offset == 0 else str(proof["body_hashes"][offset - 1])
        own = decisions.get(seq)
        if own is not None:
            body = _body_hash(own, payload)
            if given is not None and given != body:
                return "proof_mismatch"
            head = link(head, body)
            if head != own["entry_hash"]:
                return "entry_hash_mismatch"
        elif given is None:
            return "malformed"
        else:
            head = link(head, given)
    if max(decisions) > int(checkpoint["seq"]) or first + len(proof["body_hashes"]) != int(
        checkpoint["seq"]
    ):
        return "proof_mismatch"
    if head != checkpoint["entry_hash"]:
        return "proof_mismatch"
    message = signed_bytes(
        int(checkpoint["seq"]), str(checkpoint["entry_hash"]),
        datetime.fromisoformat(str(checkpoint["signed_at"])), str(checkpoint["key_id"]),
    )
    try:
        public_key.verify(base64.b64decode(checkpoint["signature"]), message)
    except InvalidSignature:
        return "bad_checkpoint_signature"
    return None


def _body_hash(decision: dict[str, Any], payload: dict[str, Any]) -> str:
    body = canonical_text(
        int(decision["seq"]), str(decision["id"]), str(decision["at"]),
        str(payload["booking_id"]), str(payload["subject_id"]), str(decision["purpose"]),
        str(decision["decision"]), str(decision["notice"]["id"]),
        str(decision["notice"]["sha256"]), str(decision["method"]), str(decision["actor"]),
        None,
    )
    return hashlib.sha256(body).hexdigest()
