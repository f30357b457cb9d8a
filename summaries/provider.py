"""The AI provider: OpenAI (or any OpenAI-compatible server) through the `openai` client.

Each method takes only the purpose-bound payload of its purpose and checks its seal before a
byte leaves. Requests go with `store=false`; structured output is asked for with a JSON schema
and validated with pydantic. 429 (honouring Retry-After), 5xx, timeouts and malformed output
are retried with exponential backoff; other 4xx are not. Without a configured endpoint there
is no provider and the AI features answer `ai_unavailable`: nothing is faked.
"""

from __future__ import annotations

import asyncio
import json
import random
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, Generic, TypeVar
from urllib.parse import urlsplit

import openai
import structlog
from openai import AsyncOpenAI
from pydantic import BaseModel, Field, ValidationError

from core.errors import Unavailable
from core.purposes import Purpose
from core.settings import Settings
from summaries.payloads import (
    AgendaPayload,
    SummaryPayload,
    TranscriptionPayload,
    check_payload,
)

log = structlog.get_logger(__name__)

MAX_RETRY_AFTER_S = 60.0
DEFAULT_BASE_URL = "https://api.openai.com/v1"


class AiUnavailable(Unavailable):
    code = "ai_unavailable"
    title = "AI features unavailable"


class ProviderError(Exception):
    """A provider call that failed for good; `code` is stored on the job."""

    def __init__(self, code: str, detail: str, *, attempts: int, sent_bytes: int) -> None:
        super().__init__(f"{code}: {detail}")
        self.code = code
        self.detail = detail
        self.attempts = attempts
        self.sent_bytes = sent_bytes


class _Retry(Exception):
    def __init__(self, code: str, detail: str, delay_s: float | None = None) -> None:
        super().__init__(detail)
        self.code = code
        self.detail = detail
        self.delay_s = delay_s


class AgendaItem(BaseModel):
    title: str = Field(min_length=1, max_length=200)
    minutes: int = Field(ge=1, le=480)


class Agenda(BaseModel):
    items: list[AgendaItem] = Field(min_length=1, max_length=20)


class ActionItem(BaseModel):
    owner: str = Field(max_length=100)
    task: str = Field(min_length=1, max_length=500)


class Summary(BaseModel):
    summary: str = Field(min_length=1)
    decisions: list[str]
    action_items: list[ActionItem]


def _strict(properties: dict[str, Any]) -> dict[str, Any]:
    return {
        "type": "object",
        "properties": properties,
        "required": list(properties),
        "additionalProperties": False,
    }


_STR = {"type": "string"}
AGENDA_SCHEMA = _strict(
    {"items": {"type": "array", "items": _strict({"title": _STR, "minutes": {"type": "integer"}})}}
)
SUMMARY_SCHEMA = _strict(
    {
        "summary": _STR,
        "decisions": {"type": "array", "items": _STR},
        "action_items": {"type": "array", "items": _strict({"owner": _STR, "task": _STR})},
    }
)

T = TypeVar("T")


@dataclass(frozen=True)
class Outcome(Generic[T]):
    value: T
    attempts: int
    sent_bytes: int


@dataclass(frozen=True)
class Heard:
    """What the provider heard in one audio piece (index into the payload's pieces)."""

    index: int
    text: str


def is_configured(settings: Settings) -> bool:
    return settings.openai_base_url is not None or settings.openai_api_key is not None


def _language(tag: str) -> str:
    return tag.split("-", 1)[0].lower()


