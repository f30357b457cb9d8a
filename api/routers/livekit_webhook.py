"""LiveKit webhooks: participants, tracks and egress state, which drive consent-gated egress."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Header, Request
from livekit.protocol.models import DisconnectReason
from livekit.protocol.webhook import WebhookEvent

from api.deps import EgressDep, RoomsDep, RuntimeDep
from api.problems import responses
from api.schemas import WebhookAck
from core.errors import NotFound
from core.runtime import Runtime
from media.egress import verify_webhook
from signaling.attendance import do_mark_from_livekit

router = APIRouter(tags=["livekit"])


@router.post(
    "/v1/livekit/webhook",
    response_model=WebhookAck,
    response_model_exclude_unset=True,
    summary="LiveKit webhook receiver (livekit media mode)",
    description="Verifies the signature (a JWT signed with the API secret carrying the raw "
    "body's SHA-256) and deduplicates by event id, then follows `participant_joined/left`, "
    "`track_published/unpublished` and `egress_started/updated/ended`, starting and "
    "stopping Track Egress for exactly the tracks their people consent to record, and "
    "recording each join and leave in the booking's attendance. A join "
    "of someone whose link was revoked (with a token of the old link) or who was erased is "
    "answered by removing them from the room again (`status: refused`).",
    responses=responses(401, 404, 422),
)
async def post_webhook(
    request: Request,
    runtime: RuntimeDep,
    egress: EgressDep,
    rooms: RoomsDep,
    authorization: Annotated[str | None, Header()] = None,
) -> dict[str, str]:
    if not egress.enabled:
        raise NotFound("LiveKit media mode is not enabled")
    event = verify_webhook(runtime.settings, await request.body(), authorization)
    if not await egress.first_time(event.id):
        return {"status": "duplicate", "id": event.id}
    if await rooms.refuse(event):
        return {"status": "refused", "id": event.id}
    await egress.handle(event)
    await _attendance(runtime, event)
    return {"status": "ok", "id": event.id}


async def _attendance(runtime: Runtime, event: WebhookEvent) -> None:
    """Who is in the room, as LiveKit saw it, into attendance (joins, leaves, no-shows)."""
    if event.event not in ("participant_joined", "participant_left"):
        return
    deliberate = event.participant.disconnect_reason == DisconnectReason.CLIENT_INITIATED
    await do_mark_from_livekit(
        runtime, event.room.name, event.participant.identity,
        event.event == "participant_joined", runtime.clock.now(), deliberate,
    )
