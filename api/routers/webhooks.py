"""Webhook endpoints for schedulers (register, list, change, rotate, disable, delete), each
endpoint's delivery log and replay; and the OpenAPI `webhooks` section describing every event.

Thin: the work is core/webhooks.py (endpoints, signing), core/webhooksender.py (the sender)
and core/outbox.py (the events).
"""

from __future__ import annotations

import re
import uuid
from datetime import datetime
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Body, Path, Query, Response
from pydantic import BaseModel, ConfigDict, Field, create_model

from api import problems
from api.deps import RuntimeDep, SchedulerCaller
from core import webhooks as service
from core.crypto import Keyring
from core.outbox import EventType
from core.purposes import Decision

router = APIRouter(prefix="/v1/webhooks/endpoints", tags=["webhooks (scheduler)"])

EndpointId = Annotated[uuid.UUID, Path(description="The endpoint's id.")]
DeliveryId = Annotated[uuid.UUID, Path(description="The delivery's id.")]


class EndpointIn(BaseModel):
    model_config = ConfigDict(extra="forbid")

    url: str = Field(
        min_length=1, max_length=2000, examples=["https://platform.example/hooks/callgate"],
        description="https:// and a public address (unless the operator allows private ones).",
    )
    description: str = Field(default="", max_length=200)
    event_types: list[EventType] | None = Field(
        default=None, description="The events to send; null or empty: every event."
    )


class EndpointPatch(BaseModel):
    model_config = ConfigDict(extra="forbid")

    url: str | None = Field(default=None, min_length=1, max_length=2000)
    description: str | None = Field(default=None, max_length=200)
    event_types: list[EventType] | None = None
    enabled: bool | None = Field(
        default=None, description="false disables the endpoint (nothing is sent, pending "
        "deliveries wait); true enables it again and makes them due at once, in order."
    )


class EndpointOut(BaseModel):
    id: uuid.UUID
    url: str
    description: str
    event_types: list[str] = Field(description="Empty: every event.")
    enabled: bool
    disabled_at: datetime | None
    disabled_reason: str | None = Field(
        description="Why it was disabled: by you, or because every delivery failed for "
        "`webhook_disable_after_days`."
    )
    failing_since: datetime | None = Field(description="First failure since the last 2xx.")
    previous_secret_until: datetime | None = Field(
        description="After a rotation: until when the previous secret also signs."
    )
    created_at: datetime
    updated_at: datetime


class EndpointWithSecret(EndpointOut):
    secret: str = Field(description="`whsec_...`: shown only when created or rotated.")


class DeliveryOut(BaseModel):
    id: uuid.UUID
    event_id: str = Field(description="The `webhook-id`, the same on every attempt and replay.")
    event_type: str
    status: service.DeliveryStatus
    attempts: int
    next_attempt_at: datetime
    last_attempt_at: datetime | None
    last_status_code: int | None
    last_error: str | None
    delivered_at: datetime | None
    created_at: datetime


class DeliveryPage(BaseModel):
    items: list[DeliveryOut]


def endpoint_out(endpoint: service.Endpoint) -> EndpointOut:
    return EndpointOut(
        id=endpoint.id, url=endpoint.url, description=endpoint.description,
        event_types=list(endpoint.event_types), enabled=endpoint.disabled_at is None,
        disabled_at=endpoint.disabled_at, disabled_reason=endpoint.disabled_reason,
        failing_since=endpoint.failing_since,
        previous_secret_until=endpoint.previous_secret_until,
        created_at=endpoint.created_at, updated_at=endpoint.updated_at,
    )


def with_secret(endpoint: service.Endpoint, keys: Keyring) -> EndpointWithSecret:
    return EndpointWithSecret(
        **endpoint_out(endpoint).model_dump(), secret=endpoint.current_secret(keys)
    )


def delivery_out(delivery: service.Delivery) -> DeliveryOut:
    return DeliveryOut(
        id=delivery.id, event_id=delivery.event_id, event_type=delivery.event_type,
        status=delivery.status, attempts=delivery.attempts,
        next_attempt_at=delivery.next_attempt_at, last_attempt_at=delivery.last_attempt_at,
        last_status_code=delivery.last_status_code, last_error=delivery.last_error,
        delivered_at=delivery.delivered_at, created_at=delivery.created_at,
    )


