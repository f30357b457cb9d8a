"""Consent receipts through the public API: signed, provable to a signed checkpoint, checkable
offline with only the public key (callgate's verifier, a plain JOSE library, the CLI), and a
forged or altered receipt fails."""

from __future__ import annotations

import asyncio
import base64
import json
import os
import sys
from pathlib import Path
from typing import Any

import httpx
import jwt
import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from consent.checkpoints import Signer
from consent.purposes import Purpose
from consent.receipts import public_key_from, verify_receipt
from core.runtime import Runtime
from core.settings import Settings
from tests.support.consent import decide
from tests.support.consent_bookings import Seeded, seed_booking
from tests.support.ledger import KEYRING, unprotected


@pytest.fixture
async def world(client: httpx.AsyncClient, runtime: Runtime) -> Seeded:
    seeded = await seed_booking(runtime, [Purpose.RECORDING_AUDIO, Purpose.AI_SUMMARY])
    host, guest = seeded.people
    await decide(client, guest, "recording.audio", "granted")  # seq 1
    await decide(client, host, "recording.audio", "granted")  # seq 2, someone else's
    await decide(client, guest, "ai.summary", "denied")  # seq 3
    await decide(client, host, "ai.summary", "granted")  # seq 4
    await decide(client, guest, "recording.audio", "withdrawn")  # seq 5
    return seeded


async def receipt(client: httpx.AsyncClient, headers: dict[str, str]) -> str:
    response = await client.get("/v1/consent/receipt", headers=headers)
    assert response.status_code == 200, response.text
    assert response.headers["content-type"] == "application/jose"
    assert response.headers["content-disposition"].startswith("attachment; filename=")
    return response.text


async def public_key(client: httpx.AsyncClient) -> str:
    body = (await client.get("/v1/consent/receipt-key")).json()
    assert body["alg"] == "EdDSA"
    key: str = body["public_key"]
    return key


async def test_receipt_lists_my_decisions_and_proves_them_to_a_checkpoint(
    client: httpx.AsyncClient, world: Seeded
) -> None:
    guest = world.people[1]
    token = await receipt(client, guest.headers)
    check = verify_receipt(token, public_key_from(await public_key(client)))
    assert check.ok, check.problem
    view = check.view()
    assert view["subject_id"] == str(guest.id)
    assert [(d["seq"], d["purpose"], d["decision"]) for d in view["decisions"]] == [
        (1, "recording.audio", "granted"), (3, "ai.summary", "denied"),
        (5, "recording.audio", "withdrawn"),
    ]
    assert view["checkpoint_seq"] == 5
    overview = (await client.get("/v1/consent", headers=guest.headers)).json()
    shown = {p["purpose"]: p["notice"] for p in overview["purposes"]}
    for item in check.payload["decisions"]:
        assert item["notice"]["sha256"] == shown[item["purpose"]]["sha256"]
        assert item["notice"]["version"] == shown[item["purpose"]]["version"]
    # The proof carries only body hashes of the entries in between, never their content.
    assert str(world.people[0].id) not in json.dumps(check.payload)


async def test_receipt_checks_with_a_plain_jose_library(
    client: httpx.AsyncClient, world: Seeded
) -> None:
    """What docs/consent.md shows: PyJWT and the JWK from /v1/consent/receipt-key."""
    token = await receipt(client, world.people[1].headers)
    jwk = (await client.get("/v1/consent/receipt-key")).json()["jwk"]
    key = jwt.PyJWK(jwk).key
    payload = json.loads(jwt.api_jws.decode(token, key, algorithms=["EdDSA"]))
    assert jwt.get_unverified_header(token)["kid"] == jwk["kid"]
    assert [d["seq"] for d in payload["decisions"]] == [1, 3, 5]


async def test_altered_or_forged_receipts_fail(
    client: httpx.AsyncClient, world: Seeded, settings: Settings
) -> None:
    token = await receipt(client, world.people[1].headers)
    key = public_key_from(await public_key(client))
    header, body, signature = token.split(".")
    payload = json.loads(base64.urlsafe_b64decode(body + "=" * (-len(body) % 4)))
    payload["decisions"][2]["decision"] = "granted"
    altered = base64.urlsafe_b64encode(json.dumps(payload).encode()).rstrip(b"=").decode()
    assert verify_receipt(f"{header}.{altered}.{signature}", key).problem == "bad_signature"
    forged = jwt.api_jws.encode(
        json.dumps(payload).encode(), Ed25519PrivateKey.generate(), algorithm="EdDSA"
    )
    assert verify_receipt(forged, key).problem == "bad_signature"
    # Even signed with the real key, a changed decision no longer hashes to its entry.
    real = Signer.from_keyring(KEYRING)
    resigned = jwt.api_jws.encode(json.dumps(payload).encode(), real.private, algorithm="EdDSA")
    assert verify_receipt(resigned, key).problem == "proof_mismatch"
    assert verify_receipt("not-a-jws", key).problem == "bad_signature"


async def test_cli_verifies_offline_with_only_the_public_key(
    client: httpx.AsyncClient, world: Seeded, tmp_path: Path
) -> None:
    token = await receipt(client, world.people[1].headers)
    key = await public_key(client)
    good = tmp_path / "receipt.jws"
    good.write_text(token)
    bad = tmp_path / "altered.jws"
    bad.write_text(token[:-4] + ("AAAA" if not token.endswith("AAAA") else "BBBB"))
    env = {k: v for k, v in os.environ.items() if not k.startswith("CALLGATE_")}

    async def callgate(path: Path) -> tuple[int, dict[str, Any]]:
        process = await asyncio.create_subprocess_exec(
            sys.executable, "-c", "from api.cli import main; main()", "ledger",
            "verify-receipt", str(path), "--public-key", key,
            env=env, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
        )
        out, _ = await process.communicate()
        assert process.returncode is not None
        return process.returncode, json.loads(out)

    code, report = await callgate(good)
    assert (code, report["ok"]) == (0, True)
    assert [d["seq"] for d in report["decisions"]] == [1, 3, 5]
    code, report = await callgate(bad)
    assert (code, report["ok"], report["problem"]) == (1, False, "bad_signature")


async def test_no_receipt_before_a_decision_nor_while_tampered(
    client: httpx.AsyncClient, runtime: Runtime, world: Seeded
) -> None:
    later = await seed_booking(runtime, [Purpose.RECORDING_AUDIO])
    nothing = await client.get("/v1/consent/receipt", headers=later.people[0].headers)
    assert (nothing.status_code, nothing.json()["code"]) == (404, "no_decisions")
    unknown = await client.get("/v1/consent/receipt", headers={"X-Join-Credential": "nope"})
    assert unknown.status_code in (401, 404)
    await unprotected(runtime.db, "UPDATE consent_ledger SET decision = 'granted' WHERE seq = 3")
    refused = await client.get("/v1/consent/receipt", headers=world.people[1].headers)
    assert (refused.status_code, refused.json()["code"]) == (409, "ledger_tampered")
