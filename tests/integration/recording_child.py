"""A process that records one person until it is killed (for test_recording_crash.py).

Usage: python -m tests.integration.recording_child DATABASE_URL DATA_DIR PARTICIPANT_ID
Prints `<kind> <seconds written>` for every open file ten times a second.
"""

from __future__ import annotations

import asyncio
import sys
import uuid
from pathlib import Path

from aiortc import RTCPeerConnection

from core.bookings import Participant
from core.purposes import Purpose
from core.runtime import Runtime
from core.settings import Settings
from media.recorder import Recorder
from tests import support
from tests.support.media import EncodedTrack, encode_opus, encode_vp8


class AllowAll:
    """This process tests what a crash leaves on disk, not consent: everything is allowed."""

    def allows(self, booking_id: uuid.UUID, subject_id: uuid.UUID, purpose: Purpose) -> bool:
        return True

    async def ensure_booking(self, booking_id: uuid.UUID) -> None:
        return None


async def main(database_url: str, data_dir: str, participant_id: str) -> None:
    settings = Settings(
        database_url=database_url,
        data_dir=Path(data_dir),
        secret_key=support.SECRET,
        master_key=support.MASTER,
        log_level="CRITICAL",
    )
    runtime = Runtime.open(settings)
    gate = AllowAll()
    async with Recorder(runtime, gate=lambda: gate) as recorder:
        async with runtime.db.session() as session:
            participant = await session.get(Participant, uuid.UUID(participant_id))
        assert participant is not None
        await recorder.start(participant.booking_id)
        pc = RTCPeerConnection()
        pc.addTransceiver(EncodedTrack("audio", encode_opus(50)), direction="sendonly")
        pc.addTransceiver(EncodedTrack("video", encode_vp8(60)), direction="sendonly")
        await pc.setLocalDescription(await pc.createOffer())
        answer = await recorder.answer(participant, pc.localDescription.sdp, "offer")
        await pc.setRemoteDescription(answer)
        while True:
            await asyncio.sleep(0.1)
            for _, kind, seconds in recorder.writing():
                print(kind.value, f"{seconds:.3f}", flush=True)


if __name__ == "__main__":
    asyncio.run(main(*sys.argv[1:4]))
