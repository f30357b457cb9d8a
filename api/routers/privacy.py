"""Data-subject rights for admins (search, export, erasure, restriction, retention) and
withdraw-and-delete for participants (by their join link).

Thin: the work is `privacy.service.Privacy` (`api.services.Services.privacy`).
"""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Path, Query
from fastapi.responses import StreamingResponse
from pydantic import BaseModel, Field

from api.deps import AdminCaller, ParticipantDep, PrivacyDep
from api.problems import responses
from api.schemas import (
    ErasureView,
    RestrictionView,
    RetentionRunResult,
    RetentionStatus,
    SubjectSearch,
    WithdrawResult,
)
from consent.purposes import Purpose
from core.errors import InvalidInput
from core.inputs import Line
from privacy.records import Trigger

router = APIRouter(tags=["privacy"])

SubjectPath = Annotated[
    str, Path(min_length=1, max_length=200, description="The platform's id of the person.")
]


@router.get(
    "/v1/admin/subjects",
    response_model=SubjectSearch,
    response_model_exclude_unset=True,
    summary="Find people by external id or display name",
    responses=responses(401, 403, 422),
)
async def search_subjects(
    privacy: PrivacyDep,
    caller: AdminCaller,
    q: Annotated[Line, Query(min_length=1, max_length=200, description="Part of an external "
                            "id or display name (case-insensitive).")],
    limit: Annotated[int, Query(ge=1, le=200)] = 50,
) -> dict[str, Any]:
    return {"subjects": await privacy.search(q, caller.org_id, limit)}


@router.post(
    "/v1/admin/subjects/{external_id}/export",
    summary="Everything callgate holds about a person, as a ZIP (JSON Lines + recordings)",
    description="Streams `application/zip`: `subject.jsonl`, `bookings.jsonl`, `joins.jsonl`, "
    "`consent_decisions.jsonl` (with each notice's text), `recordings.jsonl` and the person's "
    "own recordings decrypted under `recordings/`, `transcript_segments.jsonl`, "
    "`summaries.jsonl`, `agendas.jsonl`, `processing_register.jsonl`. The export is logged.",
    responses={
        200: {"description": "The ZIP", "content": {"application/zip": {
            "schema": {"type": "string", "format": "binary"}}}},
        **responses(401, 403, 404, 422),
    },
    response_class=StreamingResponse,
)
async def export_subject(
    privacy: PrivacyDep, caller: AdminCaller, external_id: SubjectPath
) -> StreamingResponse:
    export_id, body = await privacy.do_export(external_id, caller.org_id, caller.key_id)
    name = f"callgate-export-{export_id}.zip"
    return StreamingResponse(
        body,
        media_type="application/zip",
        headers={"Content-Disposition": f'attachment; filename="{name}"',
                 "Cache-Control": "no-store"},
    )


class EraseBody(BaseModel):
    confirm: str = Field(description="The external id again, to confirm an irreversible erasure.")


@router.post(
    "/v1/admin/subjects/{external_id}/erase",
    response_model=ErasureView,
    response_model_exclude_unset=True,
    summary="Erase a person: destroy their data key, delete their words, tombstone them",
    description="Irreversible. `confirm` must repeat the external id (else 422). Returns the "
    "tombstone now standing for the person and what was erased per domain. The consent "
    "ledger keeps its entries, which no longer lead to the person.",
    responses=responses(401, 403, 404, 422),
)
async def erase_subject(
    privacy: PrivacyDep, caller: AdminCaller, external_id: SubjectPath, body: EraseBody
) -> dict[str, Any]:
    if body.confirm != external_id:
        raise InvalidInput.field(("body", "confirm"), "must repeat the external id")
    return await privacy.do_erase(external_id, caller.org_id, caller.key_id)


@router.post(
    "/v1/admin/subjects/{external_id}/restriction",
    response_model=RestrictionView,
    response_model_exclude_unset=True,
    summary="Restrict a person's processing: no new recording or AI job about them",
    responses=responses(401, 403, 404),
)
async def restrict_subject(
    privacy: PrivacyDep, caller: AdminCaller, external_id: SubjectPath
) -> dict[str, Any]:
    return await privacy.do_restrict(external_id, caller.org_id, True, caller.key_id)


@router.delete(
    "/v1/admin/subjects/{external_id}/restriction",
    response_model=RestrictionView,
    response_model_exclude_unset=True,
    summary="Lift a person's restriction of processing",
    responses=responses(401, 403, 404),
)
async def lift_restriction(
    privacy: PrivacyDep, caller: AdminCaller, external_id: SubjectPath
) -> dict[str, Any]:
    return await privacy.do_restrict(external_id, caller.org_id, False, caller.key_id)


@router.get(
    "/v1/admin/retention",
    response_model=RetentionStatus,
    response_model_exclude_unset=True,
    summary="Retention per data category: period, expired now, last purge",
    description="`retention_days` is the key's organization's period (its own where the "
    "operator set one, `PATCH /v1/operator/orgs/{id}` `settings.retention_days`; else the "
    "deployment's); `expired` counts that organization's data past it now. `last_run` and "
    "`last_purged` are the last purge of the whole deployment.",
    responses=responses(401, 403),
)
async def retention_status(privacy: PrivacyDep, caller: AdminCaller) -> dict[str, Any]:
    return await privacy.retention_status(caller.org_id)


@router.post(
    "/v1/admin/retention/run",
    response_model=RetentionRunResult,
    response_model_exclude_unset=True,
    summary="Run the retention purge now (`dry_run=true`: only count)",
    description="The purge the schedule runs (`CALLGATE_RETENTION_INTERVAL_S`), over every "
    "organization, each organization's data by its own periods.",
    responses=responses(401, 403),
)
async def run_retention(
    privacy: PrivacyDep,
    caller: AdminCaller,
    dry_run: Annotated[bool, Query(description="Count what would go; change nothing.")] = False,
) -> dict[str, Any]:
    return await privacy.run_retention(dry_run=dry_run, trigger=Trigger.API)


class WithdrawBody(BaseModel):
    purpose: Purpose


@router.post(
    "/v1/consent/withdraw-and-delete",
    response_model=WithdrawResult,
    response_model_exclude_unset=True,
    summary="Withdraw a consent and delete what was captured under it",
    description="Appends `withdrawn` to the ledger (against the current notice), then deletes "
    "this person's data of that purpose in this booking (recordings of that kind, transcript "
    "segments, summaries or agendas made with their words); the deletion is logged.",
    responses=responses(404, 410, 422),
)
async def withdraw_and_delete(
    privacy: PrivacyDep, participant: ParticipantDep, body: WithdrawBody
) -> dict[str, Any]:
    return await privacy.do_withdraw_and_delete(participant.id, body.purpose)
