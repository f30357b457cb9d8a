"""The LiveKit egress set-up shared by the egress tests (tests/integration/test_livekit_egress.py,
tests/e2e/test_livekit_recording.py): the folder Egress writes to, the Egress stand-in
(tests/standins/egress.py) sending its webhooks through the test load balancer, and the
settings that put callgate in LiveKit mode against the real LiveKit server and that stand-in.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from tests.standins.egress import EgressStandIn
from tests.support.livekit import WEBHOOK_PATH, Balancer, LiveKitServer


@pytest.fixture
def egress_dir(tmp_path: Path) -> Path:
    """The folder Egress writes to and callgate takes finished files in from."""
    folder = tmp_path / "egress"
    folder.mkdir()
    return folder.resolve()


@pytest.fixture
async def egress_server(
    livekit_server: LiveKitServer, balancer: Balancer
) -> AsyncIterator[EgressStandIn]:
    async with EgressStandIn(
        livekit_server.key, livekit_server.secret, balancer.url + WEBHOOK_PATH
    ) as server:
        yield server


def egress_overrides(
    livekit_server: LiveKitServer, egress_server: EgressStandIn, egress_dir: Path,
    **more: Any,
) -> dict[str, Any]:
    """Settings of a callgate node in LiveKit mode: rooms on the real server, egress on the
    stand-in, finished files taken in from `egress_dir`; `more` adds or replaces settings."""
    return {
        "egress_output_dir": egress_dir,
        "media_mode": "livekit",
        "livekit_url": livekit_server.url,
        "livekit_egress_url": egress_server.url,
        "livekit_api_key": livekit_server.key,
        "livekit_api_secret": livekit_server.secret,
        **more,
    }


@pytest.fixture
def egress_settings(
    livekit_server: LiveKitServer, egress_server: EgressStandIn, egress_dir: Path
) -> dict[str, Any]:
    """`egress_overrides` for the test's app (a module uses it as its `settings_overrides`)."""
    return egress_overrides(
        livekit_server, egress_server, egress_dir,
        livekit_retry_interval_s=0.2, livekit_timeout_s=5,
    )