@router.post(
    "", status_code=201, summary="Register a webhook endpoint",
    description="Events from now on are signed with the returned `secret` (Standard Webhooks) "
    "and sent to `url`. See docs/webhooks.md for verifying them.",
    responses=problems.responses(401, 403, 422),
)
async def create_endpoint(
    runtime: RuntimeDep, caller: SchedulerCaller, body: EndpointIn
) -> EndpointWithSecret:
    async with runtime.db.session() as session:
        endpoint = service.do_create_endpoint(
            session, runtime.settings, runtime.keys, org_id=caller.org_id, url=body.url,
            description=body.description,
            event_types=body.event_types, created_by=caller.key_id, now=runtime.clock.now(),
        )
    return with_secret(endpoint, runtime.keys)


@router.get("", summary="List webhook endpoints", responses=problems.responses(401, 403))
async def list_endpoints(runtime: RuntimeDep, caller: SchedulerCaller) -> list[EndpointOut]:
    async with runtime.db.session() as session:
        return [endpoint_out(e) for e in await service.get_endpoints(session, caller.org_id)]


@router.get(
    "/{endpoint_id}", summary="Get a webhook endpoint",
    responses=problems.responses(401, 403, 404, 422),
)
async def get_endpoint(
    runtime: RuntimeDep, caller: SchedulerCaller, endpoint_id: EndpointId
) -> EndpointOut:
    async with runtime.db.session() as session:
        return endpoint_out(await service.access_endpoint(session, caller.org_id, endpoint_id))


@router.patch(
    "/{endpoint_id}", summary="Change, disable or enable an endpoint",
    responses=problems.responses(401, 403, 404, 422),
)
async def update_endpoint(
    runtime: RuntimeDep, caller: SchedulerCaller, endpoint_id: EndpointId, body: EndpointPatch
) -> EndpointOut:
    now = runtime.clock.now()
    async with runtime.db.session() as session:
        endpoint = await service.access_endpoint(session, caller.org_id, endpoint_id)
        if body.url is not None:
            endpoint.url = service.check_url(body.url, runtime.settings)
        if body.description is not None:
            endpoint.description = body.description
        if body.event_types is not None:
            endpoint.event_types = service.check_types(body.event_types)
        if body.enabled is not None:
            if body.enabled:
                await service.do_enable(session, endpoint, now)
            else:
                service.do_disable(endpoint, now, "disabled through the API")
        endpoint.updated_at = now
    return endpoint_out(endpoint)


@router.post(
    "/{endpoint_id}/rotate", summary="Rotate the signing secret",
    description="A new secret signs from now on; the previous one also signs (a second "
    "`v1,` signature in `webhook-signature`) for `webhook_secret_grace_hours`.",
    responses=problems.responses(401, 403, 404, 422),
)
async def rotate_secret(
    runtime: RuntimeDep, caller: SchedulerCaller, endpoint_id: EndpointId
) -> EndpointWithSecret:
    async with runtime.db.session() as session:
        endpoint = await service.access_endpoint(session, caller.org_id, endpoint_id)
        service.do_rotate_secret(endpoint, runtime.settings, runtime.keys, runtime.clock.now())
    return with_secret(endpoint, runtime.keys)


@router.delete(
    "/{endpoint_id}", status_code=204, summary="Delete an endpoint and its delivery log",
    responses=problems.responses(401, 403, 404, 422),
)
async def delete_endpoint(
    runtime: RuntimeDep, caller: SchedulerCaller, endpoint_id: EndpointId
) -> Response:
    async with runtime.db.session() as session:
        await session.delete(await service.access_endpoint(session, caller.org_id, endpoint_id))
    return Response(status_code=204)


@router.get(
    "/{endpoint_id}/deliveries", summary="The endpoint's delivery log",
    description="Newest first: each event sent (or to be sent) to this endpoint, its attempts "
    "and the last answer.",
    responses=problems.responses(401, 403, 404, 422),
)
async def list_deliveries(
    runtime: RuntimeDep, caller: SchedulerCaller, endpoint_id: EndpointId,
    status: service.DeliveryStatus | None = None,
    limit: Annotated[int, Query(ge=1, le=500)] = 100,
) -> DeliveryPage:
    async with runtime.db.session() as session:
        await service.access_endpoint(session, caller.org_id, endpoint_id)
        rows = await service.get_deliveries(session, endpoint_id, status, limit)
    return DeliveryPage(items=[delivery_out(d) for d in rows])


