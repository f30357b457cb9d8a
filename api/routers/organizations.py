"""The operator API: organizations, their settings, and their keys.

Only keys of scope `operator` (which belong to no organization and see none's bookings,
people or logs). Everything an organization holds is reached with that organization's own
keys; the operator creates the organization and its keys (typically its first admin key).
"""

from __future__ import annotations

from datetime import datetime
from typing import Annotated

from fastapi import APIRouter, Depends, Path
from pydantic import BaseModel, ConfigDict, Field

from api import problems
from api.deps import RuntimeDep, require
from consent.notices import seed_notices
from core.accounts import Caller, Scope, do_create_key
from core.errors import InvalidInput
from core.inputs import Line
from core.organizations import (
    ORG_ID_PATTERN,
    Organization,
    OrgSettings,
    access_org,
    do_create_org,
    do_update_settings,
    effective_settings,
    get_orgs,
)

router = APIRouter(prefix="/v1/operator/orgs", tags=["operator"])
OperatorCaller = Annotated[Caller, Depends(require(Scope.OPERATOR))]
OrgId = Annotated[str, Path(pattern=ORG_ID_PATTERN, description="The organization's id.")]


class OrgIn(BaseModel):
    model_config = ConfigDict(extra="forbid")

    id: str = Field(pattern=ORG_ID_PATTERN, examples=["acme"],
                    description="Lower-case letters, digits and '-', 3 to 32 characters.")
    name: Line = Field(min_length=1, max_length=200, examples=["Acme Tutoring"])
    settings: OrgSettings = Field(default_factory=OrgSettings)


class OrgOut(BaseModel):
    id: str
    name: str
    settings: OrgSettings = Field(
        description="The organization's own values; null: the deployment's (`CALLGATE_*`)."
    )
    created_at: datetime
    updated_at: datetime


class OrgList(BaseModel):
    items: list[OrgOut]


class OrgKeyIn(BaseModel):
    model_config = ConfigDict(extra="forbid")

    scope: Scope = Field(
        default=Scope.ADMIN, description="`admin`, `scheduler`, `auditor` or `metrics`."
    )
    label: Line = Field(default="", max_length=200)


class OrgKeyOut(BaseModel):
    id: str
    org_id: str
    scope: Scope
    label: str
    key: str = Field(description="The whole key, shown this once (only its hash is stored).")


def org_out(org: Organization) -> OrgOut:
    return OrgOut(
        id=org.id, name=org.name, settings=OrgSettings.model_validate(org.settings),
        created_at=org.created_at, updated_at=org.updated_at,
    )


@router.post(
    "", status_code=201, summary="Create an organization",
    description="A new tenant with its own keys, bookings, people, notice set (the shipped "
    "notices, rendered with its names and retention days), logs and webhook endpoints. "
    "Settings left out are the deployment's. 409 if the id is taken.",
    responses=problems.responses(401, 403, 409, 422),
)
async def create_org(runtime: RuntimeDep, caller: OperatorCaller, body: OrgIn) -> OrgOut:
    now = runtime.clock.now()
    async with runtime.db.session() as session:
        org = await do_create_org(session, body.id, body.name, body.settings, now)
    await seed_notices(runtime.db, effective_settings(runtime.settings, org), now, org.id)
    return org_out(org)


@router.get("", summary="List organizations", responses=problems.responses(401, 403))
async def list_orgs(runtime: RuntimeDep, caller: OperatorCaller) -> OrgList:
    async with runtime.db.session() as session:
        return OrgList(items=[org_out(org) for org in await get_orgs(session)])


@router.get(
    "/{org_id}", summary="Get an organization", responses=problems.responses(401, 403, 404, 422)
)
async def get_org(runtime: RuntimeDep, caller: OperatorCaller, org_id: OrgId) -> OrgOut:
    async with runtime.db.session() as session:
        return org_out(await access_org(session, org_id))


class OrgPatch(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: Line | None = Field(default=None, min_length=1, max_length=200)
    settings: OrgSettings | None = Field(
        default=None, description="The settings to change (fields left out stay as they "
        "are; null for a field goes back to the deployment's value).",
    )


@router.patch(
    "/{org_id}", summary="Rename an organization or change its settings",
    description="Settings left out stay; null for one goes back to the deployment's value. "
    "`settings.retention_days` sets its retention period per data category (days, 1 to "
    "3653; categories left out stay): the scheduled purge cuts this organization's data by "
    "them from its next run, its notices are rendered again stating them, and recordings "
    "and AI outputs made from then on get their deadline from them. A bad value or an "
    "unknown category: 422, nothing changed.",
    responses=problems.responses(401, 403, 404, 422),
)
async def update_org(
    runtime: RuntimeDep, caller: OperatorCaller, org_id: OrgId, body: OrgPatch
) -> OrgOut:
    async with runtime.db.session() as session:
        org = await access_org(session, org_id)
        if body.name is not None:
            org.name = body.name
        if body.settings is not None:
            changes = body.settings.model_dump(exclude_unset=True)
            do_update_settings(org, changes, runtime.clock.now())
    # the notices name the operator and AI provider and state the retention days: the
    # defaults follow the new settings (a text the organization published stays)
    await seed_notices(
        runtime.db, effective_settings(runtime.settings, org), runtime.clock.now(), org.id
    )
    return org_out(org)


@router.post(
    "/{org_id}/keys", status_code=201, summary="Create a key of an organization",
    description="Typically the organization's first `admin` key (more keys: again here, or "
    "`callgate keys create --org`). The whole key is in the answer, this once. An operator "
    "key cannot be made here (422).",
    responses=problems.responses(401, 403, 404, 422),
)
async def create_org_key(
    runtime: RuntimeDep, caller: OperatorCaller, org_id: OrgId, body: OrgKeyIn
) -> OrgKeyOut:
    if body.scope is Scope.OPERATOR:
        raise InvalidInput.field(("body", "scope"), "an operator key belongs to no organization")
    async with runtime.db.session() as session:
        await access_org(session, org_id)
        row, plaintext = await do_create_key(
            session, body.scope, body.label, runtime.clock.now(), org_id
        )
    return OrgKeyOut(id=row.id, org_id=org_id, scope=row.scope, label=row.label, key=plaintext)
