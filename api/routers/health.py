"""Liveness, readiness and metrics."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Request, Response
from fastapi.responses import JSONResponse
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from api.deps import GateDep, MetricsCaller, RuntimeDep
from api.problems import responses
from api.schemas import Health, Readiness

router = APIRouter(tags=["operations"])


@router.get(
    "/healthz", summary="Process is alive", response_model=Health,
    response_model_exclude_unset=True,
)
async def healthz() -> dict[str, str]:
    return {"status": "ok"}


@router.get(
    "/readyz",
    response_model=Readiness,
    response_model_exclude_unset=True,
    summary="Ready to serve",
    description="200 when the database (and Redis, when configured) answer and no consent "
    "ledger tampering alarm stands; 503 naming what is wrong (`consent_ledger`: where the "
    "chain fails, until an admin acknowledges it).",
    responses={503: {"description": "A dependency is unreachable or the ledger was tampered "
                     "with"}},
)
async def readyz(runtime: RuntimeDep, gate: GateDep) -> JSONResponse:
    checks: dict[str, Any] = {}
    try:
        await runtime.db.ping()
        checks["database"] = "ok"
    except Exception as exc:  # readiness reports, it does not raise
        checks["database"] = f"unreachable: {type(exc).__name__}"
    if runtime.redis is not None:
        try:
            await runtime.redis.ping()
            checks["redis"] = "ok"
        except Exception as exc:
            checks["redis"] = f"unreachable: {type(exc).__name__}"
    if gate is not None:
        standing = gate.integrity.standing
        checks["consent_ledger"] = "ok" if standing is None else "tampered: " + standing.sentence()
    ready = all(v == "ok" for v in checks.values())
    return JSONResponse(
        {"status": "ready" if ready else "unavailable", "checks": checks},
        status_code=200 if ready else 503,
    )


@router.get(
    "/metrics",
    summary="Prometheus metrics (an API key of scope `metrics` or `admin`)",
    response_class=Response,
    responses={
        200: {"content": {CONTENT_TYPE_LATEST.split(";")[0]: {"schema": {"type": "string"}}}},
        **responses(401, 403),
    },
)
async def metrics(request: Request, _caller: MetricsCaller) -> Response:
    registry = request.app.state.metrics.registry
    return Response(generate_latest(registry), media_type=CONTENT_TYPE_LATEST)
