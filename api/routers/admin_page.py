"""The admin page (`/admin`): plain HTML/CSS/JS served as files, no build step.

The page holds the admin/auditor key in sessionStorage and calls the admin API with it; the
files themselves are public and contain no data.
"""

from __future__ import annotations

from pathlib import Path

from fastapi import APIRouter
from fastapi.responses import FileResponse

STATIC = Path(__file__).resolve().parent.parent / "static"
FILES = {"admin.js": "text/javascript", "admin.css": "text/css"}
# The page loads only its own files and talks only to this origin.
CSP = (
    "default-src 'none'; script-src 'self'; style-src 'self'; connect-src 'self'; "
    "img-src 'self' data:; base-uri 'none'; form-action 'none'; frame-ancestors 'none'"
)
HEADERS = {"Content-Security-Policy": CSP, "Cache-Control": "no-cache",
           "X-Content-Type-Options": "nosniff", "Referrer-Policy": "no-referrer"}

router = APIRouter(include_in_schema=False)


@router.get("/admin")
async def admin_page() -> FileResponse:
    return FileResponse(STATIC / "admin.html", media_type="text/html", headers=HEADERS)


@router.get("/admin/admin.js")
async def admin_js() -> FileResponse:
    return FileResponse(STATIC / "admin.js", media_type=FILES["admin.js"], headers=HEADERS)


@router.get("/admin/admin.css")
async def admin_css() -> FileResponse:
    return FileResponse(STATIC / "admin.css", media_type=FILES["admin.css"], headers=HEADERS)
