"""A local Twirp server checking LiveKit's API tokens, for services that cannot run here
(LiveKit Egress: tests/standins/egress.py), spoken to by the real `livekit-api` client.

Twirp (https://twitchtv.github.io/twirp/docs/spec_v7.html): `POST /twirp/<pkg>.<Service>/<Method>`
with a protobuf (`application/protobuf`) or JSON (`application/json`) body; the answer uses the
same encoding; errors are JSON `{"code", "msg"}` with the matching HTTP status. Every call's
`Authorization: Bearer <jwt>` is checked with livekit-api's own `TokenVerifier` and the grant the
method needs, as the LiveKit server does.

Services are added with `route(...)`. `stop()` and `start()` again on the same port simulate
an outage. (The LiveKit server itself is never stood in for: tests/livekit_server.py runs it.)
"""

from __future__ import annotations

import socket
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import jwt
from aiohttp import web
from google.protobuf import json_format
from google.protobuf.message import Message
from livekit import api as lk

Handler = Callable[[Any, lk.access_token.Claims], Awaitable[Message]]
Grant = Callable[[lk.access_token.Claims, Any], bool]

PROTOBUF = "application/protobuf"
JSON = "application/json"
STATUS = {
    "invalid_argument": 400,
    "malformed": 400,
    "unauthenticated": 401,
    "permission_denied": 403,
    "not_found": 404,
    "bad_route": 404,
    "already_exists": 409,
    "failed_precondition": 412,
    "internal": 500,
}


class TwirpFailure(Exception):
    def __init__(self, code: str, msg: str) -> None:
        super().__init__(msg)
        self.code = code
        self.msg = msg


@dataclass(frozen=True)
class Call:
    """One request as received: method (`livekit.RoomService/CreateRoom`), encoding, body."""

    method: str
    content_type: str
    request: Message | None  # None when it could not be decoded
    identity: str
    status: int


@dataclass
class _Route:
    request_class: type[Message]
    handler: Handler
    grant: Grant


class TwirpStandIn:
    """Start with `async with TwirpStandIn(key, secret) as server:`; `server.url` is the URL
    to give callgate."""

    def __init__(self, api_key: str, api_secret: str, port: int = 0) -> None:
        self.verifier = lk.TokenVerifier(api_key, api_secret)
        self.calls: list[Call] = []
        self._routes: dict[str, _Route] = {}
        self._runner: web.AppRunner | None = None
        self.port = port or _free_port()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def route(
        self, service: str, method: str, request_class: type[Message], handler: Handler,
        grant: Grant,
    ) -> None:
        """Serve `service/method`: `grant(claims, request)` must hold, then `handler` answers."""
        self._routes[f"{service}/{method}"] = _Route(request_class, handler, grant)

    def calls_to(self, method: str) -> list[Call]:
        return [c for c in self.calls if c.method.endswith(f"/{method}")]

    async def start(self) -> None:
        app = web.Application()
        app.router.add_post("/twirp/{method:.+}", self._serve)
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(("127.0.0.1", self.port))
        await web.SockSite(self._runner, sock).start()

    async def stop(self) -> None:
        runner, self._runner = self._runner, None
        if runner is not None:
            await runner.cleanup()

    async def __aenter__(self) -> TwirpStandIn:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    async def _serve(self, request: web.Request) -> web.Response:
        method = request.match_info["method"]
        content_type = request.content_type
        message: Message | None = None
        try:
            route = self._routes.get(method)
            if route is None:
                raise TwirpFailure("bad_route", f"no handler for {method}")
            claims = self._authenticate(request.headers.get("Authorization", ""))
            message = self._decode(route.request_class, content_type, await request.read())
            if not route.grant(claims, message):
                raise TwirpFailure("permission_denied", "the token lacks the grant for this")
            answer = await route.handler(message, claims)
        except TwirpFailure as failure:
            status = STATUS.get(failure.code, 500)
            self.calls.append(Call(method, content_type, message, "", status))
            return web.json_response({"code": failure.code, "msg": failure.msg}, status=status)
        self.calls.append(Call(method, content_type, message, claims.identity, 200))
        if content_type == JSON:
            return web.Response(text=json_format.MessageToJson(answer), content_type=JSON)
        return web.Response(body=answer.SerializeToString(), content_type=PROTOBUF)

    def _authenticate(self, header: str) -> lk.access_token.Claims:
        scheme, _, token = header.partition(" ")
        if scheme.lower() != "bearer" or not token:
            raise TwirpFailure("unauthenticated", "no bearer token")
        try:
            return self.verifier.verify(token)
        except jwt.PyJWTError as exc:
            raise TwirpFailure("unauthenticated", f"token rejected: {exc}") from None

    @staticmethod
    def _decode(cls: type[Message], content_type: str, body: bytes) -> Message:
        try:
            if content_type == JSON:
                return json_format.Parse(body or b"{}", cls())
            if content_type == PROTOBUF:
                return cls.FromString(body)
        except (json_format.ParseError, ValueError) as exc:
            raise TwirpFailure("malformed", str(exc)) from None
        raise TwirpFailure("bad_route", f"unsupported content type {content_type!r}")


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port
