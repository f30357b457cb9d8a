"""The purpose codes and the consent vocabulary (decisions, methods, actors).

Purposes, decisions and actors live in core (a booking names purposes, bus events carry
decisions); they are re-exported here for consent's callers.
"""

from __future__ import annotations

import enum

from core.purposes import REQUIRES, Actor, Decision, Purpose, RecordingPolicy

__all__ = ["REQUIRES", "Actor", "Decision", "Method", "Purpose", "RecordingPolicy"]


class Method(enum.StrEnum):
    """How the decision reached us."""

    WEB_DIALOG = "web_dialog"  # the join page / in-call consent dialog
    API = "api"  # a client calling the participant API directly
