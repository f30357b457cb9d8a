"""The one error hierarchy of callgate.

Domain code raises these; `api/` turns them into RFC 9457 problem+json responses and
`signaling/` into WebSocket close codes. Each class has a stable `code` (part of the API).

    CallgateError
    ├── InvalidInput            bad input: the field(s) and why          (422)
    ├── AuthenticationFailed    no or unknown credential                 (401)
    ├── PermissionDenied        known caller, not allowed                (403)
    │   └── OutsideJoinWindow   too early / too late, with the window    (403)
    ├── NotFound                no such thing, or not yours to see       (404)
    ├── Conflict                state forbids it (idempotency mismatch)  (409)
    ├── Gone                    existed, now cancelled/ended             (410)
    ├── RateLimited             slow down, with retry-after              (429)
    └── Unavailable             a dependency is down (fail closed)       (503)
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, ClassVar


@dataclass(frozen=True)
class FieldError:
    """One problem with one input field; `loc` is the path to it (e.g. ("body", "ends_at"))."""

    loc: tuple[str | int, ...]
    msg: str


class CallgateError(Exception):
    code: ClassVar[str] = "error"
    title: ClassVar[str] = "Error"

    def __init__(self, detail: str, *, extra: Mapping[str, Any] | None = None) -> None:
        super().__init__(detail)
        self.detail = detail
        self.extra: dict[str, Any] = dict(extra or {})


class InvalidInput(CallgateError):
    code = "invalid_input"
    title = "Invalid input"

    def __init__(
        self,
        detail: str,
        *,
        errors: Sequence[FieldError] = (),
        extra: Mapping[str, Any] | None = None,
    ) -> None:
        super().__init__(detail, extra=extra)
        self.errors = tuple(errors)

    @classmethod
    def field(cls, loc: tuple[str | int, ...], msg: str) -> InvalidInput:
        """An error about one field; the detail names it."""
        name = ".".join(str(part) for part in loc)
        return cls(f"{name}: {msg}", errors=[FieldError(loc, msg)])


class AuthenticationFailed(CallgateError):
    code = "unauthenticated"
    title = "Authentication required"


class PermissionDenied(CallgateError):
    code = "forbidden"
    title = "Forbidden"


class OutsideJoinWindow(PermissionDenied):
    code = "outside_join_window"
    title = "Outside the join window"


class NotFound(CallgateError):
    code = "not_found"
    title = "Not found"


class Conflict(CallgateError):
    code = "conflict"
    title = "Conflict"


class Gone(CallgateError):
    code = "gone"
    title = "Gone"


class RateLimited(CallgateError):
    code = "rate_limited"
    title = "Too many requests"

    def __init__(self, detail: str, *, retry_after_s: int) -> None:
        super().__init__(detail, extra={"retry_after": retry_after_s})
        self.retry_after_s = retry_after_s


class Unavailable(CallgateError):
    code = "unavailable"
    title = "Service unavailable"
