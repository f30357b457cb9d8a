"""What media capture needs of the consent gate, shared by the built-in recorder and Egress.

Capture asks synchronously, at every frame, and only trusts a gate that can vouch for its
answers: no gate, or one that cannot confirm its state, means nothing is captured (fail closed).
"""

from __future__ import annotations

import uuid
from collections.abc import Callable
from typing import Any, Protocol

from core.purposes import Purpose


class ConsentGate(Protocol):
    """What the recorder needs of the consent gate (`consent.live.LiveGate` fits): a
    synchronous, in-memory answer that is False whenever consent cannot be confirmed."""

    def allows(self, booking_id: uuid.UUID, subject_id: uuid.UUID, purpose: Purpose) -> bool: ...

    async def ensure_booking(self, booking_id: uuid.UUID) -> None:
        """Load a live session's decisions before its first frame is asked about."""
        ...


GateSource = Callable[[], ConsentGate | None]


def gate_confirmed(gate: ConsentGate | None) -> bool:
    """Whether the gate can currently vouch for its answers. A gate may say so through a
    `healthy` attribute (bool or method); one that does not is trusted while present."""
    if gate is None:
        return False
    healthy: Any = getattr(gate, "healthy", True)
    return bool(healthy() if callable(healthy) else healthy)
