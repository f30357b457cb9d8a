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
DecisionListener = Callable[[Any], None]


def watch_decisions(gate: ConsentGate, listener: DecisionListener) -> Callable[[], None] | None:
    """Have the gate call `listener(event)` as soon as it has applied a decision
    (`consent.live.LiveGate.watch`), so capture acts on a withdrawal in the same step that
    taught the gate; returns how to stop, or None for a gate that cannot tell."""
    watch: Any = getattr(gate, "watch", None)
    unwatch: Any = getattr(gate, "unwatch", None)
    if not callable(watch) or not callable(unwatch):
        return None
    watch(listener)
    return lambda: unwatch(listener)


def gate_confirmed(gate: ConsentGate | None) -> bool:
    """Whether the gate can currently vouch for its answers. A gate may say so through a
    `healthy` attribute (bool or method); one that does not is trusted while present."""
    if gate is None:
        return False
    healthy: Any = getattr(gate, "healthy", True)
    return bool(healthy() if callable(healthy) else healthy)
