"""A local stand-in for a LiveKit server's client signaling, for the real `livekit-client` SDK.

The SDK opens a WebSocket to `<livekit url>/rtc/v1` (single peer connection, its default; or
`/rtc` on the older path) with `access_token=<jwt>` and, on v1, `join_request=<base64 of a
WrappedJoinRequest>` carrying its first publisher offer. Messages are LiveKit's own protobufs
(`livekit.protocol.rtc.SignalRequest` in, `SignalResponse` out), binary frames. This stand-in
checks the token with livekit-api's `TokenVerifier` and the room-join grant as the server does
(refusing the upgrade with 401 otherwise), answers `join`, answers every publisher offer with a
real aiortc peer connection, acknowledges `add_track` with `track_published`, and answers
pings. It is a publish-only SFU: it records who joined and which tracks reached it and counts
their frames, and forwards nothing.

Install it on a `LiveKitStandIn` (`RtcStandIn(server)`) so one URL serves both the Twirp API
callgate calls and the signaling the page connects to, as a LiveKit server does.
"""

from __future__ import annotations

import asyncio
import base64
import gzip
import json
import secrets
import time
from dataclasses import dataclass, field

import jwt
from aiohttp import WSMsgType, web
from aiortc import RTCPeerConnection, RTCSessionDescription
from aiortc.mediastreams import MediaStreamError, MediaStreamTrack
from aiortc.sdp import candidate_from_sdp
from livekit import api as lk
from livekit.protocol import models, rtc

from tests.standins.livekit import LiveKitStandIn


@dataclass
class Joined:
    """One signaling session as the stand-in saw it."""

    identity: str
    name: str
    room: str
    grants: lk.VideoGrants
    path: str
    frames: dict[str, int] = field(default_factory=lambda: {"audio": 0, "video": 0})
    published: list[str] = field(default_factory=list)  # track names from add_track


class RtcStandIn:
    def __init__(self, server: LiveKitStandIn) -> None:
        self._verifier = server.verifier
        self.sessions: list[Joined] = []
        self.refused: list[str] = []
        server.setup.append(self._install)

    def _install(self, app: web.Application) -> None:
        for path in ("/rtc", "/rtc/v1"):
            app.router.add_get(path, self._signal)
            app.router.add_get(f"{path}/validate", self._validate)

    def _claims(self, request: web.Request) -> lk.access_token.Claims:
        token = request.query.get("access_token", "")
        try:
            claims = self._verifier.verify(token)
        except jwt.PyJWTError as exc:
            self.refused.append(str(exc))
            raise web.HTTPUnauthorized(text=f"invalid token: {exc}") from None
        video = claims.video
        if video is None or not video.room_join or not video.room:
            self.refused.append("no room join grant")
            raise web.HTTPUnauthorized(text="the token does not grant joining a room")
        return claims

    async def _validate(self, request: web.Request) -> web.Response:
        # the SDK calls it from the page's origin after a failed connect, to show the reason
        cors = {"Access-Control-Allow-Origin": "*"}
        try:
            self._claims(request)
        except web.HTTPUnauthorized as refused:
            return web.Response(status=401, text=refused.text, headers=cors)
        return web.Response(text="success", headers=cors)

    async def _signal(self, request: web.Request) -> web.WebSocketResponse:
        claims = self._claims(request)
        video = claims.video or lk.VideoGrants()
        joined = Joined(claims.identity, claims.name, video.room, video, request.path)
        self.sessions.append(joined)
        socket = web.WebSocketResponse()
        await socket.prepare(request)
        pc = RTCPeerConnection()
        readers: list[asyncio.Task[None]] = []

        @pc.on("track")
        def on_track(track: MediaStreamTrack) -> None:
            readers.append(asyncio.create_task(_count(track, joined)))

        async def send(response: rtc.SignalResponse) -> None:
            await socket.send_bytes(response.SerializeToString())

        async def answer(offer: rtc.SessionDescription) -> None:
            await pc.setRemoteDescription(RTCSessionDescription(sdp=offer.sdp, type="offer"))
            await pc.setLocalDescription(await pc.createAnswer())
            local = pc.localDescription
            await send(rtc.SignalResponse(
                answer=rtc.SessionDescription(
                    type="answer", sdp=_accept_one_layer(offer.sdp, local.sdp), id=offer.id
                )
            ))

        try:
            await send(rtc.SignalResponse(join=_join_response(joined)))
            first = _join_request(request)
            if first is not None and first.HasField("publisher_offer"):
                await answer(first.publisher_offer)
            async for message in socket:
                if message.type != WSMsgType.BINARY:
                    continue
                signal = rtc.SignalRequest.FromString(message.data)
                kind = signal.WhichOneof("message")
                if kind == "offer":
                    await answer(signal.offer)
                elif kind == "trickle":
                    await _add_candidate(pc, signal.trickle)
                elif kind == "add_track":
                    joined.published.append(signal.add_track.name)
                    await send(rtc.SignalResponse(track_published=_published(signal.add_track)))
                elif kind == "ping":
                    await send(rtc.SignalResponse(pong=int(time.time() * 1000)))
                elif kind == "ping_req":
                    await send(rtc.SignalResponse(pong_resp=rtc.Pong(
                        last_ping_timestamp=signal.ping_req.timestamp,
                        timestamp=int(time.time() * 1000),
                    )))
                elif kind == "leave":
                    break
        finally:
            for reader in readers:
                reader.cancel()
            await pc.close()
            await socket.close()
        return socket


