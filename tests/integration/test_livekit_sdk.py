"""In livekit mode the call page loads livekit-client from callgate itself, with Subresource
Integrity; a CDN only when the operator names one, and then only with an integrity hash."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import json
import re
from pathlib import Path
from typing import Any

import httpx
import pytest
from pydantic import ValidationError

from core.settings import Settings
from tests.support.livekit import LiveKitServer

pytestmark = pytest.mark.usefixtures("database_url")

CDN = "https://cdn.example.test/npm/livekit-client@2.23.0/dist/livekit-client.umd.js"
CDN_SRI = "sha384-" + "A" * 64


def page_config(html: str) -> dict[str, Any]:
    found = re.search(r'<script type="application/json" id="config">(.*?)</script>', html)
    assert found is not None, html
    config: dict[str, Any] = json.loads(found.group(1))
    return config


@pytest.fixture
def settings_overrides(
    livekit_server: LiveKitServer, request: pytest.FixtureRequest
) -> dict[str, Any]:
    values: dict[str, Any] = {
        "media_mode": "livekit",
        "livekit_url": livekit_server.url,
        "livekit_api_key": livekit_server.key,
        "livekit_api_secret": livekit_server.secret,
    }
    values.update(getattr(request, "param", {}))
    return values


async def test_page_loads_the_sdk_from_callgate_with_integrity(
    client: httpx.AsyncClient, settings: Settings
) -> None:
    page = await client.get("/join/" + "x" * 43)
    assert page.status_code == 200
    config = page_config(page.text)
    assert config["livekitClientUrl"] == "/call/livekit-client.js"
    csp = page.headers["content-security-policy"]
    script_src = next(d for d in csp.split(";") if d.strip().startswith("script-src"))
    assert script_src.split() == ["script-src", "'self'"]  # no third party may serve scripts

    sdk = await client.get("/call/livekit-client.js")
    assert sdk.status_code == 200
    assert sdk.headers["content-type"].startswith("text/javascript")
    expected = await asyncio.to_thread(Path(settings.livekit_client_file).read_bytes)
    assert sdk.content == expected
    digest = base64.b64encode(hashlib.sha384(sdk.content).digest()).decode()
    assert config["livekitClientIntegrity"] == f"sha384-{digest}"


@pytest.mark.parametrize(
    "settings_overrides",
    [{"livekit_client_url": CDN, "livekit_client_integrity": CDN_SRI}],
    indirect=True,
)
async def test_an_operator_cdn_comes_with_its_integrity(client: httpx.AsyncClient) -> None:
    page = await client.get("/join/" + "x" * 43)
    config = page_config(page.text)
    assert config == {"livekitClientUrl": CDN, "livekitClientIntegrity": CDN_SRI}
    csp = page.headers["content-security-policy"]
    assert "https://cdn.example.test" in csp
    assert (await client.get("/call/livekit-client.js")).status_code == 404


def test_a_cdn_without_integrity_is_refused() -> None:
    with pytest.raises(ValidationError, match="LIVEKIT_CLIENT_INTEGRITY"):
        Settings(livekit_client_url=CDN)
    with pytest.raises(ValidationError):
        Settings(livekit_client_url=CDN, livekit_client_integrity="md5-abc")
