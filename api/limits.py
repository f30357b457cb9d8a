"""What the ASGI layer enforces before any route reads a request: who the client is behind a
trusted proxy, and how big a body may be.

`ForwardedClient` takes the client address from `X-Forwarded-For` only when the direct peer
is one of `trusted_proxies` (the rightmost address no trusted proxy added); from anyone else
the header is ignored, so rotating it cannot dodge a per-address limit. `BodyLimit` refuses a
body over `max_body_bytes` with 413 problem+json: at once when Content-Length says so, else as
soon as the streamed bytes pass the limit, before anything parses them.
"""

from __future__ import annotations

import ipaddress
import json
from collections.abc import Iterable

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from api.problems import MEDIA_TYPE

Network = ipaddress.IPv4Network | ipaddress.IPv6Network


def networks(entries: Iterable[str]) -> tuple[Network, ...]:
    return tuple(ipaddress.ip_network(entry, strict=False) for entry in entries)


def _trusted(address: str, proxies: tuple[Network, ...]) -> bool:
    try:
        ip = ipaddress.ip_address(address)
    except ValueError:
        return False
    return any(ip in net for net in proxies)


class ForwardedClient:
    def __init__(self, app: ASGIApp, proxies: Iterable[str]) -> None:
        self.app = app
        self.proxies = networks(proxies)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        client = scope.get("client")
        if client and scope["type"] in ("http", "websocket") and _trusted(client[0], self.proxies):
            forwarded = self._client(scope)
            if forwarded is not None:
                scope["client"] = (forwarded, 0)
        await self.app(scope, receive, send)

    def _client(self, scope: Scope) -> str | None:
        values = [v for k, v in scope.get("headers") or () if k == b"x-forwarded-for"]
        if not values:
            return None
        hops = [h.strip() for h in b",".join(values).decode("latin-1").split(",") if h.strip()]
        for hop in reversed(hops):  # the last hop a trusted proxy did not add is the client
            if not _trusted(hop, self.proxies):
                return hop
        return hops[0] if hops else None


def _too_large(limit: int) -> tuple[Message, Message]:
    body = json.dumps({
        "type": "urn:callgate:problem:payload_too_large",
        "title": "Payload too large",
        "status": 413,
        "detail": f"the request body may hold at most {limit} bytes",
        "code": "payload_too_large",
    }).encode()
    start: Message = {
        "type": "http.response.start",
        "status": 413,
        "headers": [
            (b"content-type", MEDIA_TYPE.encode()),
            (b"content-length", str(len(body)).encode()),
            (b"connection", b"close"),
        ],
    }
    return start, {"type": "http.response.body", "body": body}


class BodyLimit:
    def __init__(self, app: ASGIApp, limit: int) -> None:
        self.app = app
        self.limit = limit

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        start, body = _too_large(self.limit)
        declared = dict(scope.get("headers") or ()).get(b"content-length")
        if declared is not None and declared.isdigit() and int(declared) > self.limit:
            await send(start)
            await send(body)
            return
        seen = 0
        exceeded = replaced = passed = False

        async def counted() -> Message:
            nonlocal seen, exceeded
            if exceeded:  # whatever reads on after the limit learns the client is gone
                return {"type": "http.disconnect"}
            message = await receive()
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > self.limit:
                    exceeded = True
                    return {"type": "http.disconnect"}
            return message

        async def guarded(message: Message) -> None:
            nonlocal replaced, passed
            if message["type"] == "http.response.start":
                if exceeded:  # the route's own answer to the cut body becomes the 413
                    replaced = True
                    await send(start)
                    await send(body)
                    return
                passed = True
            elif replaced:
                return
            await send(message)

        await self.app(scope, counted, guarded)
        if exceeded and not (replaced or passed):
            await send(start)
            await send(body)
