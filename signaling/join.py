"""Joining: a join credential exchanged for media access, only inside the booked window.

The hot path is one indexed read (credential hash -> participant and booking columns:
`signaling.joinrows`), a window check (`signaling.window`) and a token (`signaling.grant`): a
LiveKit access token, or a single-use signaling ticket plus ICE servers for built-in media.
Unknown and revoked credentials fail alike (404); failures are counted by the limit every
credential-bearing endpoint shares (`signaling.credentials.guard_credential`).
"""

from __future__ import annotations

import uuid

from pydantic_core import to_json

from core.errors import NotFound
from core.runtime import Runtime
from signaling.credentials import FAILURE_WINDOW_S, guard_credential
from signaling.grant import JoinGrant, grant, grant_document
from signaling.joinrows import JoinReader, JoinRow, get_join_row, get_participant_row

__all__ = ["FAILURE_WINDOW_S", "JoinGrant", "JoinReader", "admit", "do_join",
           "do_participant_token"]


async def admit(
    runtime: Runtime, credential: str, address: str, reader: JoinReader | None = None
) -> JoinRow:
    """The row behind a live credential, under the failure limit every credential-bearing
    endpoint shares (`guard_credential`): RateLimited past it, NotFound for unknown links."""
    return await guard_credential(
        runtime, credential, address, lambda: get_join_row(runtime, credential, reader)
    )


async def do_join(
    runtime: Runtime, credential: str, address: str, reader: JoinReader | None = None
) -> bytes:
    """Exchange a join credential for media access: the `JoinGrant` as JSON."""
    row = await admit(runtime, credential, address, reader)
    return to_json(grant_document(runtime, row, runtime.clock.now()))


async def do_participant_token(
    runtime: Runtime, org_id: str, booking_id: uuid.UUID, participant_id: uuid.UUID
) -> JoinGrant:
    """The join payload for one participant of one of the organization's bookings, for
    platforms with their own client apps."""
    row = await get_participant_row(runtime, org_id, booking_id, participant_id)
    if row is None:
        raise NotFound(f"booking {booking_id} has no participant {participant_id}")
    return grant(runtime, row, runtime.clock.now())
