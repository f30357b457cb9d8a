"""A real HTTP webhook receiver (uvicorn on a loopback port) that verifies every request with
the `standardwebhooks` package, as an integrating platform would.

It can be down (stopped, the port refuses connections), answer 500 (or 429 with Retry-After),
answer slowly (longer than callgate's timeout; it still records what it got, so a retry is a
duplicate with the same `webhook-id`), or hold requests until released.
"""

from __future__ import annotations

import asyncio
import contextlib
import enum
import json
from dataclasses import dataclass, field
from typing import Any

import uvicorn
from standardwebhooks.webhooks import Webhook, WebhookVerificationError

from tests.support.liveserver import free_port

Scope = dict[str, Any]


class Mode(enum.StrEnum):
    OK = "ok"
    FAIL = "fail"  # 500
    BUSY = "busy"  # 429 with Retry-After
    SLOW = "slow"  # records, then answers after callgate gave up
    HOLD = "hold"  # records, then waits for `release`


@dataclass(frozen=True)
class Received:
    id: str
    type: str
    data: dict[str, Any]
    signatures: int


@dataclass
class Receiver:
    secrets: list[str] = field(default_factory=list)
    mode: Mode = Mode.OK
    slow_s: float = 3.0
    retry_after: str = "3600"
    port: int = field(default_factory=free_port)
    received: list[Received] = field(default_factory=list)
    rejected: int = 0
    attempts: int = 0
    release: asyncio.Event = field(default_factory=asyncio.Event)
    _server: uvicorn.Server | None = None
    _task: asyncio.Task[None] | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/hooks"

    @property
    def ids(self) -> list[str]:
        return [r.id for r in self.received]

    async def start(self) -> None:
        config = uvicorn.Config(
            self.app, host="127.0.0.1", port=self.port, lifespan="off", log_level="error",
            interface="asgi3",
        )
        self._server = uvicorn.Server(config)
        self._task = asyncio.create_task(self._server.serve())
        async with asyncio.timeout(10):
            while not self._server.started:  # noqa: ASYNC110 (uvicorn offers no event)
                await asyncio.sleep(0.02)

    async def stop(self) -> None:
        server, task = self._server, self._task
        self._server = self._task = None
        if server is not None and task is not None:
            self.release.set()
            server.should_exit = True
            with contextlib.suppress(asyncio.CancelledError):
                await task

    def verify(self, body: bytes, headers: dict[str, str]) -> dict[str, Any] | None:
        for secret in self.secrets:
            with contextlib.suppress(WebhookVerificationError):
                payload: dict[str, Any] = Webhook(secret).verify(body, headers)
                return payload
        return None

    async def app(self, scope: Scope, receive: Any, send: Any) -> None:
        assert scope["type"] == "http"
        body = b""
        while True:
            message = await receive()
            body += message.get("body", b"")
            if not message.get("more_body"):
                break
        headers = {k.decode(): v.decode() for k, v in scope["headers"]}
        self.attempts += 1
        mode = self.mode
        if mode is Mode.FAIL:
            await self._answer(send, 500)
            return
        if mode is Mode.BUSY:
            await self._answer(send, 429, [(b"retry-after", self.retry_after.encode())])
            return
        payload = self.verify(body, headers)
        if payload is None:
            self.rejected += 1
            await self._answer(send, 401)
            return
        signatures = len(headers["webhook-signature"].split(" "))
        self.received.append(
            Received(headers["webhook-id"], payload["type"], payload["data"], signatures)
        )
        if mode is Mode.SLOW:
            await asyncio.sleep(self.slow_s)
        elif mode is Mode.HOLD:
            await self.release.wait()
        await self._answer(send, 204)

    @staticmethod
    async def _answer(
        send: Any, status: int, headers: list[tuple[bytes, bytes]] | None = None
    ) -> None:
        start = {"type": "http.response.start", "status": status, "headers": headers or []}
        await send(start)
        await send({"type": "http.response.body", "body": b""})


def first_seen(received: list[Received]) -> list[Received]:
    """Each event once, in the order it first arrived."""
    seen: set[str] = set()
    out = []
    for item in received:
        if item.id not in seen:
            seen.add(item.id)
            out.append(item)
    return out


def dumps(received: list[Received]) -> str:
    return json.dumps([r.data for r in received])
