"""Calendar invites (RFC 5545 iCalendar, iTIP methods of RFC 5546), one per participant.

Every participant's invite carries the same UID (one event), their own join link, and the
booking's SEQUENCE, which grows on each reschedule so calendars replace the older copy. A
cancelled booking yields METHOD:CANCEL with STATUS:CANCELLED.
"""

from __future__ import annotations

from datetime import UTC, datetime

from core.bookings import Booking, BookingStatus, Participant

PRODID = "-//callgate//booked sessions//EN"
FOLD_OCTETS = 75  # RFC 5545 section 3.1: lines SHOULD NOT be longer than 75 octets


def escape_text(value: str) -> str:
    """A TEXT value (RFC 5545 section 3.3.11): escape backslash, semicolon, comma, newline."""
    out = value.replace("\\", "\\\\").replace(";", "\\;").replace(",", "\\,")
    return out.replace("\r\n", "\\n").replace("\r", "\\n").replace("\n", "\\n")


def quote_param(value: str) -> str:
    """A parameter value (section 3.2): DQUOTE-ed; DQUOTE and controls are not allowed."""
    cleaned = "".join(ch for ch in value if ch >= " " and ch not in '"\x7f')
    return f'"{cleaned}"'


def fold(line: str) -> str:
    """Fold a content line at 75 octets with CRLF + space, never inside a UTF-8 sequence."""
    parts: list[str] = []
    current = ""
    size = 0
    limit = FOLD_OCTETS
    for ch in line:
        width = len(ch.encode())
        if size + width > limit:
            parts.append(current)
            current, size = "", 0
            limit = FOLD_OCTETS - 1  # continuation lines start with one space
        current += ch
        size += width
    parts.append(current)
    return "\r\n ".join(parts)


def stamp(value: datetime) -> str:
    """A UTC DATE-TIME (section 3.3.5, form #2)."""
    return value.astimezone(UTC).strftime("%Y%m%dT%H%M%SZ")


def invite(
    booking: Booking, participant: Participant, join_link: str, organizer: str, now: datetime
) -> str:
    """The .ics text for one participant of `booking`."""
    cancelled = booking.status is BookingStatus.CANCELLED
    description = f"Join: {join_link}"
    if booking.stated_purpose:
        description = f"{booking.stated_purpose}\n\n{description}"
    lines = [
        "BEGIN:VCALENDAR",
        "VERSION:2.0",
        f"PRODID:{PRODID}",
        "CALSCALE:GREGORIAN",
        f"METHOD:{'CANCEL' if cancelled else 'REQUEST'}",
        "BEGIN:VEVENT",
        f"UID:{booking.id}@callgate",
        f"SEQUENCE:{booking.sequence}",
        f"DTSTAMP:{stamp(now)}",
        f"DTSTART:{stamp(booking.starts_at)}",
        f"DTEND:{stamp(booking.ends_at)}",
        f"SUMMARY:{escape_text(booking.title)}",
        f"DESCRIPTION:{escape_text(description)}",
        f"LOCATION:{escape_text(join_link)}",
        f"URL:{join_link}",
        f"ORGANIZER;CN=callgate:{organizer}",
        f"ATTENDEE;CN={quote_param(participant.display_name)};ROLE=REQ-PARTICIPANT:"
        f"urn:uuid:{participant.id}",
        f"STATUS:{'CANCELLED' if cancelled else 'CONFIRMED'}",
        "END:VEVENT",
        "END:VCALENDAR",
    ]
    return "".join(fold(line) + "\r\n" for line in lines)
