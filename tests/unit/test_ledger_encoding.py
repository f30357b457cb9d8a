"""The entry hash's input is exactly sorted-key compact JSON (what docs/consent.md tells
auditors to recompute), whatever text the fields hold."""

from __future__ import annotations

import importlib.util
import json
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path

from hypothesis import given
from hypothesis import strategies as st

from consent.ledger import canonical, timestamp
from consent.walk import BODY_HASH_SQL, BODY_SQL
from core.migrations import versions

texts = st.one_of(st.text(), st.sampled_from(["recording.audio", "granted", "ab" * 32]))


@given(
    seq=st.integers(min_value=1, max_value=2**62),
    micros=st.integers(min_value=0, max_value=10**16),
    purpose=texts,
    decision=texts,
    sha=texts,
    method=texts,
    actor=texts,
    prev=texts,
)
def test_canonical_is_sorted_compact_json(
    seq: int, micros: int, purpose: str, decision: str, sha: str, method: str, actor: str,
    prev: str,
) -> None:
    ids = [uuid.uuid4() for _ in range(4)]
    at = datetime(2000, 1, 1, tzinfo=UTC) + timedelta(microseconds=micros)
    expected = {
        "seq": seq, "id": str(ids[0]), "at": timestamp(at), "booking": str(ids[1]),
        "subject": str(ids[2]), "purpose": purpose, "decision": decision,
        "notice_id": str(ids[3]), "notice_sha256": sha, "method": method, "actor": actor,
        "prev": prev,
    }
    encoded = canonical(
        seq=seq, id=ids[0], at=at, booking_id=ids[1], subject_id=ids[2], purpose=purpose,
        decision=decision, notice_id=ids[3], notice_sha256=sha, method=method, actor=actor,
        prev_hash=prev,
    )
    assert encoded == json.dumps(expected, sort_keys=True, separators=(",", ":")).encode()
    assert json.loads(encoded) == expected


def test_timestamp_is_utc_microseconds_with_z() -> None:
    local = datetime(2026, 11, 22, 10, 0, 0, 5, tzinfo=UTC).astimezone()
    assert timestamp(local) == "2026-11-22T10:00:00.000005Z"


def test_the_walk_trusts_the_digest_expression_the_migration_creates() -> None:
    """Migrations are frozen copies; the walk links `body_sha256` only while it is generated
    by its own BODY_HASH_SQL, so a change to one without a migration redefining the column
    would quietly send every walk back to rendering and hashing each body."""
    path = Path(versions.__file__).parent / "0014_ledger_body.py"
    spec = importlib.util.spec_from_file_location("ledger_body_migration", path)
    assert spec is not None
    assert spec.loader is not None
    migration = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(migration)
    assert migration.BODY == BODY_SQL
    assert migration.BODY_HASH == BODY_HASH_SQL
