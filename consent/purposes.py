"""The purpose codes and the consent vocabulary (decisions, methods, actors).

Purposes live in core (a booking names them); they are re-exported here for consent's callers.
"""

from __future__ import annotations

import enum

from core.purposes import REQUIRES, Purpose, RecordingPolicy

__all__ = ["REQUIRES", "Actor", "Decision", "Method", "Purpose", "RecordingPolicy"]


class Decision(enum.StrEnum):
    GRANTED = "granted"
    DENIED = "denied"
    WITHDRAWN = "withdrawn"


class Method(enum.StrEnum):
    """How the decision reached us."""

    WEB_DIALOG = "web_dialog"  # the join page / in-call consent dialog
    API = "api"  # a client calling the participant API directly


class Actor(enum.StrEnum):
    """Who decided: the person themselves, or a guardian for a minor."""

    SUBJECT = "subject"
    GUARDIAN = "guardian"
