"""ICE servers handed to browsers: STUN, and TURN with ephemeral REST credentials.

The TURN credential follows the "TURN REST API" draft (draft-uberti-behave-turn-rest-00) as
coturn implements it with `use-auth-secret`: the username is `<expiry unix time>:<user>`, the
password is base64(HMAC-SHA1(shared secret, username)). coturn refuses the username once the
expiry has passed, so a credential never outlives the join window it was issued for.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import math
import uuid
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from core.settings import Settings


@dataclass(frozen=True)
class TurnCredential:
    username: str
    password: str
    expires_at: datetime


def turn_credential(
    secret: str, user: uuid.UUID | str, now: datetime, ttl: timedelta, not_after: datetime
) -> TurnCredential:
    """A credential valid until `now + ttl`, but never past `not_after` (the window end)."""
    expires_at = min(now + ttl, not_after)
    expiry = math.floor(expires_at.timestamp())
    username = f"{expiry}:{user}"
    mac = hmac.new(secret.encode(), username.encode(), hashlib.sha1).digest()
    return TurnCredential(username, base64.b64encode(mac).decode(), expires_at)


def ice_servers(
    settings: Settings, participant_id: uuid.UUID, now: datetime, not_after: datetime
) -> list[dict[str, Any]]:
    """The RTCIceServer list for one participant (the browser's `iceServers` shape)."""
    servers: list[dict[str, Any]] = []
    if settings.stun_urls:
        servers.append({"urls": list(settings.stun_urls)})
    if settings.turn_urls and settings.turn_secret is not None:
        credential = turn_credential(
            settings.turn_secret.get_secret_value(),
            participant_id,
            now,
            timedelta(seconds=settings.turn_credential_ttl_s),
            not_after,
        )
        servers.append(
            {
                "urls": list(settings.turn_urls),
                "username": credential.username,
                "credential": credential.password,
            }
        )
    return servers
