"""kill -9 while recording: the files still play, missing at most the last two seconds, and
the video file is finished on recovery (its Duration and Cues), every frame up to the cut whole."""

from __future__ import annotations

import asyncio
import io
import os
import signal
import sys
from pathlib import Path

import av
import httpx

from api.services import Services
from consent.purposes import Purpose
from core.runtime import Runtime
from core.settings import Settings
from media.recorder import Recorder
from tests.support.consent_bookings import seed_booking
from tests.support.webm import cue_times_ms, keyframe_times_ms, playback, segment_children

ROOT = Path(__file__).resolve().parents[2]


def played_seconds(data: bytes) -> float:
    with av.open(io.BytesIO(data)) as container:
        stream = container.streams[0]
        times = [
            float(frame.time) for frame in container.decode(stream) if frame.time is not None
        ]
    return max(times) - min(times)


async def test_killed_recorder_leaves_playable_files(
    client: httpx.AsyncClient, runtime: Runtime, services: Services, settings: Settings
) -> None:
    seeded = await seed_booking(runtime, [Purpose.RECORDING_AUDIO, Purpose.RECORDING_VIDEO])
    person = seeded.people[1]
    child = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "tests.integration.recording_child",
        settings.database_url,
        str(settings.data_dir),
        str(person.id),
        cwd=ROOT,
        stdout=asyncio.subprocess.PIPE,
    )
    assert child.stdout is not None
    written: dict[str, float] = {}
    try:
        while min(written.get("audio", 0), written.get("video", 0)) < 4.0:
            line = await asyncio.wait_for(child.stdout.readline(), timeout=60)
            assert line, "the recording process ended on its own"
            kind, seconds = line.decode().split()
            written[kind] = float(seconds)
    finally:
        os.kill(child.pid, signal.SIGKILL)
        rest = await child.stdout.read()
        await child.wait()
    for line in rest.decode().splitlines():  # what it reported until the very end
        kind, seconds = line.split()
        written[kind] = float(seconds)
    assert child.returncode == -signal.SIGKILL

    recorder: Recorder = services.recorder
    assert await recorder.recover_stale(min_age_s=0) == 2
    listed = await client.get(
        f"/v1/bookings/{seeded.booking_id}/recordings", headers=person.headers
    )
    rows = listed.json()["recordings"]
    assert sorted(r["kind"] for r in rows) == ["audio", "video"]
    for row in rows:
        assert row["state"] == "recovered"
        response = await client.get(
            f"/v1/bookings/{seeded.booking_id}/recordings/{row['id']}", headers=person.headers
        )
        assert response.status_code == 200
        assert len(response.content) == row["size"]
        played = played_seconds(response.content)
        assert played >= written[row["kind"]] - 2.0, (row["kind"], played, written)
        assert played <= written[row["kind"]] + 0.1
        if row["kind"] == "video":
            assert_finished_up_to_the_cut(response.content, played)


def assert_finished_up_to_the_cut(data: bytes, played: float) -> None:
    """A player learns the length and the key frames from the file itself, and every frame
    the recovery kept decodes."""
    assert segment_children(data)[0]  # the Segment's size is known again
    assert cue_times_ms(data) == keyframe_times_ms(data) != []
    duration, packets, decoded = playback(data)  # decoding a frame cut in half raises
    assert duration is not None
    assert abs(duration - played) <= 0.2
    assert decoded == packets
