"""Fixtures shared by every test: real databases (SQLite and PostgreSQL), the app, API keys."""

from __future__ import annotations

import asyncio
import secrets
from collections.abc import AsyncIterator, Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import pytest
import uvicorn
from fastapi import FastAPI

from api.app import create_app
from api.services import Services
from core.accounts import Scope, do_create_key
from core.clock import ManualClock
from core.runtime import Runtime
from core.settings import Settings
from tests import support
from tests.support.egress import egress_dir, egress_server, egress_settings  # noqa: F401
from tests.support.livekit import balancer, livekit_server, webhook_backends  # noqa: F401
from tests.support.liveserver import free_port
from tests.support.waiting import services_ready


@pytest.fixture(scope="session")
def pg_template() -> Iterator[str]:
    name = support.make_pg_template()
    yield name
    support.run_blocking(lambda: support.drop_pg(name))


@pytest.fixture(scope="session")
def sqlite_template(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return support.make_sqlite_template(tmp_path_factory.mktemp("sqlite-template"))


@pytest.fixture
async def pg_url(pg_template: str) -> AsyncIterator[str]:
    name = await support.clone_pg(pg_template)
    yield support.pg_url(name)
    await support.drop_pg(name)


@pytest.fixture
def sqlite_url(sqlite_template: Path, tmp_path: Path) -> str:
    return support.clone_sqlite(sqlite_template, tmp_path / "callgate.db")


@pytest.fixture(params=["sqlite", "postgres"])
def backend(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture
def database_url(backend: str, request: pytest.FixtureRequest) -> str:
    """A fresh migrated database; every test using it runs on SQLite and on PostgreSQL."""
    fixture = "pg_url" if backend == "postgres" else "sqlite_url"
    return str(request.getfixturevalue(fixture))


@pytest.fixture
def redis_prefix() -> str:
    return f"cgtest:{secrets.token_hex(6)}"


@pytest.fixture
def clock() -> ManualClock:
    return ManualClock(datetime.now(UTC).replace(microsecond=0))


@pytest.fixture
def settings_overrides() -> dict[str, Any]:
    """Override in a test module (or parametrize) to change settings for its app."""
    return {}


@pytest.fixture
def settings(database_url: str, tmp_path: Path, settings_overrides: dict[str, Any]) -> Settings:
    values: dict[str, Any] = {
        "database_url": database_url,
        "data_dir": tmp_path / "data",
        "secret_key": support.SECRET,
        "master_key": support.MASTER,
        "public_base_url": "http://testserver",
        "log_json": True,
        "log_level": "WARNING",
    }
    values.update(settings_overrides)
    return Settings(**values)


@pytest.fixture
async def app(settings: Settings, clock: ManualClock) -> AsyncIterator[FastAPI]:
    application = create_app(settings, clock=clock)
    async with application.router.lifespan_context(application):
        await services_ready(application.state.services)
        yield application


@pytest.fixture
async def ws_base(app: FastAPI) -> AsyncIterator[str]:
    """The app (lifespan already running) served by a real uvicorn on a free port: `ws://...`."""
    port = free_port()
    config = uvicorn.Config(
        app, host="127.0.0.1", port=port, lifespan="off", log_level="error",
        ws="api.wsprotocol:SignalingProtocol",  # as `callgate serve` runs it
    )
    server = uvicorn.Server(config)
    task = asyncio.create_task(server.serve())
    async with asyncio.timeout(10):
        while not server.started:  # noqa: ASYNC110 (uvicorn offers no event to wait on)
            await asyncio.sleep(0.02)
    yield f"ws://127.0.0.1:{port}"
    server.should_exit = True
    await task


@pytest.fixture
def runtime(app: FastAPI) -> Runtime:
    rt: Runtime = app.state.runtime
    return rt


@pytest.fixture
def services(app: FastAPI) -> Services:
    """The app's service container (gate, recorder, AI jobs, ...), built in its lifespan."""
    built: Services = app.state.services
    return built


@pytest.fixture
async def client(app: FastAPI) -> AsyncIterator[httpx.AsyncClient]:
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://testserver") as c:
        yield c


@pytest.fixture
async def api_keys(runtime: Runtime) -> dict[Scope, str]:
    """One plaintext key per scope."""
    out: dict[Scope, str] = {}
    async with runtime.db.session() as session:
        for scope in Scope:
            _, plaintext = await do_create_key(session, scope, f"test {scope}", runtime.clock.now())
            out[scope] = plaintext
    return out
