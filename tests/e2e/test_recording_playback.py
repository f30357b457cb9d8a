"""A recording plays and seeks in Chromium: a participant downloads the host's video through
the recordings API, and a <video> knows its length at once (no `Infinity` until played
through) and jumps to the middle, showing a frame there."""

from __future__ import annotations

import io
from typing import Any

import av
import httpx
import pytest
from playwright.async_api import Browser, expect

from core.purposes import RecordingAccess
from tests.e2e.test_call_page import seed
from tests.e2e.test_call_recording import both_in_call, of, recordings_until
from tests.support.liveserver import LiveServer
from tests.support.waiting import eventually

pytestmark = pytest.mark.e2e

FRAMES_SENT = """() => (async () => {
  const recorder = window.callgate.recorder;
  if (!recorder) return 0;
  let frames = 0;
  (await recorder.pc.getStats()).forEach((r) => {
    if (r.type === "outbound-rtp" && r.kind === "video") frames += r.framesSent || 0;
  });
  return frames;
})()"""

# Download as the page's person (join credential), play from a blob, seek to the middle.
PLAY_AND_SEEK = """([url, credential]) => (async () => {
  const response = await fetch(url, {headers: {"X-Join-Credential": credential}});
  if (!response.ok) return {status: response.status};
  const blob = await response.blob();
  const video = document.createElement("video");
  video.muted = true;
  video.preload = "auto";
  document.body.append(video);
  const once = (name) => new Promise((resolve, reject) => {
    video.addEventListener(name, resolve, {once: true});
    video.addEventListener("error", () => reject(new Error(`media error ${video.error?.code}`)),
                           {once: true});
  });
  const loaded = once("loadedmetadata");
  video.src = URL.createObjectURL(blob);
  await loaded;
  const duration = video.duration;
  const target = duration / 2;
  const seeked = once("seeked");
  video.currentTime = target;
  await seeked;
  if (video.readyState < HTMLMediaElement.HAVE_CURRENT_DATA) await once("loadeddata");
  const canvas = document.createElement("canvas");
  canvas.width = video.videoWidth;
  canvas.height = video.videoHeight;
  const context = canvas.getContext("2d");
  context.drawImage(video, 0, 0);
  const pixels = context.getImageData(0, 0, canvas.width, canvas.height).data;
  let lit = 0;
  for (let i = 0; i < pixels.length; i += 4) {
    if (pixels[i] + pixels[i + 1] + pixels[i + 2] > 0) lit++;
  }
  return {status: response.status, bytes: blob.size, duration, target,
          currentTime: video.currentTime, readyState: video.readyState,
          width: video.videoWidth, height: video.videoHeight, lit};
})()"""


def media_timeline(data: bytes) -> tuple[float, float]:
    """(declared duration, time of the last frame) of a WebM file, in seconds."""
    with av.open(io.BytesIO(data)) as container:
        assert container.duration is not None
        stream = container.streams.video[0]
        last = max(
            float(packet.pts * packet.time_base)
            for packet in container.demux(stream)
            if packet.pts is not None
        )
        return container.duration / av.time_base, last


async def test_a_downloaded_recording_knows_its_length_and_seeks(
    browser: Browser, live_server: LiveServer
) -> None:
    seeded = await seed(live_server, access=RecordingAccess.PARTICIPANTS)
    host_person, client_person = seeded.host, seeded.client
    host, client = await both_in_call(
        browser, live_server, seeded, host_allows=(True, True), client_allows=(False, False)
    )
    await host.get_by_role("button", name="Start recording").click()
    await expect(host.get_by_role("button", name="Stop recording")).to_be_visible()
    booking_id = str(seeded.booking_id)
    async with httpx.AsyncClient(base_url=live_server.base_url, trust_env=False) as http:
        # The file is open (its first key frame written), then a few seconds of camera more
        # reach the recorder (counted in frames the page sent).
        await recordings_until(http, booking_id, client_person, lambda rows: len(rows) == 2)
        sent = await host.evaluate(FRAMES_SENT)

        async def camera_sent() -> bool:
            return int(await host.evaluate(FRAMES_SENT)) >= sent + 90

        await eventually(camera_sent, "three seconds more of camera sent to the recorder")
        await host.get_by_role("button", name="Stop recording").click()
        await expect(host.get_by_role("button", name="Start recording")).to_be_visible()
        rows = await recordings_until(
            http, booking_id, client_person,
            lambda rows: len(rows) == 2 and all(r["state"] == "complete" for r in rows),
        )
        [video] = of(rows, host_person, "video")
        url = f"/v1/bookings/{booking_id}/recordings/{video['id']}"
        reference = await http.get(url, headers={"X-Join-Credential": client_person.credential})
        assert reference.status_code == 200
    duration, last_frame = media_timeline(reference.content)
    assert duration >= 1.0, (duration, video)

    played: dict[str, Any] = await client.evaluate(
        PLAY_AND_SEEK, [f"{live_server.base_url}{url}", client_person.credential]
    )
    assert played["status"] == 200, played
    assert played["bytes"] == video["size"], played
    # The length is known from the file itself, before anything played.
    assert played["duration"] != float("inf"), played
    assert abs(played["duration"] - duration) <= 0.1, (played, duration)
    assert last_frame <= played["duration"], (played, last_frame)
    # The seek lands at the middle (a frame's length either side) and shows a picture.
    assert abs(played["currentTime"] - played["target"]) <= 0.1, played
    assert played["readyState"] >= 2, played
    assert (played["width"], played["height"]) != (0, 0), played
    assert played["lit"] > 0, played
