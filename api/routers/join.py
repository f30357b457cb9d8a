"""The participant's door: a join credential exchanged for media access.

`POST /v1/join` is the hottest request (everyone in a booking joins within a few minutes), so
`JoinFastPath` serves it ahead of FastAPI's routing, dependency and validation layers: the
request id, access log and metrics still wrap it (`RequestContext`), domain errors become the
same problem+json through the app's own exception handlers, and any body that is not exactly
`{"credential": "<1..200 characters>"}` sent as JSON is passed on untouched to the FastAPI
route below, which answers it as it always has (422 naming the field). That route is also
what OpenAPI documents.
"""

from __future__ import annotations

import inspect
import json
from typing import Annotated

from fastapi import APIRouter, Body, FastAPI, Request, Response
from pydantic import BaseModel, ConfigDict, Field
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from api import problems
from api.observability import Metrics, RequestContext
from api.services import Services
from core.errors import CallgateError
from signaling.join import JoinGrant, do_join

router = APIRouter(prefix="/v1", tags=["join (participant)"])
PATH = "/v1/join"
NO_STORE = {"Cache-Control": "no-store"}  # the answer carries live credentials
MAX_CREDENTIAL = 200
# A valid body is ~60 bytes; anything longer than this goes to the FastAPI route (which has
# the app's own body limits) instead of being buffered here.
MAX_FAST_BODY = 1024


class JoinRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    credential: str = Field(
        min_length=1,
        max_length=MAX_CREDENTIAL,
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
    # Reached only for what JoinFastPath passes on; the grant is the same JSON either way.
    services: Services = request.app.state.services
    address = request.client.host if request.client is not None else "unknown"
    grant = await do_join(services.runtime, body.credential, address, services.join)
    return Response(grant, media_type="application/json", headers=NO_STORE)


def is_join(scope: Scope) -> bool:
    return bool(scope["type"] == "http" and scope["path"] == PATH and scope["method"] == "POST")


def _is_json(headers: list[tuple[bytes, bytes]]) -> bool:
    for name, value in headers:
        if name == b"content-type":
            media = value.split(b";", 1)[0].strip().lower()
            return media == b"application/json"
    return False


def plain_credential(body: bytes) -> str | None:
    """The credential of a body that JoinRequest accepts as is, else None (let FastAPI judge)."""
    try:
        data = json.loads(body)
    except ValueError:
        return None
    if type(data) is not dict or len(data) != 1:
        return None
    credential = data.get("credential")
    if type(credential) is not str or not 1 <= len(credential) <= MAX_CREDENTIAL:
        return None
    return credential


async def _read_body(receive: Receive) -> tuple[list[Message], bytes | None]:
    """The messages read, and the whole body if it fits MAX_FAST_BODY (else None)."""
    messages: list[Message] = []
    size = 0
    while True:
        message = await receive()
        messages.append(message)
        if message["type"] != "http.request":
            return messages, None
        size += len(message.get("body", b""))
        if size > MAX_FAST_BODY:
            return messages, None
        if not message.get("more_body", False):
            return messages, b"".join(m.get("body", b"") for m in messages)


def _replay(messages: list[Message], receive: Receive) -> Receive:
    """`receive` again from the start: the messages already read, then the rest."""
    pending = list(messages)

    async def replayed() -> Message:
        return pending.pop(0) if pending else await receive()

    return replayed


class JoinFastPath:
    """Serves `POST /v1/join` for the app `app` (see the module docstring); everything else,
    and every body it does not accept as is, goes to `fallback` (the FastAPI stack)."""

    def __init__(self, app: FastAPI, fallback: ASGIApp, metrics: Metrics) -> None:
        self._app = app
        self._fallback = fallback
        self._route = next(r for r in router.routes if getattr(r, "path", "") == PATH)
        self._handle = RequestContext(self._serve, metrics=metrics)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if not _is_json(scope["headers"]):
            await self._fallback(scope, receive, send)
            return
        messages, body = await _read_body(receive)
        credential = None if body is None else plain_credential(body)
        if credential is None:
            await self._fallback(scope, _replay(messages, receive), send)
            return
        scope["app"] = self._app
        scope["route"] = self._route  # the route label of metrics and access logs
        scope["callgate.credential"] = credential
        await self._handle(scope, receive, send)

    async def _serve(self, scope: Scope, receive: Receive, send: Send) -> None:
        services: Services = self._app.state.services
        client = scope.get("client")
        address = client[0] if client else "unknown"
        try:
            grant = await do_join(
                services.runtime, scope["callgate.credential"], address, services.join
            )
        except Exception as exc:  # the app's own handlers: the same problem+json as elsewhere
            response = await self._problem(scope, exc)
            await response(scope, receive, send)
            return
        await send({
            "type": "http.response.start",
            "status": 200,
            "headers": [
                (b"cache-control", b"no-store"),
                (b"content-length", str(len(grant)).encode()),
                (b"content-type", b"application/json"),
            ],
        })
        await send({"type": "http.response.body", "body": grant})

    async def _problem(self, scope: Scope, exc: Exception) -> Response:
        handler = self._app.exception_handlers[
            CallgateError if isinstance(exc, CallgateError) else Exception
        ]
        response = handler(Request(scope), exc)
        return await response if inspect.isawaitable(response) else response
