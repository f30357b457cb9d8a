"""The call page's files as a browser fetches them: the HTML with its Content-Security-Policy,
and every ES module it imports, each with a JavaScript MIME type (module scripts refuse any
other) under the same policy's 'self'."""

from __future__ import annotations

import re

import httpx

from api.routers.pages import MODULES

IMPORT = re.compile(r'^import [^;]*? from "\./([a-z]+\.js)";$', re.M | re.S)


async def test_the_page_loads_its_entry_module_under_its_policy(client: httpx.AsyncClient) -> None:
    page = await client.get("/join/some-credential")
    assert page.status_code == 200
    policy = page.headers["content-security-policy"]
    assert "script-src 'self'" in policy
    assert "'unsafe-inline'" not in policy
    assert '<script type="module" src="/call/main.js"></script>' in page.text
    for path in MODULES.glob("*.js"):  # every module fetched at once, not level by level
        if path.name != "main.js":
            assert f'<link rel="modulepreload" href="/call/{path.name}">' in page.text


async def test_every_imported_module_is_served_as_javascript(client: httpx.AsyncClient) -> None:
    seen: set[str] = set()
    todo = ["main.js"]
    while todo:
        name = todo.pop()
        if name in seen:
            continue
        seen.add(name)
        response = await client.get(f"/call/{name}")
        assert response.status_code == 200, name
        assert response.headers["content-type"].startswith("text/javascript"), name
        assert response.headers["x-content-type-options"] == "nosniff"
        todo += IMPORT.findall(response.text)
    on_disk = {path.name for path in MODULES.glob("*.js")}
    assert seen == on_disk  # nothing unreachable is shipped, nothing imported is missing
    assert {"devices.js", "signaling.js", "peers.js", "consent.js", "recording.js"} <= seen


async def test_only_the_page_files_are_served(client: httpx.AsyncClient) -> None:
    for name in ("nope.js", "..%2Fcall.html", "call.html", "state"):
        response = await client.get(f"/call/{name}")
        assert response.status_code == 404, name
        assert response.headers["content-type"] == "application/problem+json"
