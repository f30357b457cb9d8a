"""Shapes of input values every API shares, checked before any domain code sees them.

`Instant`: an ISO 8601 date-time with an offset, within the years the database and the
arithmetic on it (join windows, retention deadlines) can hold; numbers are not date-times.
`Line` / `Paragraph`: text without control characters (a paragraph may hold tabs and line
breaks), so no NUL or terminal escape reaches storage, logs, invites or LIKE patterns.
"""

from __future__ import annotations

import re
import unicodedata
from datetime import UTC, datetime
from typing import Annotated, Any

from pydantic import AfterValidator, AwareDatetime, BeforeValidator, Field, WithJsonSchema

# Far enough from datetime's own limits (years 1 and 9999) that converting any offset to UTC
# and adding any window or retention period cannot overflow. Documented: local years 1970 to
# 8999; accepted: a day more on either side in UTC, so every documented offset fits.
EARLIEST = datetime(1969, 12, 31, tzinfo=UTC)
LATEST = datetime(9000, 1, 2, tzinfo=UTC)
_ISO = re.compile(r"^\d{4}-\d{2}-\d{2}[Tt ]")
YEARS = r"^(19[7-9][0-9]|[2-8][0-9]{3})-"
_PARAGRAPH_BREAKS = frozenset("\t\n\r")
# The same rules as JSON Schema patterns, so the OpenAPI document states what is accepted.
_CONTROLS = "\u0000-\u0008\u000b\u000c\u000e-\u001f\u007f-\u009f"  # all but \t \n \r
LINE_PATTERN = "^[^\u0000-\u001f\u007f-\u009f]*$"
PARAGRAPH_PATTERN = f"^[^{_CONTROLS}]*$"
# A paragraph with at least one character that is not white space.
FILLED_PARAGRAPH_PATTERN = f"^[^{_CONTROLS}]*[^\\s{_CONTROLS}][^{_CONTROLS}]*$"


def _iso_text(value: Any) -> Any:
    if isinstance(value, datetime):
        return value
    if not isinstance(value, str) or not _ISO.match(value):
        raise ValueError("use an ISO 8601 date-time with an offset, e.g. 2030-05-04T09:00:00Z")
    return value


def _in_range(value: datetime) -> datetime:
    try:
        utc = value.astimezone(UTC)
    except OverflowError:
        raise ValueError("the date is out of range") from None
    if not EARLIEST <= utc < LATEST:
        raise ValueError("use a time from the years 1970 to 8999")
    return utc


Instant = Annotated[
    AwareDatetime,
    BeforeValidator(_iso_text),
    AfterValidator(_in_range),
    WithJsonSchema({"type": "string", "format": "date-time", "pattern": YEARS}),
]


def control_characters(value: str, allowed: frozenset[str] = frozenset()) -> bool:
    """Whether `value` holds a control character (Unicode category Cc) not in `allowed`."""
    return any(unicodedata.category(ch) == "Cc" and ch not in allowed for ch in value)


def _line(value: str) -> str:
    if control_characters(value):
        raise ValueError("control characters are not allowed")
    return value


def _paragraph(value: str) -> str:
    if control_characters(value, _PARAGRAPH_BREAKS):
        raise ValueError("control characters other than tab and line breaks are not allowed")
    return value


# The pattern is documentation only (json_schema_extra): the validators above give the error.
Line = Annotated[str, AfterValidator(_line), Field(json_schema_extra={"pattern": LINE_PATTERN})]
Paragraph = Annotated[
    str, AfterValidator(_paragraph), Field(json_schema_extra={"pattern": PARAGRAPH_PATTERN})
]
