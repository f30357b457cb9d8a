"""LiveKit webhooks: the signature check, and "have we seen this event before" for every node.

LiveKit signs each webhook with a JWT (signed with the API secret) whose `sha256` claim is the
base64 SHA-256 of the raw body, and retries deliveries, so events are deduplicated by id:
through Redis when configured (every node behind the load balancer sees the same answer),
else in this process.
"""

from __future__ import annotations

import base64
import hashlib
import hmac

from google.protobuf.json_format import Parse as parse_json
from google.protobuf.json_format import ParseError
from livekit import api as lk
from livekit.protocol.webhook import WebhookEvent

from core.errors import AuthenticationFailed, InvalidInput
from core.runtime import Runtime
from core.settings import Settings
from media.webhooks import do_mark_seen

SEEN_FOR_S = 24 * 3600


def api_credentials(settings: Settings) -> tuple[str, str]:
    """LiveKit API key and secret (the signaling area checks the whole LiveKit config at
    start; here a missing one means no webhook can be trusted)."""
    if not settings.livekit_api_key or settings.livekit_api_secret is None:
        raise AuthenticationFailed("LiveKit API credentials are not configured")
    return settings.livekit_api_key, settings.livekit_api_secret.get_secret_value()


def verify_webhook(settings: Settings, body: bytes, authorization: str | None) -> WebhookEvent:
    """The event in a LiveKit webhook, if its `Authorization` JWT is signed with our API
    secret and carries the SHA-256 of exactly these bytes (LiveKit's webhook signature)."""
    key, secret = api_credentials(settings)
    token = (authorization or "").strip()
    if token.lower().startswith("bearer "):
        token = token[7:].strip()
    try:
        claims = lk.TokenVerifier(key, secret).verify(token)
    except Exception:  # any JWT failure is the same answer
        raise AuthenticationFailed("the webhook signature is not valid") from None
    expected = base64.b64encode(hashlib.sha256(body).digest()).decode()
    if not claims.sha256 or not hmac.compare_digest(claims.sha256, expected):
        raise AuthenticationFailed("the webhook body does not match its signature")
    try:
        return parse_json(body, WebhookEvent(), ignore_unknown_fields=True)
    except (ParseError, UnicodeDecodeError) as exc:
        raise InvalidInput(f"not a LiveKit webhook event: {exc}") from None


class SeenEvents:
    """Event ids already handled, by any node: in Redis, or without it in the database
    (`media.webhooks`), so a replay after a restart is still recognized."""

    def __init__(self, runtime: Runtime) -> None:
        self._runtime = runtime

    async def first_time(self, event_id: str) -> bool:
        if self._runtime.redis is not None:
            key = f"{self._runtime.settings.redis_prefix}:livekit:event:{event_id}"
            return bool(await self._runtime.redis.set(key, b"1", nx=True, ex=SEEN_FOR_S))
        return await do_mark_seen(self._runtime.db, event_id, self._runtime.clock.now())
