"""A recording made by the real recorder from a real aiortc page is finished when its span
closes: the downloaded WebM declares its Duration and indexes its key frames in Cues before the
media, and the row's size and SHA-256 are the finished file's."""

from __future__ import annotations

import hashlib
import io
from typing import Any

import av
import httpx
from aiortc import RTCPeerConnection
from fastapi import FastAPI

from consent.purposes import Purpose
from core.runtime import Runtime
from tests.integration.test_recorder import (
    clock,
    connect,
    database_url,
    pages,
    recorder_of,
    recordings,
    written,
)
from tests.support.consent import decide
from tests.support.consent_bookings import seed_booking
from tests.support.waiting import eventually
from tests.support.webm import CUES, cue_times_ms, keyframe_times_ms, segment_children

# The recorder tests' fixtures: PostgreSQL, the real clock, the pages closed afterwards.
__all__ = ["clock", "database_url", "pages"]

CLUSTER = 0x1F43B675


async def test_a_closed_span_is_a_seekable_webm(
    app: FastAPI,
    client: httpx.AsyncClient,
    runtime: Runtime,
    pages: list[RTCPeerConnection],
) -> None:
    seeded = await seed_booking(runtime, [Purpose.RECORDING_AUDIO, Purpose.RECORDING_VIDEO])
    host, guest = seeded.people
    await decide(client, guest, Purpose.RECORDING_VIDEO, "granted")
    started = await client.post(
        f"/v1/bookings/{seeded.booking_id}/recording/start", headers=host.headers
    )
    assert started.status_code == 200
    await connect(client, guest, pages, encoded=True)  # a key frame every half second
    recorder = recorder_of(app)
    await eventually(lambda: written(recorder, 2.0, 1), "two seconds of video written")
    seconds = recorder.writing()[0][2]
    await decide(client, guest, Purpose.RECORDING_VIDEO, "withdrawn")  # closes the span

    rows: list[dict[str, Any]] = []

    async def complete() -> bool:
        rows[:] = await recordings(client, seeded.booking_id, guest)
        return len(rows) == 1 and rows[0]["state"] == "complete"

    await eventually(complete, "the video recording complete")
    (row,) = rows
    url = f"/v1/bookings/{seeded.booking_id}/recordings/{row['id']}"
    response = await client.get(url, headers=guest.headers)
    assert response.status_code == 200
    data = response.content
    assert len(data) == row["size"]
    assert hashlib.sha256(data).hexdigest() == row["sha256"]

    known, children = segment_children(data)
    assert known
    assert children.index(CUES) < children.index(CLUSTER)
    keyframes = keyframe_times_ms(data)
    assert len(keyframes) >= 2
    assert cue_times_ms(data) == keyframes
    with av.open(io.BytesIO(data)) as container:
        assert container.duration is not None
        duration = container.duration / av.time_base
        stream = container.streams.video[0]
        last = max(
            float(packet.pts * packet.time_base)
            for packet in container.demux(stream)
            if packet.pts is not None
        )
    assert seconds - 0.1 <= last <= duration <= last + 0.1
