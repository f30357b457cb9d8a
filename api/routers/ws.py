"""`GET /v1/rooms/{room}/ws`: the signaling WebSocket (protocol in docs/signaling.md).

Served as a plain ASGI app ahead of FastAPI (`CallgateApp` hands it every WebSocket whose path
is a room's, see `room_of`): a socket lives as long as the call, and every layer of the
framework's stack (routing, the exception and middleware wrappers, the `WebSocket` object)
stayed suspended with it and wrapped each message it sent, which cost memory per idle socket
and CPU per relayed message, both benchmark goals (docs/performance.md). What those layers did
for this socket is done here: the path and query are read, the request id is bound to the
logs, and an unexpected error closes the socket with 1011.

The socket is accepted first so a refusal can carry its close code and reason (a refusal
before accepting reaches the browser only as an HTTP 403 without either).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import uuid
from collections.abc import Coroutine
from typing import TYPE_CHECKING, Any
from urllib.parse import parse_qsl

import structlog
from starlette.types import Message, Receive, Scope, Send

from api.observability import scope_request_id
from core.errors import CallgateError
from core.runtime import Runtime
from media.recordings import TrackKind, open_tracks
from signaling.admission import access_admission, close_code
from signaling.hub import PONG, Hub
from signaling.protocol import MAX_FRAME_BYTES, CloseCode, RecordingState

if TYPE_CHECKING:
    from fastapi import FastAPI

log = structlog.get_logger(__name__)

PREFIX, SUFFIX = "/v1/rooms/", "/ws"
MAX_TICKET = 512
_FLAGS = {
    **dict.fromkeys(("1", "true", "t", "yes", "y", "on"), True),
    **dict.fromkeys(("0", "false", "f", "no", "n", "off"), False),
}


def room_of(scope: Scope) -> str | None:
    """The room name when `scope` is a signaling socket (`/v1/rooms/{room}/ws`), else None."""
    if scope["type"] != "websocket":
        return None
    path: str = scope["path"]
    if not path.startswith(PREFIX) or not path.endswith(SUFFIX):
        return None
    room = path[len(PREFIX):-len(SUFFIX)]
    return room if room and "/" not in room else None


class Socket:
    """The hub's `Transport` over the server's ASGI `send`: one coroutine per message sent,
    the server's own, with nothing wrapped around it."""

    __slots__ = ("_send",)

    def __init__(self, send: Send) -> None:
        self._send = send

    def send_text(self, data: str) -> Coroutine[Any, Any, None]:
        return self._send({"type": "websocket.send", "text": data})  # type: ignore[return-value]

    async def close(self, code: int = 1000, reason: str | None = None) -> None:
        await self._send({"type": "websocket.close", "code": code, "reason": reason or ""})


async def room_socket(
    app: FastAPI, room: str, scope: Scope, receive: Receive, send: Send
) -> None:
    structlog.contextvars.bind_contextvars(request_id=scope_request_id(scope))
    socket = Socket(send)
    try:
        if (await receive())["type"] != "websocket.connect":
            return
        await send({"type": "websocket.accept"})
        await _serve(app, room, scope, receive, socket)
    except Exception:  # a bug or an outage must not look like a refusal; the socket ends
        log.exception("signaling.socket_failed", room=room)
        with contextlib.suppress(Exception):
            await socket.close(CloseCode.SERVER_ERROR, "unexpected server error")
    finally:
        structlog.contextvars.unbind_contextvars("request_id")


async def _serve(app: FastAPI, room: str, scope: Scope, receive: Receive, socket: Socket) -> None:
    runtime: Runtime = app.state.runtime
    hub: Hub = app.state.services.hub
    query = dict(parse_qsl(scope["query_string"].decode("latin-1"), keep_blank_values=True))
    ticket, hold = query.get("ticket", ""), _FLAGS.get(query.get("hold", "false").lower())
    if len(ticket) > MAX_TICKET:
        await socket.close(CloseCode.BAD_TICKET, "the ticket is too long")
        return
    if hold is None:
        await socket.close(CloseCode.POLICY, "hold must be true or false")
        return
    if hold and not await _lobby(receive, socket, runtime.settings.ticket_ttl_s):
        return
    try:
        admission = await access_admission(runtime, room, ticket, _header(scope, b"origin"))
    except CallgateError as exc:
        await socket.close(close_code(exc), exc.detail[:120])
        return
    conn = await hub.attach(
        socket, room_name=room, booking_id=str(admission.booking_id),
        closes_at=admission.closes_at, peer=admission.peer, ice_servers=admission.ice_servers,
        consent=admission.consent,
        recording=[] if room in hub.rooms else await _recorded(runtime, admission.booking_id),
    )
    try:
        while True:
            message = await receive()
            text = message.get("text")
            if text is None:
                if message["type"] == "websocket.disconnect":
                    break
                text = _binary(message)
            if text is None or (len(text) * 4 > MAX_FRAME_BYTES and _too_big(text)):
                conn.finish(CloseCode.TOO_BIG, "frames are limited to 64 KiB")
                break
            pending = hub.handle(conn, text)
            if pending is not None:
                await pending
    finally:
        await hub.detach(conn)


def _header(scope: Scope, name: bytes) -> str | None:
    for key, value in scope["headers"]:
        if key == name:
            return str(value.decode("latin-1"))
    return None


def _binary(message: Message) -> str | None:
    raw = message.get("bytes") or b""
    return raw.decode(errors="replace") if len(raw) <= MAX_FRAME_BYTES else None


def _too_big(text: str) -> bool:
    # A character is at most 4 bytes in UTF-8: the caller encodes only when it could matter.
    return len(text.encode()) > MAX_FRAME_BYTES


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


async def _lobby(receive: Receive, socket: Socket, wait_s: float) -> bool:
    """`?hold=1`: the page opened its socket on the pre-join screen, so that the click costs no
    handshake. Nothing is admitted, redeemed or shown to anyone until it sends `join`; pings
    are answered. False when it went away, sent anything else, or waited longer than a ticket
    lives (its ticket is then expired: it reconnects with a fresh one)."""
    while True:
        try:
            message = await asyncio.wait_for(receive(), wait_s)
        except TimeoutError:
            await socket.close(CloseCode.BAD_TICKET, "the ticket expired while waiting")
            return False
        if message["type"] == "websocket.disconnect":
            return False
        kind = _type_of(message.get("text") or "")
        if kind == "join":
            return True
        if kind != "ping":
            await socket.close(CloseCode.POLICY, "send `join` (or `ping`) first")
            return False
        await socket.send_text(PONG)


def _type_of(text: str) -> str | None:
    if len(text) > 64:
        return None
    with contextlib.suppress(ValueError):
        value = json.loads(text)
        if isinstance(value, dict) and isinstance(value.get("type"), str):
            return str(value["type"])
    return None
