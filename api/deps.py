"""FastAPI dependencies: the runtime, and who the caller is (`access_*` is the only door)."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Annotated

from fastapi import Depends, Header, Request
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

from core.accounts import Caller, Scope, access_caller
from core.bookings import Participant
from core.errors import PermissionDenied
from core.runtime import Runtime
from signaling.credentials import access_participant

_bearer = HTTPBearer(auto_error=False, description="API key: `Authorization: Bearer cg_...`")


def get_runtime(request: Request) -> Runtime:
    runtime: Runtime = request.app.state.runtime
    return runtime


RuntimeDep = Annotated[Runtime, Depends(get_runtime)]


def require(*scopes: Scope) -> Callable[..., Awaitable[Caller]]:
    """A dependency admitting API keys of the given scopes (401 without a key, 403 otherwise)."""

    async def dependency(
        runtime: RuntimeDep,
        credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)],
    ) -> Caller:
        presented = credentials.credentials if credentials is not None else None
        async with runtime.db.session() as session:
            caller = await access_caller(session, presented)
        if caller.scope not in scopes:
            allowed = ", ".join(s.value for s in scopes)
            raise PermissionDenied(f"this endpoint needs an API key with scope {allowed}")
        return caller

    return dependency


SchedulerCaller = Annotated[Caller, Depends(require(Scope.SCHEDULER))]
AdminCaller = Annotated[Caller, Depends(require(Scope.ADMIN))]
ReviewerCaller = Annotated[Caller, Depends(require(Scope.ADMIN, Scope.AUDITOR))]


async def participant_from_credential(
    runtime: RuntimeDep,
    x_join_credential: Annotated[
        str,
        Header(description="The credential from the person's join link (`/join/<credential>`)."),
    ],
) -> Participant:
    """The participant calling a participant endpoint (404 for unknown or revoked links)."""
    async with runtime.db.session() as session:
        return await access_participant(session, x_join_credential)


ParticipantDep = Annotated[Participant, Depends(participant_from_credential)]
