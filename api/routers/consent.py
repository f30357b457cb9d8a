"""Participant consent: what this booking asks of me, and my decisions (before and during it)."""

from __future__ import annotations

import uuid
from typing import Any

from fastapi import APIRouter
from pydantic import BaseModel, Field

from api.deps import ParticipantDep, RuntimeDep, SchedulerCaller
from api.notices import notice_html
from api.problems import responses
from api.schemas import ConsentOverview, LedgerEntry
from consent.decisions import DecisionRequest, consent_overview, do_decide
from consent.ledger import entry_view
from consent.notices import retention_days
from consent.purposes import Actor, Decision, Method, Purpose

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
    description="Each purpose carries `retention_days` (how long its data is kept) and its "
    "notice as `text` (Markdown, hashed) and `html` (rendered, raw HTML disabled, sanitized).",
    responses=responses(404, 410),
)
async def get_consent(runtime: RuntimeDep, participant: ParticipantDep) -> dict[str, Any]:
    overview = await consent_overview(runtime.db, participant.id)
    for item in overview["purposes"]:
        item["retention_days"] = retention_days(runtime.settings, Purpose(item["purpose"]))
        item["notice"]["html"] = notice_html(item["notice"]["text"])
    return overview


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
    entry = await do_decide(runtime.db, runtime.bus, participant.id, request, runtime.clock.now())
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
    request = DecisionRequest(
        purpose=body.purpose,
        decision=body.decision,
        notice_sha256=body.notice_sha256,
        method=Method.API,
        actor=Actor.GUARDIAN,
    )
    entry = await do_decide(
        runtime.db, runtime.bus, body.participant_id, request, runtime.clock.now()
    )
    return entry_view(entry)