RID_URIS = (
    "urn:ietf:params:rtp-hdrext:sdes:rtp-stream-id",
    "urn:ietf:params:rtp-hdrext:sdes:repaired-rtp-stream-id",
)


def _sections(sdp: str) -> list[list[str]]:
    """The session part, then one list of lines per m-section."""
    parts: list[list[str]] = [[]]
    for line in sdp.splitlines():
        if line.startswith("m="):
            parts.append([])
        parts[-1].append(line)
    return parts


def _accept_one_layer(offer: str, answer: str) -> str:
    """aiortc does not do simulcast: answer a simulcast offer (the SDK's default for video) by
    accepting its first layer only (RFC 8853 lets the answerer drop layers), and negotiate the
    RID header extensions the way an SFU does, so the browser's later offers stay valid."""
    offered, answered = _sections(offer), _sections(answer)
    for theirs, ours in zip(offered[1:], answered[1:], strict=True):
        have = "\n".join(ours)
        for line in theirs:
            rid = line.startswith("a=extmap:") and line.split(" ", 1)[-1] in RID_URIS
            if rid and line not in have:
                ours.append(line)
        layers = [ln for ln in theirs if ln.startswith("a=simulcast:send ")]
        if layers:
            first = layers[0].split(" ", 1)[1].split(";")[0].split(",")[0].lstrip("~")
            ours.extend([f"a=rid:{first} recv", f"a=simulcast:recv {first}"])
    return "\r\n".join(line for part in answered for line in part) + "\r\n"


def _join_request(request: web.Request) -> rtc.JoinRequest | None:
    """The v1 path's `join_request` parameter: a WrappedJoinRequest, base64, maybe gzipped."""
    raw = request.query.get("join_request")
    if not raw:
        return None
    padded = raw + "=" * (-len(raw) % 4)
    data = base64.urlsafe_b64decode(padded.replace("+", "-").replace("/", "_"))
    wrapped = rtc.WrappedJoinRequest.FromString(data)
    body = wrapped.join_request
    if wrapped.compression == rtc.WrappedJoinRequest.Compression.GZIP:
        body = gzip.decompress(body)
    return rtc.JoinRequest.FromString(body)


def _join_response(joined: Joined) -> rtc.JoinResponse:
    return rtc.JoinResponse(
        room=models.Room(sid=f"RM_{secrets.token_hex(6)}", name=joined.room),
        participant=models.ParticipantInfo(
            sid=f"PA_{secrets.token_hex(6)}",
            identity=joined.identity,
            name=joined.name,
            state=models.ParticipantInfo.State.JOINED,
            joined_at=int(time.time()),
            is_publisher=True,
            permission=models.ParticipantPermission(
                can_publish=True, can_subscribe=True, can_publish_data=True
            ),
        ),
        server_version="1.9.0",
        server_info=models.ServerInfo(
            edition=models.ServerInfo.Edition.Standard, version="1.9.0", protocol=16
        ),
        subscriber_primary=False,
        ping_timeout=15,
        ping_interval=5,
    )


def _published(request: rtc.AddTrackRequest) -> rtc.TrackPublishedResponse:
    return rtc.TrackPublishedResponse(
        cid=request.cid,
        track=models.TrackInfo(
            sid=f"TR_{secrets.token_hex(6)}",
            type=request.type,
            name=request.name,
            source=request.source,
            width=request.width,
            height=request.height,
            muted=request.muted,
        ),
    )


async def _add_candidate(pc: RTCPeerConnection, trickle: rtc.TrickleRequest) -> None:
    init = json.loads(trickle.candidateInit or "{}")
    line = str(init.get("candidate") or "")
    if not line:
        return
    candidate = candidate_from_sdp(line.removeprefix("candidate:"))
    candidate.sdpMid = init.get("sdpMid")
    candidate.sdpMLineIndex = init.get("sdpMLineIndex")
    await pc.addIceCandidate(candidate)


async def _count(track: MediaStreamTrack, joined: Joined) -> None:
    try:
        while True:
            await track.recv()
            joined.frames[track.kind] = joined.frames.get(track.kind, 0) + 1
    except MediaStreamError:
        return
