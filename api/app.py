"""The app factory. `create_app()` builds settings once; the lifespan owns every resource.

Background services (room provisioning, the consent gate, signaling hub, recorder, workers)
are entered on the lifespan's exit stack, so they close in reverse order of opening; they are
held by one typed `api.services.Services` (`app.state.services`).
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import AsyncExitStack, asynccontextmanager

from fastapi import FastAPI
from starlette.types import ASGIApp, Receive, Scope, Send

from api import problems
from api.limits import BodyLimit, ForwardedClient
from api.observability import Metrics, RequestContext
from api.pauses import Pauses, freeze_startup
from api.routers import admin_consent, admin_notices, admin_page, health, pages, ws
from api.routers import attendance as attendance_router
from api.routers import bookings as bookings_router
from api.routers import consent as consent_router
from api.routers import join as join_router
from api.routers import livekit_webhook as livekit_router
from api.routers import organizations as organizations_router
from api.routers import privacy as privacy_router
from api.routers import recordings as recordings_router
from api.routers import summaries as summaries_router
from api.routers import webhooks as webhooks_router
from api.services import Services
from core.clock import Clock
from core.logs import configure_logging
from core.runtime import Runtime
from core.settings import Settings

DESCRIPTION = """
callgate provisions booked live video sessions, admits exactly the booked people during the
booked window, and records or processes each person's data only while that person consents.

**Auth.** Scheduler and admin endpoints take an API key: `Authorization: Bearer cg_...`.
Participant endpoints take the personal join credential from the join link.

**Errors** are RFC 9457 `application/problem+json` with a stable `code`; validation
problems list every bad field under `errors`.
"""


class CallgateApp(FastAPI):
    """FastAPI, with `POST /v1/join` (api/routers/join.py) and the signaling WebSocket
    (api/routers/ws.py) answered ahead of it, and the limits of api/limits.py in front."""

    join: join_router.JoinFastPath | None = None
    entry: ASGIApp | None = None

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        room = ws.room_of(scope) if not self.root_path else None
        if room is not None:  # the signaling socket, lean (api/routers/ws.py)
            await ws.room_socket(self, room, scope, receive, send)
        elif self.entry is not None:
            await self.entry(scope, receive, send)
        else:
            await self.dispatch(scope, receive, send)

    async def dispatch(self, scope: Scope, receive: Receive, send: Send) -> None:
        if self.join is not None and join_router.is_join(scope) and not self.root_path:
            await self.join(scope, receive, send)
        else:
            await super().__call__(scope, receive, send)

    async def call_fastapi(self, scope: Scope, receive: Receive, send: Send) -> None:
        await super().__call__(scope, receive, send)


_frozen = False


def _freeze_once() -> None:
    """What the first app of the process built at startup is exempt from collection from now
    on (api/pauses.py). Once per process: a test process builds many apps, and cycles among
    frozen objects are never collected."""
    global _frozen
    if not _frozen:
        _frozen = True
        freeze_startup()


def create_app(settings: Settings | None = None, *, clock: Clock | None = None) -> FastAPI:
    settings = settings or Settings()
    configure_logging(settings.log_level, json=settings.log_json)
    metrics = Metrics()
    pauses = Pauses(metrics.registry)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        runtime = Runtime.open(settings, clock=clock)
        app.state.runtime = runtime
        async with AsyncExitStack() as stack:
            stack.push_async_callback(runtime.close)
            await stack.enter_async_context(pauses)
            services = await Services.open(runtime, stack)
            app.state.services = services
            _freeze_once()
            metrics.watch_ledger(
                lambda: services.gate.integrity.standing if services.gate is not None else None
            )
            yield

    app = CallgateApp(
        title="callgate",
        version="0.1.0",
        description=DESCRIPTION,
        lifespan=lifespan,
        docs_url="/docs",
        openapi_url="/openapi.json",
    )
    app.state.settings = settings
    app.state.metrics = metrics
    app.state.livekit_sdk = pages.client_sdk(settings)
    problems.install(app)
    app.include_router(health.router)
    app.include_router(join_router.router)  # first: the hottest route matches at once
    app.include_router(consent_router.router)
    app.include_router(admin_consent.router)
    app.include_router(admin_notices.router)
    app.include_router(admin_page.router)
    app.include_router(recordings_router.router)
    app.include_router(livekit_router.router)
    app.include_router(pages.router)
    app.include_router(bookings_router.router)
    app.include_router(attendance_router.router)
    app.include_router(summaries_router.router)
    app.include_router(summaries_router.pages)
    app.include_router(privacy_router.router)
    app.include_router(webhooks_router.router)
    app.include_router(organizations_router.router)
    app.webhooks.include_router(webhooks_router.webhooks)
    app.add_middleware(RequestContext, metrics=metrics)
    app.join = join_router.JoinFastPath(app, app.call_fastapi, metrics)
    app.entry = ForwardedClient(
        BodyLimit(app.dispatch, settings.max_body_bytes), settings.trusted_proxies
    )
    return app
