"""What egress control needs to know about recording, and nothing more of the recorder:
whether a booking is being recorded (the host's or an admin's switch, shared by every node).
`media.control.RecordingSwitch` answers it; the recorder is not involved.
"""

from __future__ import annotations

import uuid
from typing import Protocol


class RecordingControl(Protocol):
    async def recording_on(self, booking_id: uuid.UUID) -> bool:
        """The shared answer (database), not a node's cache."""
        ...
