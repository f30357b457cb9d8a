"""The signaling wire protocol: typed JSON messages over the room WebSocket.

Every message is a JSON object with a `type`; both directions are pydantic discriminated
unions, so an unknown `type` or a bad field is one typed `error` reply, never a crash.
The documentation of each message and close code is docs/signaling.md.
"""

from __future__ import annotations

import enum
import json
from typing import Annotated, Any, Literal, NamedTuple

from pydantic import BaseModel, ConfigDict, Field, TypeAdapter, ValidationError
from pydantic_core import from_json, to_json

from consent.purposes import Decision

MAX_FRAME_BYTES = 64 * 1024
MAX_TO = 64  # characters of a peer id in `signal.to`


class CloseCode(enum.IntEnum):
    """WebSocket close codes (RFC 6455 section 7.4; 4000-4999 are ours)."""

    NORMAL = 1000
    GOING_AWAY = 1001
    POLICY = 1008  # rate limit exceeded
    TOO_BIG = 1009  # a frame over MAX_FRAME_BYTES
    SERVER_ERROR = 1011
    TRY_AGAIN = 1013  # presence store unreachable
    BAD_TICKET = 4401  # missing, forged, expired or already used ticket; the link revoked
    FORBIDDEN = 4403  # foreign Origin, ticket for another room, outside the join window
    NO_ROOM = 4404  # no such room
    REPLACED = 4409  # the same person connected again elsewhere
    CANCELLED = 4410  # booking cancelled, or the person erased


class ByeReason(enum.StrEnum):
    WINDOW_CLOSED = "window_closed"
    BOOKING_CANCELLED = "booking_cancelled"
    REMOVED = "removed"
    REPLACED = "replaced"
    IDLE = "idle"
    REVOKED = "revoked"  # the person's join link was revoked
    ERASED = "erased"  # the person was erased


class ErrorCode(enum.StrEnum):
    MALFORMED = "malformed"  # not JSON, or fields of the wrong shape
    UNKNOWN_TYPE = "unknown_type"
    UNKNOWN_PEER = "unknown_peer"  # `to` names no one present in the room
    RATE_LIMITED = "rate_limited"


