"""Contact data out of text before it leaves for a provider (data minimisation, GDPR art. 5(1)(c)).

Emails, phone numbers (international `+41 44 668 18 00`, `0044 20 7946 0958`, local
`(044) 668-1800`, `079 123 45 67`) and URLs are replaced by fixed placeholders. A URL is kept
only when it is a bare host (`https://example.org/`); any path or query may carry a personal
id or token, so those are replaced whole. Participants' names are swapped for their
pseudonymous labels.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass

EMAIL = "[email]"
PHONE = "[phone]"
URL = "[link]"

_EMAIL = re.compile(
    r"(?<![\w.+-])[\w.+-]+@[A-Za-z0-9-]+(?:\.[A-Za-z0-9-]+)*\.[A-Za-z]{2,}(?![\w-])",
)
# Scheme URLs and scheme-less www. URLs; a trailing sentence period/comma is not part of it.
_URL = re.compile(r"(?:\b[A-Za-z][A-Za-z0-9+.-]*://|\bwww\.)[^\s<>\"']+", re.I)
_URL_TRAIL = ".,;:!?)]}'\""
# A phone number: optional + or 00 prefix, then digits with spaces, dots, dashes, slashes or
# one parenthesised area code between them; 7 to 15 digits in all (ITU-T E.164 has at most 15).
_PHONE = re.compile(
    r"(?<![\w+])(?:\+|00)?\s?(?:\(\d{1,5}\)[\s.-]?)?\d(?:[\s./-]?\(?\d\)?){5,16}(?!\w)"
)
_DATE = re.compile(r"^\s?\d{4}-\d{2}-\d{2}$|^\s?\d{1,2}[./]\d{1,2}[./]\d{2,4}$")
_MIN_PHONE_DIGITS = 7
_MAX_PHONE_DIGITS = 15


@dataclass(frozen=True)
class Redacted:
    text: str
    emails: int = 0
    phones: int = 0
    urls: int = 0
    names: int = 0

    @property
    def count(self) -> int:
        return self.emails + self.phones + self.urls + self.names


def _bare_host(url: str) -> bool:
    rest = url.split("://", 1)[1] if "://" in url else url
    host, _, path = rest.partition("/")
    return "?" not in host and "#" not in host and "@" not in host and path == ""


def _sub_urls(text: str) -> tuple[str, int]:
    count = 0

    def repl(match: re.Match[str]) -> str:
        nonlocal count
        url = match.group(0)
        stripped = url.rstrip(_URL_TRAIL)
        tail = url[len(stripped) :]
        if _bare_host(stripped.rstrip("/")) and stripped.count("/") <= 3:
            return url
        count += 1
        return URL + tail

    return _URL.sub(repl, text), count


def _sub_phones(text: str) -> tuple[str, int]:
    count = 0

    def repl(match: re.Match[str]) -> str:
        nonlocal count
        raw = match.group(0)
        digits = sum(ch.isdigit() for ch in raw)
        if not _MIN_PHONE_DIGITS <= digits <= _MAX_PHONE_DIGITS or _DATE.match(raw):
            return raw
        lead = raw[: len(raw) - len(raw.lstrip())]
        count += 1
        return lead + PHONE

    return _PHONE.sub(repl, text), count


class Redactor:
    """Redaction with one set of names, compiled once (a transcript has many segments)."""

    def __init__(self, names: Mapping[str, str] | None = None) -> None:
        self._wanted = {n.strip().casefold(): lbl for n, lbl in (names or {}).items() if n.strip()}
        self._names: re.Pattern[str] | None = None
        if self._wanted:
            # One pass, longest first: "Ann Lee" wins over "Ann", a label is never re-replaced.
            ordered = sorted(self._wanted, key=len, reverse=True)
            alternatives = "|".join(re.escape(n) for n in ordered)
            self._names = re.compile(rf"(?<!\w)(?:{alternatives})(?!\w)", re.I)

    def __call__(self, text: str) -> Redacted:
        text, emails = _EMAIL.subn(EMAIL, text)
        text, urls = _sub_urls(text)
        text, phones = _sub_phones(text)
        named = 0
        if self._names is not None:
            text, named = self._names.subn(self._label, text)
        return Redacted(text=text, emails=emails, phones=phones, urls=urls, names=named)

    def _label(self, match: re.Match[str]) -> str:
        return self._wanted[match.group(0).casefold()]


def redact(text: str, names: Mapping[str, str] | None = None) -> Redacted:
    """`text` without contact data; `names` maps real names to the labels that replace them."""
    return Redactor(names)(text)
