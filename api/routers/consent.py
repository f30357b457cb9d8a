"""Participant consent: what this booking asks of me, and my decisions (before and during it)."""

from __future__ import annotations

import base64
import uuid
from typing import Annotated, Any

from fastapi import APIRouter, Path, Response
from pydantic import BaseModel, Field

from api.deps import GateDep, ParticipantDep, RuntimeDep, SchedulerCaller
from api.notices import notice_html
from api.problems import responses
from api.schemas import ConsentOverview, LedgerEntry, NoticeView, ReceiptKey
from consent.checkpoints import LedgerTampered, Signer
from consent.decisions import DecisionRequest, consent_overview, do_decide
from consent.ledger import entry_view
from consent.notices import get_notice_by_sha256, notice_view, retention_days
from consent.purposes import Actor, Decision, Method, Purpose
from consent.receipts import MEDIA_TYPE, build_receipt, covering_checkpoint, receipt_entries
from consent.writer import ledger_writer
from core.errors import NotFound, Unavailable
from core.organizations import access_org_participant, booking_settings

router = APIRouter(prefix="/v1/consent", tags=["consent"])


class DecisionBody(BaseModel):
    purpose: Purpose
    decision: Decision
    notice_sha256: str = Field(
        pattern=r"^[0-9a-fA-F]{64}$",
        description="SHA-256 of the notice text the person was shown (from GET /v1/consent).",
    )
    method: Method = Field(default=Method.WEB_DIALOG, description="How the decision was made.")


@router.get(
    "",
    response_model=ConsentOverview,
    response_model_exclude_unset=True,
    summary="The purposes this booking requests, their notices, and my current decisions",
    description="Each purpose carries `retention_days` (how long its data is kept: the "
    "booking's organization's period) and its "
    "notice as `text` (Markdown, hashed) and `html` (rendered, raw HTML disabled, sanitized).",
    responses=responses(404, 410),
)
async def get_consent(runtime: RuntimeDep, participant: ParticipantDep) -> dict[str, Any]:
    overview = await consent_overview(runtime.db, participant.id)
    async with runtime.db.session() as session:  # the booking's organization's periods
        settings = await booking_settings(session, runtime.settings, participant.booking_id)
    for item in overview["purposes"]:
        item["retention_days"] = retention_days(settings, Purpose(item["purpose"]))
        item["notice"]["html"] = notice_html(item["notice"]["text"])
    return overview


@router.get(
    "/receipt",
    summary="Download a signed receipt of my decisions in this booking",
    description="A compact JWS (`application/jose`, RFC 7515, EdDSA) signed with the "
    "deployment's checkpoint key (`kid`): each decision with the notice's version and "
    "SHA-256, the ledger entry's position and hash, and a proof linking the entries to a "
    "signed checkpoint. Check it offline with `callgate ledger verify-receipt FILE "
    "--public-key KEY` or any JOSE library (docs/consent.md). 404 `no_decisions` before the "
    "first decision; 409 `ledger_tampered` while an integrity alarm stands.",
    response_class=Response,
    responses={200: {"content": {MEDIA_TYPE: {}}, "description": "The receipt (JWS)"},
               **responses(404, 409)},
)
async def get_receipt(
    runtime: RuntimeDep, gate: GateDep, participant: ParticipantDep
) -> Response:
    if gate is None:
        raise Unavailable("the consent gate is not running on this node")
    standing = gate.integrity.standing
    if standing is not None:
        raise LedgerTampered("no receipt while " + standing.sentence())
    person, entries = await receipt_entries(runtime.db, participant.id)
    now = runtime.clock.now()
    checkpoint = await covering_checkpoint(runtime.db, gate.signer, entries[-1].seq)
    if checkpoint is None:  # sign the (verified) head, refused if the chain fails
        checkpoint = await gate.integrity.do_checkpoint(now)
    token = await build_receipt(runtime.db, gate.signer, person, entries, checkpoint, now)
    name = f"consent-receipt-{person.booking_id}.jws"
    return Response(
        token, media_type=MEDIA_TYPE,
        headers={"Content-Disposition": f'attachment; filename="{name}"'},
    )


