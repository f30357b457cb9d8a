"""Another node of the app under test, in this process: the same database and clock, its own
lifespan (sender, sweeps, ...), reached through an HTTP client."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import httpx

from api.app import create_app
from core.clock import ManualClock
from core.settings import Settings


@asynccontextmanager
async def node(
    settings: Settings, clock: ManualClock, **changes: Any
) -> AsyncIterator[httpx.AsyncClient]:
    """The app with `changes` to its settings (a restart with new configuration, or a second
    node beside the test's app)."""
    app = create_app(settings.model_copy(update=changes), clock=clock)
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://testserver") as c:
            yield c
