"""Pure pieces of the booking flow: iCalendar folding/escaping and TURN REST credentials."""

from __future__ import annotations

import base64
import hashlib
import hmac
import uuid
from datetime import UTC, datetime, timedelta

from hypothesis import given
from hypothesis import strategies as st

from signaling.ice import turn_credential
from signaling.ics import escape_text, fold


@given(st.text(min_size=0, max_size=400))
def test_folding_keeps_lines_short_and_unfolds_to_the_original(line: str) -> None:
    line = line.replace("\r", "").replace("\n", "")
    folded = fold(line)
    for part in folded.encode().split(b"\r\n"):
        assert len(part) <= 75
        part.decode()  # never cut inside a UTF-8 sequence
    assert folded.replace("\r\n ", "") == line


def test_text_escaping_per_rfc_5545() -> None:
    assert escape_text("a,b;c\\d\ne") == "a\\,b\\;c\\\\d\\ne"
    assert escape_text("x\r\ny") == "x\\ny"


def test_turn_credential_is_coturn_rest_form_and_capped_by_the_window() -> None:
    user = uuid.uuid4()
    now = datetime(2030, 1, 1, 12, 0, tzinfo=UTC)
    window_end = now + timedelta(minutes=20)
    capped = turn_credential("s3cret", user, now, timedelta(hours=1), window_end)
    assert capped.username == f"{int(window_end.timestamp())}:{user}"
    assert capped.expires_at == window_end
    mac = hmac.new(b"s3cret", capped.username.encode(), hashlib.sha1).digest()
    assert capped.password == base64.b64encode(mac).decode()
    by_ttl = turn_credential("s3cret", user, now, timedelta(minutes=5), window_end)
    assert by_ttl.username.split(":")[0] == str(int((now + timedelta(minutes=5)).timestamp()))
