"""FastAPI dependencies: the runtime, and who the caller is (`access_*` is the only door)."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Annotated

from fastapi import Depends, Header, Request
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

from api.services import Services
from consent.live import LiveGate
from core.accounts import Caller, Scope, Viewer, access_caller
from core.bookings import Participant
from core.errors import AuthenticationFailed, PermissionDenied
from core.runtime import Runtime
from media.egress import Egress
from media.recorder import Recorder
from privacy.service import Privacy
from signaling.credentials import access_participant_guarded
from signaling.hub import Hub
from signaling.join import JoinReader
from signaling.livekit import Rooms
from summaries.service import AiJobs

# The one declaration of the API-key scheme (OpenAPI `HTTPBearer`), for every route taking a key.
bearer = HTTPBearer(auto_error=False, description="API key: `Authorization: Bearer cg_...`")


def get_runtime(request: Request) -> Runtime:
    runtime: Runtime = request.app.state.runtime
    return runtime


RuntimeDep = Annotated[Runtime, Depends(get_runtime)]


def get_services(request: Request) -> Services:
    services: Services = request.app.state.services
    return services


ServicesDep = Annotated[Services, Depends(get_services)]


def get_gate(services: ServicesDep) -> LiveGate | None:
    return services.gate


def get_hub(services: ServicesDep) -> Hub:
    return services.hub


def get_recorder(services: ServicesDep) -> Recorder:
    return services.recorder


def get_egress(services: ServicesDep) -> Egress:
    return services.egress


def get_rooms(services: ServicesDep) -> Rooms:
    return services.rooms


def get_join_reader(services: ServicesDep) -> JoinReader:
    return services.join


def get_ai_jobs(services: ServicesDep) -> AiJobs:
    return services.ai_jobs


def get_privacy(services: ServicesDep) -> Privacy:
    return services.privacy


GateDep = Annotated[LiveGate | None, Depends(get_gate)]
HubDep = Annotated[Hub, Depends(get_hub)]
RecorderDep = Annotated[Recorder, Depends(get_recorder)]
EgressDep = Annotated[Egress, Depends(get_egress)]
RoomsDep = Annotated[Rooms, Depends(get_rooms)]
JoinReaderDep = Annotated[JoinReader, Depends(get_join_reader)]
AiJobsDep = Annotated[AiJobs, Depends(get_ai_jobs)]
PrivacyDep = Annotated[Privacy, Depends(get_privacy)]


def require(*scopes: Scope) -> Callable[..., Awaitable[Caller]]:
    """A dependency admitting API keys of the given scopes (401 without a key, 403 otherwise)."""

    async def dependency(
        runtime: RuntimeDep,
        credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(bearer)],
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
MetricsCaller = Annotated[Caller, Depends(require(Scope.METRICS, Scope.ADMIN))]


def client_address(request: Request) -> str:
    """The caller's address (the proxy's client only from `trusted_proxies`, api/limits.py)."""
    return request.client.host if request.client is not None else "unknown"


AddressDep = Annotated[str, Depends(client_address)]


async def participant_from_credential(
    runtime: RuntimeDep,
    address: AddressDep,
    x_join_credential: Annotated[
        str,
        Header(description="The credential from the person's join link (`/join/<credential>`)."),
    ],
) -> Participant:
    """The participant calling a participant endpoint (404 for unknown or revoked links, 429
    past the failure limit every credential-bearing endpoint shares)."""
    return await access_participant_guarded(runtime, x_join_credential, address)


ParticipantDep = Annotated[Participant, Depends(participant_from_credential)]


async def get_viewer(
    runtime: RuntimeDep,
    address: AddressDep,
    credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(bearer)],
    x_join_credential: Annotated[
        str | None, Header(description="A participant's join credential (instead of a key).")
    ] = None,
) -> Viewer:
    """A participant by join credential (under the shared failure limit), or an API caller by
    key (401 with neither); what they may see is `core.accounts.access_booking_data`."""
    if x_join_credential is not None:
        participant = await access_participant_guarded(runtime, x_join_credential, address)
        return Viewer(participant=participant)
    async with runtime.db.session() as session:
        if credentials is not None:
            return Viewer(caller=await access_caller(session, credentials.credentials))
    raise AuthenticationFailed("send X-Join-Credential or an admin API key")


ViewerDep = Annotated[Viewer, Depends(get_viewer)]
