"""What LiveKit holds in a room (`ListParticipants`): the audio and video tracks, by whose
they are. Asked afresh at each reconcile, never remembered from webhooks."""

from __future__ import annotations

import uuid
from dataclasses import dataclass

import structlog
from livekit import api as lk
from livekit.protocol import models

from media.recordings import TrackKind

log = structlog.get_logger(__name__)


@dataclass(frozen=True)
class Track:
    sid: str
    kind: TrackKind
    subject_id: uuid.UUID


async def room_tracks(client: lk.LiveKitAPI | None, room: str) -> dict[str, Track] | None:
    """The audio and video tracks LiveKit holds in `room`; None when it cannot say."""
    assert client is not None  # noqa: S101 (only reachable when the service is entered)
    try:
        listed = await client.room.list_participants(lk.ListParticipantsRequest(room=room))
    except lk.TwirpError as exc:
        if exc.code == lk.TwirpErrorCode.NOT_FOUND:
            return {}
        log.warning("egress.list_failed", room=room, code=exc.code)
        return None
    except Exception:  # LiveKit unreachable: stop what consent no longer allows anyway
        log.warning("egress.list_failed", room=room, exc_info=True)
        return None
    tracks: dict[str, Track] = {}
    for participant in listed.participants:
        subject = _subject(participant.identity)
        if subject is None:
            continue
        for track in participant.tracks:
            kind = _track_kind(track.type)
            if kind is not None:
                tracks[track.sid] = Track(track.sid, kind, subject)
    return tracks


def _subject(identity: str) -> uuid.UUID | None:
    try:
        return uuid.UUID(identity)
    except ValueError:
        return None


def _track_kind(track_type: int) -> TrackKind | None:
    if track_type == models.TrackType.AUDIO:
        return TrackKind.AUDIO
    if track_type == models.TrackType.VIDEO:
        return TrackKind.VIDEO
    return None
