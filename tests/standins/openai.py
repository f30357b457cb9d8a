"""A local server speaking the OpenAI HTTP API to the real `openai` client, recording requests.

Serves `POST /v1/responses`, `POST /v1/chat/completions` and `POST /v1/audio/transcriptions`
(multipart) on 127.0.0.1. Every request is kept (headers, JSON body, multipart fields and file
bytes) so tests can prove what left callgate. Failures are programmed per request: a delay
(to trip the client timeout), 429 with Retry-After, 500, 400, or output that is not the JSON
the caller asked for.
"""

from __future__ import annotations

import asyncio
import enum
import hashlib
import json
import secrets
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web


class FaultKind(enum.StrEnum):
    DELAY = "delay"
    RATE_LIMITED = "rate_limited"
    SERVER_ERROR = "server_error"
    BAD_REQUEST = "bad_request"
    MALFORMED = "malformed"


@dataclass(frozen=True)
class Fault:
    kind: FaultKind
    seconds: float = 0.0  # DELAY: how long to stall; RATE_LIMITED: the Retry-After value
    path: str | None = None  # only requests to this path meet it (None: any)


@dataclass
class Recorded:
    path: str
    headers: dict[str, str]
    json: dict[str, Any] | None = None
    fields: dict[str, str] = field(default_factory=dict)
    files: dict[str, bytes] = field(default_factory=dict)
    at: float = 0.0
    answered: int = 200

    def text(self) -> str:
        """Everything the request carried, as one string (for 'never appears' checks)."""
        parts = [json.dumps(self.json, ensure_ascii=False) if self.json is not None else ""]
        parts += [f"{k}={v}" for k, v in self.fields.items()]
        return "\n".join(parts)


def _schema_name(body: dict[str, Any]) -> str:
    fmt = (body.get("text") or {}).get("format") or {}
    if fmt.get("name"):
        return str(fmt["name"])
    schema = (body.get("response_format") or {}).get("json_schema") or {}
    return str(schema.get("name", ""))


def default_output(schema: str, body: dict[str, Any]) -> dict[str, Any]:
    """A valid answer for callgate's schemas; tests replace it through `answer`."""
    if schema == "agenda":
        return {"items": [{"title": "Goals", "minutes": 10}, {"title": "Next steps", "minutes": 5}]}
    return {
        "summary": "The participants discussed the plan.",
        "decisions": ["Ship in spring"],
        "action_items": [{"owner": "Host", "task": "Send the notes"}],
    }


class OpenAIStandIn:
    """Start with `async with OpenAIStandIn() as server:`; `server.base_url` ends in `/v1`."""

    def __init__(self) -> None:
        self.requests: list[Recorded] = []
        self.faults: deque[Fault] = deque()
        self.answer: Callable[[str, dict[str, Any]], dict[str, Any]] = default_output
        # Transcription text by SHA-256 of the uploaded audio; unknown audio gets `unheard`.
        self.transcripts: dict[str, str] = {}
        self.unheard = "(inaudible)"
        self._runner: web.AppRunner | None = None
        self.port = 0

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}/v1"

    def fail(self, *faults: Fault) -> None:
        """The next requests meet these faults, one each, in order."""
        self.faults.extend(faults)

    def hear(self, audio: bytes, text: str) -> None:
        self.transcripts[hashlib.sha256(audio).hexdigest()] = text

    def on(self, path: str) -> list[Recorded]:
        return [r for r in self.requests if r.path == path]

    async def __aenter__(self) -> OpenAIStandIn:
        app = web.Application(client_max_size=64 * 1024 * 1024)
        app.router.add_post("/v1/responses", self._responses)
        app.router.add_post("/v1/chat/completions", self._chat)
        app.router.add_post("/v1/audio/transcriptions", self._transcriptions)
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        server = site._server
        assert server is not None
        self.port = server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
        return self

    async def __aexit__(self, *exc: object) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    async def _record(self, request: web.Request) -> Recorded:
        rec = Recorded(path=request.path, headers=dict(request.headers), at=time.monotonic())
        if request.content_type == "multipart/form-data":
            form = await request.post()
            for name, value in form.items():
                if isinstance(value, web.FileField):
                    rec.files[name] = value.file.read()
                else:
                    rec.fields[name] = str(value)
        else:
            rec.json = await request.json()
        self.requests.append(rec)
        return rec

    async def _fault(self, rec: Recorded) -> tuple[web.Response | None, bool]:
        """A response for a programmed fault (or None), and whether output must be malformed."""
        fault = next((f for f in self.faults if f.path in (None, rec.path)), None)
        if fault is None:
            return None, False
        self.faults.remove(fault)
        if fault.kind is FaultKind.DELAY:
            await asyncio.sleep(fault.seconds)
            return None, False
        if fault.kind is FaultKind.MALFORMED:
            return None, True
        status, headers = 500, {}
        if fault.kind is FaultKind.RATE_LIMITED:
            status, headers = 429, {"retry-after": f"{fault.seconds:g}"}
        elif fault.kind is FaultKind.BAD_REQUEST:
            status = 400
        rec.answered = status
        body = {"error": {"message": fault.kind.value, "type": fault.kind.value, "code": None}}
        return web.json_response(body, status=status, headers=headers), False

    async def _responses(self, request: web.Request) -> web.Response:
        rec = await self._record(request)
        failed, malformed = await self._fault(rec)
        if failed is not None:
            return failed
        body = rec.json or {}
        text = "{not json" if malformed else json.dumps(self.answer(_schema_name(body), body))
        return web.json_response(
            {
                "id": f"resp_{secrets.token_hex(8)}",
                "object": "response",
                "created_at": int(time.time()),
                "model": body.get("model", ""),
                "status": "completed",
                "store": body.get("store", True),
                "output": [
                    {
                        "type": "message",
                        "id": f"msg_{secrets.token_hex(8)}",
                        "role": "assistant",
                        "status": "completed",
                        "content": [{"type": "output_text", "text": text, "annotations": []}],
                    }
                ],
                "parallel_tool_calls": False,
                "tool_choice": "auto",
                "tools": [],
                "usage": {"input_tokens": len(json.dumps(body)) // 4, "output_tokens": 20,
                          "total_tokens": len(json.dumps(body)) // 4 + 20,
                          "input_tokens_details": {"cached_tokens": 0},
                          "output_tokens_details": {"reasoning_tokens": 0}},
            }
        )

    async def _chat(self, request: web.Request) -> web.Response:
        rec = await self._record(request)
        failed, malformed = await self._fault(rec)
        if failed is not None:
            return failed
        body = rec.json or {}
        text = "{not json" if malformed else json.dumps(self.answer(_schema_name(body), body))
        return web.json_response(
            {
                "id": f"chatcmpl-{secrets.token_hex(8)}",
                "object": "chat.completion",
                "created": int(time.time()),
                "model": body.get("model", ""),
                "choices": [
                    {
                        "index": 0,
                        "finish_reason": "stop",
                        "message": {"role": "assistant", "content": text},
                    }
                ],
            }
        )

    async def _transcriptions(self, request: web.Request) -> web.Response:
        rec = await self._record(request)
        failed, malformed = await self._fault(rec)
        if failed is not None:
            return failed
        if malformed:
            return web.Response(text="<html>oops</html>", content_type="application/json")
        audio = rec.files.get("file", b"")
        text = self.transcripts.get(hashlib.sha256(audio).hexdigest(), self.unheard)
        return web.json_response({"text": text})
