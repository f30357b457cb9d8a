"""The sending side of bench/recording.py, in its own process so its CPU is not counted.

Speaks JSON lines on stdin/stdout: `{"cmd": "offer", "n": N}` -> `{"offers": [sdp, ...]}`
(N pages sending the pre-encoded 640x480 pattern and tone); `{"answers": [...]}` -> `{"ok":
true}`; `{"cmd": "count"}` -> `{"audio": frames, "video": frames}` sent so far; `{"cmd": "hold"}`
stops every track (no further frame; the connections stay up) and answers the final counts
the same way; `{"cmd": "close"}` closes every page. Each reply echoes its request's `seq`.
"""

from __future__ import annotations

import asyncio
import json
import sys

import uvloop
from aiortc import RTCPeerConnection, RTCSessionDescription

from tests.support.media import EncodedTrack, encode_opus, encode_vp8

VIDEO_BIT_RATE = 700_000  # a usual WebRTC rate for 640x480 at 30 fps


async def main() -> None:
    video = encode_vp8(60, keyframe_every=15, bit_rate=VIDEO_BIT_RATE)
    audio = encode_opus(50)
    loop = asyncio.get_running_loop()
    reader = asyncio.StreamReader(limit=1 << 24)
    await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), sys.stdin)
    pages: list[RTCPeerConnection] = []
    tracks: list[EncodedTrack] = []

    seq = None

    def reply(obj: dict[str, object]) -> None:
        sys.stdout.write(json.dumps({**obj, "seq": seq}) + "\n")
        sys.stdout.flush()

    while line := await reader.readline():
        msg = json.loads(line)
        seq = msg.get("seq")
        if msg.get("cmd") == "offer":
            offers = []
            for _ in range(int(msg["n"])):
                pc = RTCPeerConnection()
                for track in (EncodedTrack("audio", audio), EncodedTrack("video", video)):
                    pc.addTransceiver(track, direction="sendonly")
                    tracks.append(track)
                await pc.setLocalDescription(await pc.createOffer())
                pages.append(pc)
                offers.append(pc.localDescription.sdp)
            reply({"offers": offers})
        elif "answers" in msg:
            fresh = pages[len(pages) - len(msg["answers"]) :]
            for pc, sdp in zip(fresh, msg["answers"], strict=True):
                await pc.setRemoteDescription(RTCSessionDescription(sdp=sdp, type="answer"))
            reply({"ok": True})
        elif msg.get("cmd") in ("count", "hold"):
            counts = {"audio": 0, "video": 0}
            for track in tracks:
                counts[track.kind] += track.hold() if msg["cmd"] == "hold" else track.sent
            reply(dict(counts))
        elif msg.get("cmd") == "close":
            for pc in pages:
                await pc.close()
            pages.clear()
            tracks.clear()
            reply({"ok": True})


if __name__ == "__main__":
    uvloop.run(main())  # the lighter loop: the senders must not be the bottleneck
