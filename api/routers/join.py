"""The participant's door: a join credential exchanged for media access."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Body, Request, Response
from pydantic import BaseModel, ConfigDict, Field

from api import problems
from core.runtime import Runtime
from signaling.join import JoinGrant, do_join

router = APIRouter(prefix="/v1", tags=["join (participant)"])
NO_STORE = {"Cache-Control": "no-store"}  # the answer carries live credentials


class JoinRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    credential: str = Field(
        min_length=1,
        max_length=200,
        description="The credential from the join link `/join/<credential>`.",
    )


@router.post(
    "/join",
    summary="Join a booked session",
    description="Inside the join window (from `join_lead_minutes` before the start until the "
    "end) returns the media access: in `livekit` mode the LiveKit URL and an access token "
    "expiring no later than the window's end; in `builtin` mode the signaling WebSocket URL, "
    "a single-use ticket (<= 60 s) and ICE servers with ephemeral TURN credentials. Before the "
    "window: 403 `outside_join_window` with `opens_at`, `closes_at`, `starts_at`; cancelled: "
    "410; unknown or revoked links: 404 (indistinguishable). Repeated failures from one "
    "address: 429.",
    response_model=JoinGrant,
    responses=problems.responses(403, 404, 410, 422, 429),
)
async def join(
    request: Request,
    body: Annotated[
        JoinRequest, Body(examples=[{"credential": "q3Vn0yM1y2lQ0b9m4o1V8sS3p2uQ7xZk5rT6wY9aB1c"}])
    ],
) -> Response:
    # The hot path: no sync dependency (those run in a thread) and the grant serialized once,
    # by pydantic, instead of validated again by FastAPI; OpenAPI still shows JoinGrant.
    runtime: Runtime = request.app.state.runtime
    address = request.client.host if request.client is not None else "unknown"
    grant = await do_join(runtime, body.credential, address)
    return Response(
        grant.model_dump_json(), media_type="application/json", headers=NO_STORE
    )
