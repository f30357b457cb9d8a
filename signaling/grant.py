"""What a participant gets to enter the call: the `JoinGrant` wire models and their assembly.

A LiveKit access token, or a single-use signaling ticket plus ICE servers for built-in media,
never valid past the join window's end.
"""

from __future__ import annotations

import math
import time
import uuid
from datetime import UTC, datetime, timedelta
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from core.bookings import Role
from core.purposes import RecordingPolicy
from core.runtime import Runtime
from core.settings import MediaMode, Settings
from signaling.credentials import livekit_token
from signaling.ice import ice_servers
from signaling.joinrows import JoinRow
from signaling.livekit import livekit_credentials
from signaling.protocol import IceServer
from signaling.tickets import issue_ticket
from signaling.window import access_window


class JoinParticipant(BaseModel):
    id: uuid.UUID
    display_name: str
    role: Role


class JoinBooking(BaseModel):
    id: uuid.UUID
    title: str
    starts_at: datetime
    ends_at: datetime
    language: str
    requested_purposes: list[str]
    recording_policy: RecordingPolicy
    record_automatically: bool = Field(
        description="Recording starts when the first page connects, without the host's button."
    )


class JoinWindow(BaseModel):
    opens_at: datetime
    closes_at: datetime


class BuiltinAccess(BaseModel):
    ws_url: str
    ticket: str
    ticket_expires_at: datetime
    ice_servers: list[IceServer]


class LivekitAccess(BaseModel):
    url: str
    token: str
    expires_at: datetime


class JoinGrant(BaseModel):
    """What a participant needs to enter the call (the body of `POST /v1/join`)."""

    model_config = ConfigDict(
        json_schema_extra={
            "examples": [
                {
                    "mode": "builtin",
                    "participant": {
                        "id": "0b8f6f5e-3f0e-4f43-9a55-2f1a3e0c9d11",
                        "display_name": "Charles Babbage",
                        "role": "client",
                    },
                    "booking": {
                        "id": "5d0e7c1a-8a8e-4c55-b7b5-6a1f0f3f2a90",
                        "title": "Mentoring session",
                        "starts_at": "2030-05-04T07:00:00Z",
                        "ends_at": "2030-05-04T08:00:00Z",
                        "language": "en",
                        "requested_purposes": ["recording.audio"],
                        "recording_policy": "per_participant",
                        "record_automatically": False,
                    },
                    "window": {
                        "opens_at": "2030-05-04T06:50:00Z",
                        "closes_at": "2030-05-04T08:00:00Z",
                    },
                    "builtin": {
                        "ws_url": "wss://calls.example.org/v1/rooms/cg-3q9.../ws",
                        "ticket": "MGI4ZjZm....Vw2k",
                        "ticket_expires_at": "2030-05-04T06:56:00Z",
                        "ice_servers": [
                            {"urls": ["stun:stun.example.org:3478"]},
                            {
                                "urls": ["turn:turn.example.org:3478?transport=udp"],
                                "username": "1904454000:0b8f6f5e-3f0e-4f43-9a55-2f1a3e0c9d11",
                                "credential": "tR1Pq7m3m8o0Jm1k6bq0h3QJx5Y=",
                            },
                        ],
                    },
                    "livekit": None,
                }
            ]
        }
    )

    mode: Literal["builtin", "livekit"]
    participant: JoinParticipant
    booking: JoinBooking
    window: JoinWindow
    builtin: BuiltinAccess | None
    livekit: LivekitAccess | None


def ws_base(settings: Settings) -> str:
    base = settings.base_url()
    return "wss://" + base[len("https://"):] if base.startswith("https://") else (
        "ws://" + base[len("http://"):]
    )


def _builtin(runtime: Runtime, row: JoinRow, closes_at: datetime, now: datetime) -> dict[str, Any]:
    settings = runtime.settings
    participant_id: uuid.UUID = row.participant_id
    expires = min(now + timedelta(seconds=settings.ticket_ttl_s), closes_at)
    return {
        "ws_url": f"{ws_base(settings)}/v1/rooms/{row.room_name}/ws",
        "ticket": issue_ticket(
            runtime.keys, participant_id, row.booking_id, row.credential_generation, expires
        ),
        "ticket_expires_at": expires,
        "ice_servers": [
            {"urls": server["urls"], "username": server.get("username"),
             "credential": server.get("credential")}
            for server in ice_servers(settings, participant_id, now, closes_at)
        ],
    }


def _livekit(settings: Settings, row: JoinRow, closes_at: datetime) -> dict[str, Any]:
    url, key, secret = livekit_credentials(settings)
    # `nbf` from the wall clock as livekit-api stamps it; `exp` is the window's end, never later
    # (LiveKit checks it only at connect; callgate removes people when the window closes).
    expires = math.floor(closes_at.timestamp())
    token = livekit_token(
        key, secret, identity=str(row.participant_id), name=row.display_name, role=row.role,
        room=row.room_name, not_before=int(time.time()), expires=expires,
        generation=row.credential_generation,
    )
    return {"url": url, "token": token, "expires_at": datetime.fromtimestamp(expires, UTC)}


def grant_document(runtime: Runtime, row: JoinRow, now: datetime) -> dict[str, Any]:
    """Admission check and the media access for one participant row: a `JoinGrant` as plain
    JSON-ready values (the join path serializes it once, without building the models)."""
    settings = runtime.settings
    window = access_window(settings, row.status, row.starts_at, row.ends_at, now)
    livekit = settings.media_mode is MediaMode.LIVEKIT
    return {
        "mode": settings.media_mode.value,
        # Ids as text: the driver's UUID subclass takes pydantic-core's slow path.
        "participant": {
            "id": str(row.participant_id), "display_name": row.display_name,
            "role": row.role.value,
        },
        "booking": {
            "id": str(row.booking_id),
            "title": row.title,
            "starts_at": row.starts_at,
            "ends_at": row.ends_at,
            "language": row.language,
            "requested_purposes": list(row.requested_purposes),
            "recording_policy": row.recording_policy.value,
            "record_automatically": row.record_automatically,
        },
        "window": {"opens_at": window.opens_at, "closes_at": window.closes_at},
        "builtin": None if livekit else _builtin(runtime, row, window.closes_at, now),
        "livekit": _livekit(settings, row, window.closes_at) if livekit else None,
    }


def grant(runtime: Runtime, row: JoinRow, now: datetime) -> JoinGrant:
    """Admission check and the media access for one participant row."""
    return JoinGrant.model_validate(grant_document(runtime, row, now))
