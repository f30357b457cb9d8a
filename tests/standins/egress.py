"""A stand-in for LiveKit Egress alone (it needs GStreamer and Chrome, and its Go module is not
served to this machine): its Twirp API, `livekit.Egress` StartTrackEgress / StopEgress /
ListEgress, to the real `livekit-api` client, with the `roomRecord` grant checked as LiveKit
checks it, and its `egress_started` / `egress_ended` webhooks signed as LiveKit signs them
(a JWT with the body's SHA-256, under the API key) and sent where LiveKit would send them.

A started Track Egress is active at once. Stopping one writes the file a Track Egress would
have written at the request's path (`{time}` filled in): Ogg Opus for an audio track, WebM VP8
for a video track; then it reports the egress complete with that file. `inject()` starts one
that callgate never asked for (someone else's, or one a crashed node forgot). While `answering`
is clear, StartTrackEgress starts the egress but holds its answer, as when the node that asked
dies before it hears back.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import secrets
import time
from pathlib import Path
from typing import Any

import httpx
from google.protobuf import json_format
from google.protobuf.message import Message
from livekit import api as lk
from livekit.protocol import egress as eg
from livekit.protocol.webhook import WebhookEvent

from media.ogg import OggOpusWriter
from media.webm import WebmVp8Writer
from tests.standins.twirp import TwirpFailure, TwirpStandIn
from tests.support.media import encode_opus, encode_vp8


def _record(claims: lk.access_token.Claims, _request: Any) -> bool:
    return bool(claims.video and claims.video.room_record)


class EgressStandIn(TwirpStandIn):
    def __init__(self, api_key: str, api_secret: str, webhook_url: str) -> None:
        super().__init__(api_key, api_secret)
        self._key, self._secret = api_key, api_secret
        self.webhook_url = webhook_url
        self.egresses: dict[str, eg.EgressInfo] = {}
        self.requests: dict[str, eg.TrackEgressRequest] = {}
        self.stop_requests: list[tuple[str, float]] = []  # (egress id, time.time() received)
        self.kinds: dict[str, str] = {}  # egress id -> "audio" | "video"
        self._sends: set[asyncio.Task[None]] = set()
        self.answering = asyncio.Event()
        self.answering.set()
        self.route("livekit.Egress", "StartTrackEgress", eg.TrackEgressRequest, self._start,
                   _record)
        self.route("livekit.Egress", "StopEgress", eg.StopEgressRequest, self._stop, _record)
        self.route("livekit.Egress", "ListEgress", eg.ListEgressRequest, self._list, _record)

    def running(self) -> set[str]:
        """Track ids with an active egress."""
        return {
            info.track.track_id for info in self.egresses.values()
            if info.status == eg.EGRESS_ACTIVE
        }

    def kind_of(self, track_id: str) -> str:
        return next(
            (self.kinds[e] for e, i in self.egresses.items() if i.track.track_id == track_id), ""
        )

    def inject(self, room: str, track_id: str, kind: str, filepath: str) -> str:
        request = eg.TrackEgressRequest(
            room_name=room, track_id=track_id, file=eg.DirectFileOutput(filepath=filepath)
        )
        return self._begin(request, kind)

    def _begin(self, request: eg.TrackEgressRequest, kind: str) -> str:
        egress_id = f"EG_{secrets.token_hex(6)}"
        self.requests[egress_id] = request
        self.kinds[egress_id] = kind
        self.egresses[egress_id] = eg.EgressInfo(
            egress_id=egress_id, room_name=request.room_name, track=request,
            status=eg.EGRESS_ACTIVE, started_at=time.time_ns(),
        )
        return egress_id

    async def _start(self, request: Any, _claims: Any) -> Message:
        kind = "video" if "/video-" in request.file.filepath else "audio"
        egress_id = self._begin(request, kind)
        self._webhook("egress_started", self.egresses[egress_id])
        await self.answering.wait()
        return self.egresses[egress_id]

    async def _stop(self, request: Any, _claims: Any) -> Message:
        self.stop_requests.append((request.egress_id, time.time()))
        info = self.egresses.get(request.egress_id)
        if info is None:
            raise TwirpFailure("not_found", "egress not found")
        if info.status != eg.EGRESS_ACTIVE:
            raise TwirpFailure("failed_precondition", "egress is not active")
        info.status = eg.EGRESS_ENDING  # at once, as Egress reports it
        path = await asyncio.to_thread(self._write, request.egress_id)
        info.status = eg.EGRESS_COMPLETE
        info.ended_at = time.time_ns()
        info.file_results.append(eg.FileInfo(
            filename=str(path), started_at=info.started_at, ended_at=info.ended_at,
            size=path.stat().st_size,
        ))
        self._webhook("egress_ended", info)
        ending = eg.EgressInfo()
        ending.CopyFrom(info)
        ending.status = eg.EGRESS_ENDING
        return ending

    async def _list(self, request: Any, _claims: Any) -> Message:
        chosen = [
            info for info in self.egresses.values()
            if (not request.room_name or info.room_name == request.room_name)
            and (not request.egress_id or info.egress_id == request.egress_id)
            and (not request.active or info.status == eg.EGRESS_ACTIVE)
        ]
        return eg.ListEgressResponse(items=chosen)

    def _write(self, egress_id: str) -> Path:
        request, kind = self.requests[egress_id], self.kinds[egress_id]
        stem = request.file.filepath.replace("{time}", time.strftime("%Y%m%dT%H%M%S"))
        path = Path(stem + (".webm" if kind == "video" else ".ogg"))
        path.parent.mkdir(parents=True, exist_ok=True)
        with path.open("wb") as out:
            if kind == "video":
                video = WebmVp8Writer(out)
                for i, frame in enumerate(encode_vp8(10, width=64, height=48)):
                    video.write(frame, i * 3000)
                video.close()
            else:
                audio = OggOpusWriter(out)
                for i, packet in enumerate(encode_opus(25)):
                    audio.write(packet, i * 960)
                audio.close()
        return path

    def _webhook(self, kind: str, info: eg.EgressInfo) -> None:
        event = WebhookEvent(
            event=kind, id=f"EV_{secrets.token_hex(6)}", egress_info=info,
            created_at=int(time.time()),
        )
        body = json_format.MessageToJson(event).encode()
        digest = base64.b64encode(hashlib.sha256(body).digest()).decode()
        token = lk.AccessToken(self._key, self._secret).with_sha256(digest).to_jwt()
        headers = {"Authorization": token, "Content-Type": "application/webhook+json"}

        async def send() -> None:
            async with httpx.AsyncClient() as http:
                for _ in range(20):  # LiveKit retries a failed delivery too
                    try:
                        answer = await http.post(self.webhook_url, content=body, headers=headers)
                        if answer.status_code < 500:
                            return
                    except httpx.HTTPError:
                        pass
                    await asyncio.sleep(0.25)

        task = asyncio.create_task(send())
        self._sends.add(task)
        task.add_done_callback(self._sends.discard)