@router.get(
    "/notices/{sha256}",
    response_model=NoticeView,
    response_model_exclude_unset=True,
    summary="A notice by its SHA-256 (any version, also earlier ones)",
    description="What a receipt or a ledger entry names by `notice_sha256`. No credential "
    "needed: notices are public texts.",
    responses=responses(404, 422),
)
async def get_notice(
    runtime: RuntimeDep, sha256: Annotated[str, Path(pattern=r"^[0-9a-fA-F]{64}$")]
) -> dict[str, Any]:
    async with runtime.db.session() as session:
        notice = await get_notice_by_sha256(session, sha256)
    if notice is None:
        raise NotFound("no notice has this SHA-256")
    return notice_view(notice)


@router.get(
    "/receipt-key",
    response_model=ReceiptKey,
    summary="The public key that verifies receipts and checkpoints",
    description="`public_key` is base64 of the raw Ed25519 key; `jwk` the same as a JWK "
    "(RFC 8037). No credential needed.",
)
async def get_receipt_key(runtime: RuntimeDep) -> dict[str, Any]:
    signer = Signer.from_keyring(runtime.keys)
    x = base64.urlsafe_b64encode(signer.public_raw).rstrip(b"=").decode()
    return {
        "kid": signer.key_id,
        "alg": "EdDSA",
        "public_key": signer.public_b64,
        "jwk": {"kty": "OKP", "crv": "Ed25519", "x": x, "kid": signer.key_id, "alg": "EdDSA"},
    }


@router.post(
    "",
    response_model=LedgerEntry,
    response_model_exclude_unset=True,
    status_code=201,
    summary="Record a decision (granted, denied, withdrawn) on one purpose",
    description="Appends to the consent ledger and returns the entry. `notice_sha256` must be "
    "the current notice's hash: an older version is 409 `notice_outdated`, any other value "
    "422 `notice_mismatch`; a purpose the booking did not request is 422 "
    "`purpose_not_requested`; a cancelled booking is 410 `gone`.",
    responses=responses(404, 409, 410, 422),
)
async def post_consent(
    runtime: RuntimeDep, participant: ParticipantDep, body: DecisionBody
) -> dict[str, Any]:
    request = DecisionRequest(
        purpose=body.purpose,
        decision=body.decision,
        notice_sha256=body.notice_sha256,
        method=body.method,
    )
    entry = await do_decide(
        ledger_writer(runtime), runtime.bus, participant.id, request, runtime.clock.now()
    )
    return entry_view(entry)


class GuardianDecisionBody(BaseModel):
    participant_id: uuid.UUID = Field(description="The minor the guardian decides for.")
    purpose: Purpose
    decision: Decision
    notice_sha256: str = Field(
        pattern=r"^[0-9a-fA-F]{64}$",
        description="SHA-256 of the notice text the guardian was shown.",
    )


@router.post(
    "/guardian",
    response_model=LedgerEntry,
    response_model_exclude_unset=True,
    status_code=201,
    summary="Record a guardian's decision for a participant who is not an adult",
    description="The booking platform, which verified the guardian, records their decision "
    "(actor `guardian`). A minor's `recording.*`, `transcription` and `ai.*` purposes are "
    "allowed only while both the minor and the guardian granted. An adult participant is 422 "
    "`guardian_not_applicable`; notice and purpose errors as for `POST /v1/consent`.",
    responses=responses(401, 403, 404, 409, 410, 422),
)
async def post_guardian_consent(
    runtime: RuntimeDep, caller: SchedulerCaller, body: GuardianDecisionBody
) -> dict[str, Any]:
    async with runtime.db.session() as session:  # another organization's person: 404
        await access_org_participant(session, caller.org_id, body.participant_id)
    request = DecisionRequest(
        purpose=body.purpose,
        decision=body.decision,
        notice_sha256=body.notice_sha256,
        method=Method.API,
        actor=Actor.GUARDIAN,
    )
    entry = await do_decide(
        ledger_writer(runtime), runtime.bus, body.participant_id, request, runtime.clock.now()
    )
    return entry_view(entry)
