"""RFC 9457 problem details for every error response.

Domain errors carry a stable `code`; the problem's `type` is `urn:callgate:problem:<code>`
and validation problems list each bad field under `errors` with its location.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import structlog
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.routing import Match

from core import errors

log = structlog.get_logger(__name__)

MEDIA_TYPE = "application/problem+json"

STATUS: dict[type[errors.CallgateError], int] = {
    errors.InvalidInput: 422,
    errors.AuthenticationFailed: 401,
    errors.PermissionDenied: 403,
    errors.NotFound: 404,
    errors.Conflict: 409,
    errors.Gone: 410,
    errors.RateLimited: 429,
    errors.Unavailable: 503,
}


def status_of(exc: errors.CallgateError) -> int:
    for cls in type(exc).__mro__:
        if cls in STATUS:
            return STATUS[cls]
    return 400


def problem(
    status: int,
    title: str,
    detail: str,
    *,
    code: str,
    instance: str | None = None,
    headers: dict[str, str] | None = None,
    **extra: Any,
) -> JSONResponse:
    body: dict[str, Any] = {
        "type": f"urn:callgate:problem:{code}",
        "title": title,
        "status": status,
        "detail": detail,
        "code": code,
    }
    if instance:
        body["instance"] = instance
    body.update(extra)
    return JSONResponse(body, status_code=status, media_type=MEDIA_TYPE, headers=headers)


def _field_errors(raw: Sequence[Any]) -> list[dict[str, Any]]:
    out = []
    for err in raw:
        loc = [part for part in err.get("loc", ()) if part != "__root__"]
        out.append({"loc": loc, "msg": str(err.get("msg", "invalid")), "type": err.get("type")})
    return out


async def _callgate_error(request: Request, exc: Exception) -> JSONResponse:
    if not isinstance(exc, errors.CallgateError):  # registered for this type only
        raise exc
    headers = {}
    extra = dict(exc.extra)
    if isinstance(exc, errors.RateLimited):
        headers["Retry-After"] = str(exc.retry_after_s)
    if isinstance(exc, errors.AuthenticationFailed):
        headers["WWW-Authenticate"] = "Bearer"
    if isinstance(exc, errors.InvalidInput) and exc.errors:
        extra["errors"] = [{"loc": list(e.loc), "msg": e.msg} for e in exc.errors]
    return problem(
        status_of(exc),
        exc.title,
        exc.detail,
        code=exc.code,
        instance=request.url.path,
        headers=headers,
        **extra,
    )


async def _validation_error(request: Request, exc: Exception) -> JSONResponse:
    if not isinstance(exc, RequestValidationError):
        raise exc
    fields = _field_errors(exc.errors())
    names = "; ".join(
        f"{'.'.join(str(p) for p in f['loc'])}: {f['msg']}" for f in fields[:5]
    )
    return problem(
        422,
        "Invalid input",
        names or "the request is not valid",
        code=errors.InvalidInput.code,
        instance=request.url.path,
        errors=fields,
    )


_METHODS = ("DELETE", "GET", "HEAD", "PATCH", "POST", "PUT")


def _allowed_methods(request: Request) -> str:
    """Every method some route serves at this path (RFC 9110 §15.5.6), not just the first
    route's: Starlette answers 405 from the first route whose path matched. Each method is
    tried against the routes, so nested routers are covered too."""
    allowed = [
        method
        for method in _METHODS
        if any(
            route.matches({**request.scope, "method": method})[0] is Match.FULL
            for route in request.app.router.routes
        )
    ]
    return ", ".join(allowed)


async def _http_error(request: Request, exc: Exception) -> JSONResponse:
    if not isinstance(exc, StarletteHTTPException):
        raise exc
    headers = dict(exc.headers or {})
    if exc.status_code == 400:
        # FastAPI's answer to a body it could not decode (e.g. not UTF-8): input problem, 422,
        # the same as for JSON it could not parse.
        return problem(
            422, "Invalid input", "the request body is not valid JSON",
            code=errors.InvalidInput.code, instance=request.url.path,
            errors=[{"loc": ["body"], "msg": "not valid JSON", "type": "json_invalid"}],
        )
    if exc.status_code == 405:
        headers["Allow"] = _allowed_methods(request)
    title = {404: "Not found", 405: "Method not allowed"}.get(exc.status_code, "Error")
    code = {404: "not_found", 405: "method_not_allowed"}.get(exc.status_code, "http_error")
    return problem(
        exc.status_code,
        title,
        str(exc.detail),
        code=code,
        instance=request.url.path,
        headers=headers,
    )


async def _unexpected(request: Request, exc: Exception) -> JSONResponse:
    log.exception("request.unhandled", path=request.url.path)
    return problem(
        500, "Internal error", "an unexpected error occurred", code="internal",
        instance=request.url.path,
    )


def install(app: FastAPI) -> None:
    app.add_exception_handler(errors.CallgateError, _callgate_error)
    app.add_exception_handler(RequestValidationError, _validation_error)
    app.add_exception_handler(StarletteHTTPException, _http_error)
    app.add_exception_handler(Exception, _unexpected)
    plain = app.openapi

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            app.openapi_schema = problem_documents(plain())
        return app.openapi_schema

    app.openapi = openapi  # type: ignore[method-assign]


def problem_documents(document: dict[str, Any]) -> dict[str, Any]:
    """FastAPI documents its own 422 as `application/json` `HTTPValidationError`; what is
    served is problem+json (see `_validation_error`). Say so, for every operation."""
    for item in document.get("paths", {}).values():
        for operation in item.values():
            answers = operation.setdefault("responses", {})
            for status, answer in answers.items():
                content = answer.get("content", {})
                if status == "422" and "application/json" in content:
                    answer["content"] = PROBLEM_SCHEMA["content"]
            headers = {p["name"].lower() for p in operation.get("parameters", ())
                       if p.get("in") == "header"}
            # Join credentials share one failure limit (api/deps.py), bodies one size limit.
            extra = [429] if "x-join-credential" in headers else []
            extra += [413] if "requestBody" in operation else []
            for status, answer in responses(*extra).items():
                answers.setdefault(str(status), answer)
    schemas = document.get("components", {}).get("schemas", {})
    for name in ("HTTPValidationError", "ValidationError"):
        schemas.pop(name, None)
    return document


# For the OpenAPI description of error responses.
PROBLEM_SCHEMA = {
    "content": {
        MEDIA_TYPE: {
            "schema": {
                "type": "object",
                "properties": {
                    "type": {"type": "string"},
                    "title": {"type": "string"},
                    "status": {"type": "integer"},
                    "detail": {"type": "string"},
                    "code": {"type": "string"},
                    "instance": {"type": "string"},
                    "errors": {"type": "array", "items": {"type": "object"}},
                },
            }
        }
    }
}


def responses(*codes: int) -> dict[int | str, dict[str, Any]]:
    """OpenAPI `responses=` entries for the problem statuses a route can return."""
    texts = {
        401: "No or invalid API key / credential",
        403: "Not allowed",
        404: "Not found (or not yours to see)",
        409: "Conflict",
        410: "Gone (cancelled)",
        422: "Invalid input; `errors` names each field",
        413: "The request body is over `max_body_bytes`",
        429: "Too many requests; see Retry-After",
        503: "A dependency is unavailable",
    }
    return {c: {"description": texts.get(c, "Error"), **PROBLEM_SCHEMA} for c in codes}
