"""In livekit mode the call page joins through the real `livekit-client` SDK, loaded from the
configured URL, with the token `POST /v1/join` gave it, and publishes the person's camera and
microphone to the LiveKit server (a local stand-in speaking LiveKit's signaling protocol to the
SDK, answering with a real aiortc peer: tests/standins/livekit_rtc.py)."""

from __future__ import annotations

import asyncio
import os
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from playwright.async_api import Browser, expect

from tests.e2e.test_call_page import choose, open_join, seed
from tests.standins.livekit import LiveKitStandIn
from tests.standins.livekit_rtc import Joined, RtcStandIn
from tests.support.liveserver import LiveServer

pytestmark = pytest.mark.e2e

LK_KEY, LK_SECRET = "APIpage", "page-secret-" + "p" * 32
ROOT = Path(__file__).resolve().parents[2]
SDK = Path(
    os.environ.get("CALLGATE_TEST_LIVEKIT_SDK")
    or ROOT / "var/vendor/livekit-client-2.23.0/dist/livekit-client.umd.js"
)


@pytest.fixture
def sdk() -> Path:
    if not SDK.is_file():
        pytest.fail(f"the livekit-client SDK is missing at {SDK}: `make test` fetches it")
    return SDK


@pytest.fixture
async def livekit(sdk: Path) -> AsyncIterator[tuple[LiveKitStandIn, RtcStandIn]]:
    server = LiveKitStandIn(LK_KEY, LK_SECRET)
    rtc = RtcStandIn(server)
    server.setup.append(lambda app: app.router.add_static("/sdk", sdk.parent))
    async with server:
        yield server, rtc


@pytest.fixture
def live_server_overrides(livekit: tuple[LiveKitStandIn, RtcStandIn]) -> dict[str, Any]:
    server, _ = livekit
    return {
        "media_mode": "livekit",
        "livekit_url": server.url,
        "livekit_api_key": LK_KEY,
        "livekit_api_secret": LK_SECRET,
        "livekit_client_url": f"{server.url}/sdk/{SDK.name}",
    }


async def published(rtc: RtcStandIn, identity: str) -> Joined:
    """The stand-in's session of `identity`, once both its tracks sent frames (~30 s at most)."""
    for _ in range(60):
        for joined in rtc.sessions:
            sent = all(joined.frames[kind] > 5 for kind in ("audio", "video"))
            if joined.identity == identity and sent:
                return joined
        await asyncio.sleep(0.5)
    raise AssertionError(f"no audio and video from {identity}: {rtc.sessions} {rtc.refused}")


async def test_page_joins_through_livekit_client_and_publishes_its_tracks(
    browser: Browser, live_server: LiveServer, livekit: tuple[LiveKitStandIn, RtcStandIn]
) -> None:
    _, rtc = livekit
    seeded = await seed(live_server)
    host = await open_join(browser, live_server, seeded.host)
    await expect(host.locator("#prejoin fieldset")).to_have_count(2)
    await choose(host, "recording.audio", allow=True)
    await choose(host, "recording.video", allow=False)
    await host.get_by_role("button", name="Join the call").click()
    await expect(host.locator("#call")).to_be_visible()

    joined = await published(rtc, str(seeded.host.id))
    assert joined.room == seeded.room
    assert joined.name == seeded.host.name
    assert joined.grants.room_join is True
    assert joined.path == "/rtc/v1"  # the SDK's own default path, not one we chose
    assert rtc.refused == []
    # The page is in the call: its own tile, no failure shown, the SDK connected.
    await expect(host.locator(f".tile[data-peer='{seeded.host.id}']")).to_be_visible()
    await expect(host.locator("#ended")).to_be_hidden()
    state = await host.evaluate("() => window.callgate.livekit && window.callgate.livekit.state")
    assert state == "connected"
    await host.context.close()
