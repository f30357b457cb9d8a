"""The join window: when a booked person may get media access or open a signaling socket.

Both doors (`POST /v1/join` and the signaling socket) check it here, with the window itself
defined once in `core.bookings.join_window`.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from core.bookings import BookingStatus, join_window
from core.errors import Gone, OutsideJoinWindow
from core.settings import Settings


@dataclass(frozen=True, slots=True)
class Window:
    opens_at: datetime
    closes_at: datetime


def booking_window(settings: Settings, starts_at: datetime, ends_at: datetime) -> Window:
    return Window(*join_window(starts_at, ends_at, settings.join_lead, settings.join_grace))


def access_window(
    settings: Settings,
    status: BookingStatus,
    starts_at: datetime,
    ends_at: datetime,
    now: datetime,
) -> Window:
    """The window, if the booking's people may join now; Gone or OutsideJoinWindow otherwise."""
    if status is BookingStatus.CANCELLED:
        raise Gone("this booking was cancelled")
    window = booking_window(settings, starts_at, ends_at)
    if now < window.opens_at:
        raise OutsideJoinWindow(
            "the join window has not opened yet", extra=_times(window, starts_at)
        )
    if now >= window.closes_at:
        raise OutsideJoinWindow("the join window has closed", extra=_times(window, starts_at))
    return window


def _times(window: Window, starts_at: datetime) -> dict[str, str]:
    return {
        "opens_at": window.opens_at.isoformat(),
        "closes_at": window.closes_at.isoformat(),
        "starts_at": starts_at.isoformat(),
    }