class OpenAIProvider:
    name = "openai"

    def __init__(
        self,
        client: AsyncOpenAI,
        settings: Settings,
        *,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
        backoff_s: float = 0.5,
    ) -> None:
        self._client = client
        self.model = settings.openai_model
        self.transcription_model = settings.openai_transcription_model
        self.endpoint = str(client.base_url).rstrip("/")
        self._chat = settings.openai_chat_completions
        self._attempts = settings.openai_max_attempts
        self._sleep = sleep
        self._backoff_s = backoff_s

    @classmethod
    def from_settings(cls, settings: Settings) -> OpenAIProvider | None:
        """The configured provider, or None when no endpoint/key is set."""
        if not is_configured(settings):
            return None
        key = settings.openai_api_key.get_secret_value() if settings.openai_api_key else "none"
        client = AsyncOpenAI(
            api_key=key,
            base_url=settings.openai_base_url or DEFAULT_BASE_URL,
            timeout=settings.openai_timeout_s,
            max_retries=0,  # retries are ours: counted, logged, honouring Retry-After
        )
        return cls(client, settings)

    @property
    def host(self) -> str:
        return urlsplit(self.endpoint).netloc

    async def close(self) -> None:
        await self._client.close()

    async def agenda(self, payload: AgendaPayload, *, minutes: int) -> Outcome[Agenda]:
        check_payload(payload, Purpose.AI_AGENDA)
        fields = {p.label: p.text for p in payload.pieces}
        instructions = (
            "Draft a short agenda for a booked session from its title and the client's stated "
            f"purpose. Use time boxes in whole minutes adding up to at most {minutes}. Write in "
            f"the language with tag {payload.language!r}. Answer with JSON only."
        )
        return await self._structured("agenda", AGENDA_SCHEMA, Agenda, instructions, fields)

    async def summarize(self, payload: SummaryPayload) -> Outcome[Summary]:
        check_payload(payload, Purpose.AI_SUMMARY)
        segments = [{"speaker": p.label, "text": p.text} for p in payload.pieces]
        instructions = (
            "Summarize this session transcript: a short summary, the decisions taken, and the "
            "action items with their owner (a speaker label as given). Write in the language "
            f"with tag {payload.language!r}. Answer with JSON only."
        )
        return await self._structured(
            "summary", SUMMARY_SCHEMA, Summary, instructions, {"segments": segments}
        )

    async def transcribe(self, payload: TranscriptionPayload) -> Outcome[list[Heard]]:
        check_payload(payload, Purpose.TRANSCRIPTION)
        heard: list[Heard] = []
        attempts = 0
        sent = 0
        for index, piece in enumerate(payload.pieces):
            suffix = "ogg" if "ogg" in piece.mime else "bin"
            upload = (f"span-{index}.{suffix}", piece.audio, piece.mime)

            async def call(upload: tuple[str, bytes, str] = upload) -> str:
                result = await self._client.audio.transcriptions.create(
                    model=self.transcription_model,
                    file=upload,
                    language=_language(payload.language),
                    response_format="json",
                )
                return str(result.text)

            outcome = await self._retrying(call, len(piece.audio))
            attempts += outcome.attempts
            sent += outcome.sent_bytes
            heard.append(Heard(index, outcome.value.strip()))
        return Outcome(heard, attempts, sent)

    async def _structured(
        self,
        name: str,
        schema: dict[str, Any],
        model: type[BaseModel],
        instructions: str,
        data: dict[str, Any],
    ) -> Outcome[Any]:
        content = json.dumps(data, ensure_ascii=False)

        async def call() -> Any:
            text = await (self._chat_call if self._chat else self._responses_call)(
                name, schema, instructions, content
            )
            try:
                return model.model_validate_json(text)
            except ValidationError as exc:
                raise _Retry("malformed_output", f"the {name} did not match its schema") from exc

        return await self._retrying(call, len(content.encode()) + len(instructions.encode()))

    async def _responses_call(
        self, name: str, schema: dict[str, Any], instructions: str, content: str
    ) -> str:
        response = await self._client.responses.create(
            model=self.model,
            instructions=instructions,
            input=[{"role": "user", "content": content}],
            store=False,
            text={"format": {"type": "json_schema", "name": name, "schema": schema,
                             "strict": True}},
        )
        return response.output_text

    async def _chat_call(
        self, name: str, schema: dict[str, Any], instructions: str, content: str
    ) -> str:
        response = await self._client.chat.completions.create(
            model=self.model,
            messages=[
                {"role": "system", "content": instructions},
                {"role": "user", "content": content},
            ],
            store=False,
            response_format={
                "type": "json_schema",
                "json_schema": {"name": name, "schema": schema, "strict": True},
            },
        )
        return response.choices[0].message.content or ""

    async def _retrying(self, call: Callable[[], Awaitable[T]], size: int) -> Outcome[T]:
        last = _Retry("provider_error", "no attempt made")
        for attempt in range(1, self._attempts + 1):
            try:
                return Outcome(await self._classify(call), attempt, size * attempt)
            except _Retry as exc:
                last = exc
                log.warning("ai.retry", code=exc.code, attempt=attempt)
                if attempt < self._attempts:
                    await self._sleep(self._delay(attempt, exc.delay_s))
            except ProviderError as exc:
                raise ProviderError(
                    exc.code, exc.detail, attempts=attempt, sent_bytes=size * attempt
                ) from exc
        raise ProviderError(
            last.code, last.detail, attempts=self._attempts, sent_bytes=size * self._attempts
        )

    def _delay(self, attempt: int, retry_after: float | None) -> float:
        if retry_after is not None:
            return min(retry_after, MAX_RETRY_AFTER_S)
        base: float = self._backoff_s * 2 ** (attempt - 1)
        return float(min(base, 30.0) * (0.5 + random.random() / 2))  # noqa: S311 (jitter)

    @staticmethod
    async def _classify(call: Callable[[], Awaitable[T]]) -> T:
        try:
            return await call()
        except openai.APITimeoutError as exc:
            raise _Retry("provider_timeout", "the provider did not answer in time") from exc
        except openai.APIConnectionError as exc:
            raise _Retry("provider_unreachable", "the provider could not be reached") from exc
        except openai.RateLimitError as exc:
            raise _Retry("provider_rate_limited", "429", _retry_after(exc)) from exc
        except openai.APIStatusError as exc:
            if exc.status_code >= 500:
                raise _Retry("provider_error", f"HTTP {exc.status_code}") from exc
            raise ProviderError(
                "provider_rejected", f"HTTP {exc.status_code}", attempts=1, sent_bytes=0
            ) from exc


def _retry_after(exc: openai.APIStatusError) -> float | None:
    raw = exc.response.headers.get("retry-after")
    try:
        return max(0.0, float(raw)) if raw is not None else None
    except ValueError:
        return None