@router.post(
    "/{endpoint_id}/deliveries/{delivery_id}/replay", status_code=202,
    summary="Send a delivery again",
    description="The same event with the same `webhook-id` (receivers deduplicate on it), "
    "in its turn among the booking's events.",
    responses=problems.responses(401, 403, 404, 422),
)
async def replay_delivery(
    runtime: RuntimeDep, caller: SchedulerCaller, endpoint_id: EndpointId,
    delivery_id: DeliveryId,
) -> DeliveryOut:
    async with runtime.db.session() as session:
        await service.access_endpoint(session, caller.org_id, endpoint_id)
        delivery = await service.access_delivery(session, endpoint_id, delivery_id)
        service.do_replay(delivery, runtime.clock.now())
    return delivery_out(delivery)


# The OpenAPI `webhooks` section: what callgate POSTs to an endpoint, one entry per event.

webhooks = APIRouter()


class BookingData(BaseModel):
    booking_id: uuid.UUID
    status: str
    starts_at: datetime
    ends_at: datetime
    sequence: int


class ParticipantRef(BaseModel):
    participant_id: uuid.UUID
    external_id: str = Field(description="Your own id of the person.")
    role: Literal["host", "client"]


class CreatedData(BookingData):
    participants: list[ParticipantRef]


class ParticipantData(ParticipantRef):
    booking_id: uuid.UUID
    at: datetime


class LeftData(ParticipantData):
    how: Literal["left", "dropped", "removed", "window_closed", "cancelled"]


class ConsentData(BaseModel):
    booking_id: uuid.UUID
    participant_id: uuid.UUID
    purpose: str
    decision: Decision
    entry_id: uuid.UUID = Field(description="The consent ledger entry.")
    at: datetime


class RecordingSwitchData(BaseModel):
    booking_id: uuid.UUID
    by: str = Field(description="`host` or `admin`.")
    at: datetime


class RecordingReadyData(BaseModel):
    booking_id: uuid.UUID
    recording_id: uuid.UUID
    participant_id: uuid.UUID
    kind: Literal["audio", "video"]


class OutputData(BaseModel):
    booking_id: uuid.UUID
    job_id: uuid.UUID
    output_id: uuid.UUID


class ErasedData(BaseModel):
    participant_ids: list[uuid.UUID] = Field(
        description="The person's participant ids (their external id was erased too)."
    )
    at: datetime


DATA: dict[EventType, type[BaseModel]] = {
    EventType.BOOKING_CREATED: CreatedData,
    EventType.BOOKING_RESCHEDULED: BookingData,
    EventType.BOOKING_CANCELLED: BookingData,
    EventType.BOOKING_OPENED: BookingData,
    EventType.BOOKING_STARTED: BookingData,
    EventType.BOOKING_ENDED: BookingData,
    EventType.BOOKING_CLOSED: BookingData,
    EventType.PARTICIPANT_JOINED: ParticipantData,
    EventType.PARTICIPANT_LEFT: LeftData,
    EventType.PARTICIPANT_NO_SHOW: ParticipantData,
    EventType.LINK_REVOKED: ParticipantData,
    EventType.CONSENT_CHANGED: ConsentData,
    EventType.RECORDING_STARTED: RecordingSwitchData,
    EventType.RECORDING_STOPPED: RecordingSwitchData,
    EventType.RECORDING_READY: RecordingReadyData,
    EventType.TRANSCRIPT_READY: OutputData,
    EventType.SUMMARY_READY: OutputData,
    EventType.AGENDA_READY: OutputData,
    EventType.SUBJECT_ERASED: ErasedData,
}


def _envelope(kind: EventType, data: type[BaseModel]) -> type[BaseModel]:
    name = "".join(part.title() for part in kind.value.replace("_", ".").split(".")) + "Event"
    return create_model(
        name,
        __doc__=f"The `{kind.value}` event, signed per Standard Webhooks (headers webhook-id, "
        "webhook-timestamp, webhook-signature).",
        type=(str, Field(pattern=f"^{re.escape(kind.value)}$", examples=[kind.value])),
        timestamp=(datetime, Field(description="When the change happened.")),
        data=(data, ...),
    )


def _describe(kind: EventType, model: type[BaseModel]) -> None:
    async def receive(body: Annotated[Any, Body()]) -> None:
        """Answer 2xx within the timeout; anything else is retried (docs/webhooks.md)."""

    receive.__annotations__["body"] = Annotated[model, Body()]
    webhooks.post(kind.value, summary=kind.value, status_code=204)(receive)


for _kind, _data in DATA.items():
    _describe(_kind, _envelope(_kind, _data))
