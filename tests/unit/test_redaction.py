"""Contact data never leaves in text sent to a provider: what `redact` keeps and replaces."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from summaries.redaction import EMAIL, PHONE, URL, redact


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("write to ann.lee+cg@example.co.uk today", f"write to {EMAIL} today"),
        ("call +41 44 668 18 00.", f"call {PHONE}."),
        ("or 0044 20 7946 0958", f"or {PHONE}"),
        ("office (044) 668-1800", f"office {PHONE}"),
        ("mobile 079 123 45 67, evenings", f"mobile {PHONE}, evenings"),
        ("US +1-202-555-0143", f"US {PHONE}"),
        ("see https://meet.example.com/u/12345?token=abc.", f"see {URL}."),
        ("profile www.example.com/people/ann-lee-42", f"profile {URL}"),
        ("reset http://x.io/?t=SECRET", f"reset {URL}"),
    ],
)
def test_contact_data_is_replaced(text: str, expected: str) -> None:
    assert redact(text).text == expected


@pytest.mark.parametrize(
    "text",
    [
        "we agreed on 3 items in 15 minutes",
        "meet on 2026-11-22 at 10:30-11:45",
        "the invoice 22.11.2026 is paid",
        "the homepage https://example.org/ is public",
        "version 1.2.3 ships in Q4",
    ],
)
def test_ordinary_text_is_kept(text: str) -> None:
    assert redact(text).text == text


def test_names_become_labels_longest_first_and_once() -> None:
    out = redact("Ann Lee asked ann and BOB", {"Ann Lee": "Host", "Ann": "Client 1", "Bob": "Ann"})
    assert out.text == "Host asked Client 1 and Ann"
    assert out.names == 3


def test_counts_report_what_was_replaced() -> None:
    out = redact("a@b.io, +41 44 668 18 00, https://x.io/p/1")
    assert (out.emails, out.phones, out.urls) == (1, 1, 1)


_local = st.from_regex(r"[a-z][a-z0-9._+-]{0,15}[a-z0-9]", fullmatch=True)
_domain = st.from_regex(r"[a-z][a-z0-9-]{0,10}\.(com|org|ch|co\.uk|io)", fullmatch=True)
_words = st.lists(st.from_regex(r"[A-Za-z]{1,10}", fullmatch=True), max_size=6).map(" ".join)


@settings(max_examples=100, deadline=None)
@given(before=_words, local=_local, domain=_domain, after=_words)
def test_any_email_is_removed(before: str, local: str, domain: str, after: str) -> None:
    email = f"{local}@{domain}"
    out = redact(f"{before} {email} {after}").text
    assert email not in out
    assert EMAIL in out


_phone = st.builds(
    lambda prefix, groups: prefix + " ".join(groups),
    st.sampled_from(["+41 ", "+1 ", "0044 ", "0", "+49-"]),
    st.lists(st.from_regex(r"[1-9][0-9]{1,3}", fullmatch=True), min_size=3, max_size=4),
).filter(lambda p: 7 <= sum(c.isdigit() for c in p) <= 15)


@settings(max_examples=100, deadline=None)
@given(before=_words, phone=_phone, after=_words)
def test_any_phone_number_is_removed(before: str, phone: str, after: str) -> None:
    out = redact(f"{before} {phone} {after}").text
    digits = "".join(c for c in phone if c.isdigit())
    assert digits not in "".join(c for c in out if c.isdigit())
    assert PHONE in out


_token = st.from_regex(r"[A-Za-z0-9]{6,20}", fullmatch=True)


@settings(max_examples=100, deadline=None)
@given(domain=_domain, token=_token, in_query=st.booleans())
def test_urls_with_ids_or_tokens_are_removed(domain: str, token: str, in_query: bool) -> None:
    url = f"https://{domain}/s?id={token}" if in_query else f"https://{domain}/u/{token}"
    out = redact(f"join via {url} please").text
    assert token not in out
    assert out == f"join via {URL} please"


@settings(max_examples=150, deadline=None)
@given(st.text(max_size=200))
def test_redaction_is_idempotent(text: str) -> None:
    once = redact(text).text
    assert redact(once).text == once
