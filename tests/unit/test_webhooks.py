"""Webhook signing (checked against the `standardwebhooks` package), retry timing, and what a
delivery attempt does with each answer, redirects and unsafe targets."""

from __future__ import annotations

import time
from datetime import UTC, datetime, timedelta
from email.utils import format_datetime

import httpx
import pytest
from standardwebhooks.webhooks import Webhook, WebhookVerificationError

from core.errors import InvalidInput
from core.settings import Settings
from core.webhooks import UnsafeTarget, check_target, check_url, headers_for, new_secret
from core.webhooksender import attempt, parse_retry_after, retry_delay

STRICT = Settings(webhook_allow_private_targets=False)
LAX = Settings(webhook_allow_private_targets=True)


def test_signatures_verify_with_the_reference_package() -> None:
    secret, old = new_secret(), new_secret()
    body = b'{"data":{"booking_id":"b1"},"type":"booking.created"}'
    headers = headers_for([secret, old], "msg_1", int(time.time()), body)
    assert Webhook(secret).verify(body, headers)["type"] == "booking.created"
    assert Webhook(old).verify(body, headers)["type"] == "booking.created"
    with pytest.raises(WebhookVerificationError):
        Webhook(new_secret()).verify(body, headers)
    with pytest.raises(WebhookVerificationError):
        Webhook(secret).verify(body.replace(b"b1", b"b2"), headers)


def test_retry_delays_grow_with_jitter_and_respect_retry_after() -> None:
    first = [retry_delay(1) for _ in range(200)]
    assert 4 <= min(first) < max(first) <= 6
    assert 16 <= retry_delay(2) <= 24
    assert retry_delay(30) <= 8 * 3600 * 1.2
    assert retry_delay(1, retry_after=600) >= 600
    assert retry_delay(1, retry_after=10**9) <= 24 * 3600
    # Until the endpoint is disabled (5 days) a delivery keeps being tried: > 24 h of retries.
    assert sum(retry_delay(n) for n in range(1, 12)) > 24 * 3600


def test_retry_after_as_seconds_or_http_date() -> None:
    now = time.time()
    assert parse_retry_after("120", now) == 120
    later = datetime.fromtimestamp(now, UTC) + timedelta(minutes=5)
    assert parse_retry_after(format_datetime(later, usegmt=True), now) == pytest.approx(300, 2)
    assert parse_retry_after("soon", now) is None
    assert parse_retry_after(None, now) is None


@pytest.mark.parametrize(
    "url",
    ["http://hooks.example.com/", "https://127.0.0.1/", "https://[::1]/", "https://10.0.0.8/",
     "https://169.254.169.254/latest", "file:///etc/passwd", "https:///nohost"],
)
def test_unsafe_urls_are_refused(url: str) -> None:
    with pytest.raises(InvalidInput):
        check_url(url, STRICT)


def test_private_targets_only_when_allowed() -> None:
    assert check_url("https://hooks.example.com/in", STRICT)
    assert check_url("http://127.0.0.1:9/in", LAX)


async def test_a_name_resolving_to_loopback_is_refused_at_send_time() -> None:
    with pytest.raises(UnsafeTarget):
        await check_target("https://localhost/in", STRICT)
    await check_target("https://localhost/in", LAX)


def transport(status: int, body: bytes = b"", headers: dict[str, str] | None = None) -> (
    httpx.MockTransport
):
    def handle(request: httpx.Request) -> httpx.Response:
        return httpx.Response(status, content=body, headers=headers)

    return httpx.MockTransport(handle)


@pytest.mark.parametrize(
    ("status", "ok", "retry"),
    [(200, True, False), (204, True, False), (302, False, False), (400, False, False),
     (408, False, True), (429, False, True), (500, False, True), (503, False, True)],
)
async def test_attempt_outcomes(status: int, ok: bool, retry: bool) -> None:
    headers = {"location": "https://elsewhere.example/"} if status == 302 else None
    async with httpx.AsyncClient(transport=transport(status, headers=headers)) as client:
        outcome = await attempt(client, "https://hooks.example.com/", {}, b"{}", 1)
    assert (outcome.ok, outcome.retry, outcome.status) == (ok, retry, status)