class _Message(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class Peer(_Message):
    id: str
    name: str
    role: str


class IceServer(_Message):
    """One RTCIceServer as the browser takes it (also in the `POST /v1/join` answer)."""

    urls: list[str]
    username: str | None = None
    credential: str | None = None


class ConsentState(_Message):
    who: str
    purpose: str
    decision: Decision


class RecordingState(_Message):
    """Whether a person's own audio/video tracks are being recorded right now."""

    who: str
    audio: bool = False
    video: bool = False


# server -> client


class Welcome(_Message):
    type: Literal["welcome"] = "welcome"
    id: str
    name: str
    role: str
    room: str
    peers: list[Peer]
    consent: list[ConsentState]
    recording: list[RecordingState]
    ice_servers: list[IceServer]
    resumed: bool = False


class PeerJoined(_Message):
    type: Literal["peer-joined"] = "peer-joined"
    peer: Peer


class PeerUpdated(_Message):
    type: Literal["peer-updated"] = "peer-updated"
    peer: Peer


class PeerLeft(_Message):
    type: Literal["peer-left"] = "peer-left"
    id: str


class Signal(_Message):
    model_config = ConfigDict(frozen=True, extra="forbid", populate_by_name=True)

    type: Literal["signal"] = "signal"
    from_: str = Field(alias="from")
    payload: dict[str, Any]


class Consent(_Message):
    type: Literal["consent"] = "consent"
    who: str
    purpose: str
    decision: Decision


class Recording(_Message):
    type: Literal["recording"] = "recording"
    who: str
    audio: bool
    video: bool


class RecordingSwitch(_Message):
    """Recording of the whole booking was switched on or off (the host's start/stop)."""

    type: Literal["recording-state"] = "recording-state"
    on: bool


class NoticeChanged(_Message):
    """A notice of a purpose this booking asks for changed materially: fetch GET /v1/consent
    again (`reconsent_required`, `notice_change`) and ask the person again."""

    type: Literal["notice-changed"] = "notice-changed"
    purpose: str


class Error(_Message):
    type: Literal["error"] = "error"
    code: ErrorCode
    detail: str


class Bye(_Message):
    type: Literal["bye"] = "bye"
    reason: ByeReason


class Pong(_Message):
    type: Literal["pong"] = "pong"


ServerMessage = Annotated[
    Welcome | PeerJoined | PeerUpdated | PeerLeft | Signal | Consent | Recording
    | RecordingSwitch | NoticeChanged | Error | Bye | Pong,
    Field(discriminator="type"),
]
server_messages: TypeAdapter[ServerMessage] = TypeAdapter(ServerMessage)


# client -> server


class SendSignal(_Message):
    """Relay `payload` (an SDP description or ICE candidate, opaque here) to peer `to`."""

    type: Literal["signal"] = "signal"
    to: str = Field(min_length=1, max_length=MAX_TO)
    payload: dict[str, Any]


class Ping(_Message):
    type: Literal["ping"] = "ping"


class Leave(_Message):
    """A deliberate Leave: the others see `peer-left` at once (no reconnect grace)."""

    type: Literal["bye"] = "bye"


ClientMessage = Annotated[SendSignal | Ping | Leave, Field(discriminator="type")]
client_messages: TypeAdapter[ClientMessage] = TypeAdapter(ClientMessage)


def encode(message: _Message) -> str:
    return message.model_dump_json(by_alias=True)


# The relay path. A `signal` is most of the traffic and its payload is opaque here. A message
# in the exact shape of a valid `SendSignal` (an object of `type`, `to`, `payload` and nothing
# else; `to` a string of 1-64 characters; `payload` an object) is recognised after one parse
# by pydantic-core's JSON parser, without building a model or validating through the union
# (a third of the relay's CPU per message was here); its payload is dumped back by
# pydantic-core once and wrapped in the sender's precomputed envelope, and the text is not
# parsed again on its way, also across nodes. Anything else goes through `parse_client`, so
# every invalid message gets the same typed `error` as before.


class Relay(NamedTuple):
    """A valid client `signal`: the addressee and the payload, already as JSON text."""

    to: str
    payload: str


def read_client(raw: str) -> Relay | Ping | Leave | Error:
    """`parse_client` for the socket loop: the same answers, a `signal` as a `Relay`."""
    try:
        value = from_json(raw, allow_inf_nan=False)
    except ValueError:
        value = None
    if type(value) is dict and len(value) == 3 and value.get("type") == "signal":
        to, payload = value.get("to"), value.get("payload")
        if type(to) is str and 0 < len(to) <= MAX_TO and type(payload) is dict:
            return Relay(to, to_json(payload, inf_nan_mode="null").decode())
    message = parse_client(raw)
    if isinstance(message, SendSignal):  # (NaN or Infinity in it: relayed as null)
        return Relay(message.to, to_json(message.payload, inf_nan_mode="null").decode())
    return message


def signal_envelope(sender: str) -> str:
    """The start of every `signal` relayed from `sender`; the payload and `}` complete it."""
    return f'{{"type":"signal","from":{json.dumps(sender)},"payload":'


def parse_client(raw: str) -> ClientMessage | Error:
    """The client's message, or the `error` to answer it with."""
    try:
        return client_messages.validate_json(raw)
    except ValidationError as exc:
        errors = exc.errors()
        first: dict[str, Any] = dict(errors[0]) if errors else {}
        kind = first.get("type", "")
        if kind == "union_tag_invalid":
            detail = "unknown message type; send `signal`, `ping` or `bye`"
            return Error(code=ErrorCode.UNKNOWN_TYPE, detail=detail)
        loc = ".".join(str(part) for part in first.get("loc", ())) or "message"
        msg = str(first.get("msg", "invalid"))
        return Error(code=ErrorCode.MALFORMED, detail=f"{loc}: {msg}"[:300])
