"""`GET /v1/rooms/{room}/ws`: the signaling WebSocket (protocol in docs/signaling.md).

The socket is accepted first so a refusal can carry its close code and reason (a refusal
before accepting reaches the browser only as an HTTP 403 without either).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import uuid
from typing import Annotated

import structlog
from fastapi import APIRouter, Query, WebSocket

from core.errors import CallgateError
from core.runtime import Runtime
from media.recordings import TrackKind, open_tracks
from signaling.admission import access_admission, close_code
from signaling.hub import PONG, Hub
from signaling.protocol import MAX_FRAME_BYTES, CloseCode, RecordingState

router = APIRouter(tags=["signaling"])
log = structlog.get_logger(__name__)


def _too_big(text: str) -> bool:
    # A character is at most 4 bytes in UTF-8: encode only when it could matter.
    return len(text) * 4 > MAX_FRAME_BYTES and len(text.encode()) > MAX_FRAME_BYTES


async def _recorded(runtime: Runtime, booking_id: uuid.UUID) -> list[RecordingState]:
    """What is being recorded now, for a room this node does not hold yet (a reconnect after
    everyone here left, or another node's room): the recorder's rows, shared by every node."""
    async with runtime.db.session() as session:
        tracks = await open_tracks(session, booking_id)
    return [
        RecordingState(
            who=str(who), audio=TrackKind.AUDIO in kinds, video=TrackKind.VIDEO in kinds
        )
        for who, kinds in tracks.items()
    ]


async def _lobby(websocket: WebSocket, wait_s: float) -> bool:
    """`?hold=1`: the page opened its socket on the pre-join screen, so that the click costs no
    handshake. Nothing is admitted, redeemed or shown to anyone until it sends `join`; pings
    are answered. False when it went away, sent anything else, or waited longer than a ticket
    lives (its ticket is then expired: it reconnects with a fresh one)."""
    while True:
        try:
            message = await asyncio.wait_for(websocket.receive(), wait_s)
        except TimeoutError:
            await websocket.close(CloseCode.BAD_TICKET, "the ticket expired while waiting")
            return False
        if message["type"] == "websocket.disconnect":
            return False
        kind = _type_of(message.get("text") or "")
        if kind == "join":
            return True
        if kind != "ping":
            await websocket.close(CloseCode.POLICY, "send `join` (or `ping`) first")
            return False
        await websocket.send_text(PONG)


def _type_of(text: str) -> str | None:
    if len(text) > 64:
        return None
    with contextlib.suppress(ValueError):
        value = json.loads(text)
        if isinstance(value, dict) and isinstance(value.get("type"), str):
            return str(value["type"])
    return None


@router.websocket("/v1/rooms/{room}/ws")
async def room_socket(
    websocket: WebSocket, room: str, ticket: Annotated[str, Query(max_length=512)] = "",
    hold: bool = False,
) -> None:
    runtime: Runtime = websocket.app.state.runtime
    hub: Hub = websocket.app.state.services.hub
    await websocket.accept()
    if hold and not await _lobby(websocket, runtime.settings.ticket_ttl_s):
        return
    try:
        admission = await access_admission(runtime, room, ticket, websocket.headers.get("origin"))
    except CallgateError as exc:
        await websocket.close(close_code(exc), exc.detail[:120])
        return
    conn = await hub.attach(
        websocket, room_name=room, booking_id=str(admission.booking_id),
        closes_at=admission.closes_at, peer=admission.peer, ice_servers=admission.ice_servers,
        consent=admission.consent,
        recording=[] if room in hub.rooms else await _recorded(runtime, admission.booking_id),
    )
    try:
        while True:
            message = await websocket.receive()
            if message["type"] == "websocket.disconnect":
                break
            text = message.get("text")
            if text is None:
                raw = message.get("bytes") or b""
                text = raw.decode(errors="replace") if len(raw) <= MAX_FRAME_BYTES else None
            if text is None or _too_big(text):
                conn.finish(CloseCode.TOO_BIG, "frames are limited to 64 KiB")
                break
            await hub.handle(conn, text)
    finally:
        await hub.detach(conn)
