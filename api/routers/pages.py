"""The call page: `GET /join/{credential}` and its static files (plain HTML/CSS/JS).

The page is the same for every credential shape; it asks `POST /v1/join` itself and shows
"too early", "cancelled" or "link invalid" from the answer. The credential is in the URL,
so the page sends no Referer anywhere and is never cached.

In livekit mode the page loads the livekit-client SDK from callgate itself (the pinned copy
`make install` fetched and checked), so no third party sees who joins; a CDN only when the
operator names one, and then only with Subresource Integrity.
"""

from __future__ import annotations

import base64
import hashlib
import json
from dataclasses import dataclass
from pathlib import Path

from fastapi import APIRouter, Request
from fastapi.responses import FileResponse, HTMLResponse, Response

from api.favicon import FAVICON
from core.errors import NotFound
from core.settings import MediaMode, Settings

router = APIRouter(tags=["pages"], include_in_schema=False)

STATIC = Path(__file__).resolve().parent.parent / "static"
MODULES = STATIC / "call"  # the page's ES modules (api/static/call/main.js imports the rest)
# Every file the page may load, by URL name: an allowlist, so no path ever reaches the disk.
# Module scripts need a JavaScript MIME type (HTML Standard, "fetch a single module script").
ASSETS: dict[str, tuple[Path, str]] = {
    "call.css": (STATIC / "call.css", "text/css"),
    **{path.name: (path, "text/javascript") for path in sorted(MODULES.glob("*.js"))},
}
SDK_PATH = "/call/livekit-client.js"


@dataclass(frozen=True)
class ClientSdk:
    """Where the page loads livekit-client from, its SRI, and the file callgate serves."""

    url: str
    integrity: str
    file: Path | None


def client_sdk(settings: Settings) -> ClientSdk | None:
    """The SDK of the call page in livekit mode (None in builtin mode). Read once, at app
    creation: a missing file is an operator error reported at start, not a broken page."""
    if settings.media_mode is not MediaMode.LIVEKIT:
        return None
    if settings.livekit_client_url:
        return ClientSdk(settings.livekit_client_url, settings.livekit_client_integrity or "", None)
    path = settings.livekit_client_file.resolve()
    if not path.is_file():
        raise RuntimeError(
            f"livekit media mode: the livekit-client SDK is missing at {path} (`make install` "
            "fetches it; or set CALLGATE_LIVEKIT_CLIENT_URL and CALLGATE_LIVEKIT_CLIENT_INTEGRITY)"
        )
    digest = base64.b64encode(hashlib.sha384(path.read_bytes()).digest()).decode()
    return ClientSdk(SDK_PATH, f"sha384-{digest}", path)


def _both_schemes(url: str | None) -> tuple[str, ...]:
    """The LiveKit URL as the SDK uses it: WebSocket signaling and HTTP(S) (its `validate`
    check), whichever of the two forms the setting names (`wss://` or `https://`)."""
    if not url:
        return ()
    if url.startswith("http"):
        return url.replace("http", "ws", 1), url
    return url, url.replace("ws", "http", 1)


def _headers(settings: Settings, sdk: ClientSdk | None) -> dict[str, str]:
    ws_origin = settings.public_origin.replace("http", "ws", 1)
    lk = sdk.url if sdk is not None else ""
    lk_origin = "/".join(lk.split("/")[:3]) if lk.startswith("http") else ""
    lk_connect = " ".join(_both_schemes(settings.livekit_url))
    csp = (
        "default-src 'self'; "
        f"script-src 'self' {lk_origin}; "
        f"connect-src 'self' {ws_origin} {lk_connect}; "
        "img-src 'self' data:; media-src 'self' blob: mediastream:; style-src 'self'; "
        "frame-ancestors 'none'; base-uri 'none'"
    )
    return {
        "Content-Security-Policy": " ".join(csp.split()),
        "Referrer-Policy": "no-referrer",
        "Cache-Control": "no-store",
        "X-Content-Type-Options": "nosniff",
    }


@router.get("/join/{credential}", response_class=HTMLResponse)
async def call_page(request: Request, credential: str) -> HTMLResponse:
    settings: Settings = request.app.state.settings
    sdk: ClientSdk | None = request.app.state.livekit_sdk
    config = {
        "livekitClientUrl": sdk.url if sdk else None,
        "livekitClientIntegrity": sdk.integrity if sdk else None,
    }
    page = (STATIC / "call.html").read_text()
    page = page.replace("{{config}}", json.dumps(config).replace("<", "\\u003c"))
    return HTMLResponse(page, headers=_headers(settings, sdk))


@router.get(SDK_PATH)
async def livekit_client(request: Request) -> FileResponse:
    """The pinned livekit-client SDK (livekit mode, unless the operator chose a CDN)."""
    sdk: ClientSdk | None = request.app.state.livekit_sdk
    if sdk is None or sdk.file is None:
        raise NotFound("no such file")
    return FileResponse(
        sdk.file, media_type="text/javascript", headers={"Cache-Control": "no-cache"}
    )


@router.get("/call/{name}")
async def call_asset(request: Request, name: str) -> FileResponse:
    asset = ASSETS.get(name)
    if asset is None:
        raise NotFound("no such file")
    path, media_type = asset
    headers = {"Cache-Control": "no-cache", "X-Content-Type-Options": "nosniff"}
    return FileResponse(path, media_type=media_type, headers=headers)


@router.get("/favicon.ico")
async def favicon() -> Response:
    return Response(
        FAVICON, media_type="image/x-icon", headers={"Cache-Control": "public, max-age=86400"}
    )
