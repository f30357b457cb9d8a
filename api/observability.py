"""Request ids, access logs and Prometheus metrics, as one pure-ASGI middleware (cheap)."""

from __future__ import annotations

import asyncio
import re
import time
import uuid
from collections.abc import Callable
from typing import Any

import structlog
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from starlette.types import ASGIApp, Message, Receive, Scope, Send

log = structlog.get_logger("callgate.access")
_VALID_ID = re.compile(r"^[A-Za-z0-9._-]{1,64}$")


class Metrics:
    """The app's own registry, so two apps in one process (tests, two nodes) never collide."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.requests = Counter(
            "callgate_http_requests_total",
            "HTTP requests by route and status",
            ["method", "route", "status"],
            registry=self.registry,
        )
        self.latency = Histogram(
            "callgate_http_request_seconds",
            "HTTP request latency by route",
            ["method", "route"],
            buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5),
            registry=self.registry,
        )
        self.joins = Counter(
            "callgate_joins_total", "Join attempts by outcome", ["outcome"], registry=self.registry
        )
        self.ws_connections = Counter(
            "callgate_ws_connections_total", "Signaling connections opened",
            registry=self.registry,
        )
        self.ledger_tampered = Gauge(
            "callgate_consent_ledger_tampered",
            "1 while a consent ledger integrity alarm stands (unacknowledged), else 0",
            registry=self.registry,
        )
        self.ledger_first_bad_seq = Gauge(
            "callgate_consent_ledger_first_bad_seq",
            "Seq of the first ledger entry that fails verification (0 when none)",
            registry=self.registry,
        )

        # Read at scrape time on the event loop (the /metrics handler runs there): a count
        # that only grows is a leak (bench/soak.py watches it).
        self.tasks = Gauge(
            "callgate_asyncio_tasks", "asyncio tasks alive in this process",
            registry=self.registry,
        )
        self.tasks.set_function(_task_count)

    def watch_ledger(self, standing: Callable[[], Any]) -> None:
        """Read the integrity alarm at each scrape (`standing()` -> object with
        `first_bad_seq`, or None)."""
        self.ledger_tampered.set_function(lambda: float(standing() is not None))
        self.ledger_first_bad_seq.set_function(
            lambda: float(getattr(standing(), "first_bad_seq", 0))
        )


def _task_count() -> float:
    try:
        return float(len(asyncio.all_tasks()))
    except RuntimeError:  # scraped from outside the event loop
        return float("nan")


def scope_request_id(scope: Scope) -> str:
    """The caller's `X-Request-Id` when it is a plausible id, else a new one."""
    incoming = dict(scope.get("headers") or ()).get(b"x-request-id", b"").decode("latin-1")
    return incoming if _VALID_ID.match(incoming) else uuid.uuid4().hex


class RequestContext:
    def __init__(self, app: ASGIApp, metrics: Metrics) -> None:
        self.app = app
        self.metrics = metrics

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] not in ("http", "websocket"):
            await self.app(scope, receive, send)
            return
        request_id = scope_request_id(scope)
        structlog.contextvars.bind_contextvars(request_id=request_id)
        status = 500
        started = time.perf_counter()

        async def send_with_id(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
                headers = list(message.get("headers", []))
                headers.append((b"x-request-id", request_id.encode()))
                message["headers"] = headers
            await send(message)

        try:
            await self.app(scope, receive, send_with_id)
        finally:
            if scope["type"] == "http":
                route = scope.get("route")
                path = getattr(route, "path", "unmatched")
                elapsed = time.perf_counter() - started
                self.metrics.requests.labels(scope["method"], path, str(status)).inc()
                self.metrics.latency.labels(scope["method"], path).observe(elapsed)
                log.info(
                    "request", method=scope["method"], route=path, status=status,
                    ms=round(elapsed * 1000, 2),
                )
            structlog.contextvars.unbind_contextvars("request_id")
