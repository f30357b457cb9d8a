"""Admin consent notices: the current set, publishing a version (material or not), and
every earlier version. Scope `admin` publishes; `auditor` reads.
"""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Query
from fastapi.responses import JSONResponse
from pydantic import BaseModel, Field

from api.deps import AdminCaller, ReviewerCaller, RuntimeDep
from api.problems import responses
from api.schemas import (
    NoticeList,
    NoticeView,
)
from consent.notices import (
    NoticeText,
    bookings_asking,
    do_publish_notice,
    list_notices,
    notice_changed_event,
    notice_versions,
    notice_view,
)
from consent.purposes import Purpose
from core.bus import publish_all
from core.errors import InvalidInput
from core.inputs import FILLED_PARAGRAPH_PATTERN, Instant, Paragraph

router = APIRouter(prefix="/v1/admin", tags=["admin: consent"])


class NoticeBody(BaseModel):
    purpose: Purpose
    language: str = Field(
        min_length=2, max_length=35, pattern=r"^[A-Za-z]{2,8}(-[A-Za-z0-9]{1,8})*$"
    )
    text: Paragraph = Field(
        min_length=1, max_length=20_000, description="The notice text (not only white space).",
        json_schema_extra={"pattern": FILLED_PARAGRAPH_PATTERN},
    )
    material: bool = Field(
        default=False,
        description="A material change: grants given under earlier versions of this purpose's "
        "notice stop counting for capture and AI jobs from `effective_at`, and the people of "
        "affected bookings are asked again. False for a revision that changes nothing of "
        "substance (a typo): earlier grants keep counting.",
    )
    change_note: Paragraph | None = Field(
        default=None, max_length=500, description="What changed, shown to people asked again."
    )
    effective_at: Instant | None = Field(
        default=None, description="When a material change takes effect (default: at once)."
    )


@router.get(
    "/consent-notices",
    response_model=NoticeList,
    response_model_exclude_unset=True,
    summary="The current notice of every purpose and language",
    responses=responses(401, 403),
)
async def get_notices(runtime: RuntimeDep, caller: ReviewerCaller) -> dict[str, Any]:
    async with runtime.db.session() as session:
        items = await list_notices(session, caller.org_id)
    return {"items": [notice_view(n) for n in items]}


@router.post(
    "/consent-notices",
    response_model=NoticeView,
    response_model_exclude_unset=True,
    status_code=201,
    summary="Publish a new notice version (old versions are never changed)",
    description="In the caller's organization's notice set. Returns 200 with the existing "
    "version when the text equals the current one.",
    responses={200: {"description": "The text equals the current version, which is returned"},
               **responses(401, 403, 422)},
)
async def publish_notice(
    runtime: RuntimeDep, caller: AdminCaller, body: NoticeBody
) -> JSONResponse:
    now = runtime.clock.now()
    if body.effective_at is not None and not body.material:
        raise InvalidInput.field(("body", "effective_at"), "only a material change takes effect")
    if body.effective_at is not None and body.effective_at < now:
        raise InvalidInput.field(("body", "effective_at"), "cannot be in the past")
    text = NoticeText(
        body.purpose, body.language, body.text, f"api:{caller.key_id}",
        material=body.material, change_note=body.change_note, effective_at=body.effective_at,
    )
    async with runtime.db.session() as session:
        notice, created = await do_publish_notice(session, text, now, caller.org_id)
        affected = (
            await bookings_asking(session, notice.purpose, now, caller.org_id) if created else []
        )
    if created and notice.material:  # after commit: gates reload, pages are told
        await publish_all(runtime.bus, [notice_changed_event(notice, affected)])
    return JSONResponse(notice_view(notice), status_code=201 if created else 200)


@router.get(
    "/consent-notices/versions",
    response_model=NoticeList,
    response_model_exclude_unset=True,
    summary="Every version of one purpose's notice in one language, oldest first",
    responses=responses(401, 403, 422),
)
async def get_notice_versions(
    runtime: RuntimeDep, caller: ReviewerCaller, purpose: Purpose,
    language: Annotated[str, Query(min_length=2, max_length=35)] = "en",
) -> dict[str, Any]:
    async with runtime.db.session() as session:
        items = await notice_versions(session, purpose, language, caller.org_id)
    return {"items": [notice_view(n) for n in items]}
