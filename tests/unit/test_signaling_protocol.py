"""The signaling wire protocol: every client input becomes a message or a typed error."""

from __future__ import annotations

import json

from hypothesis import given
from hypothesis import strategies as st

from signaling.protocol import (
    Bye,
    ByeReason,
    Error,
    ErrorCode,
    Ping,
    SendSignal,
    Signal,
    encode,
    parse_client,
    server_messages,
)


def test_signal_and_ping_parse() -> None:
    message = parse_client('{"type": "signal", "to": "b", "payload": {"candidate": {"x": 1}}}')
    assert message == SendSignal(to="b", payload={"candidate": {"x": 1}})
    assert parse_client('{"type": "ping"}') == Ping()


def test_unknown_type_and_bad_fields_are_typed_errors() -> None:
    unknown = parse_client('{"type": "welcome"}')  # a server message sent by a client
    assert isinstance(unknown, Error)
    assert unknown.code is ErrorCode.UNKNOWN_TYPE
    missing = parse_client('{"type": "signal", "payload": {}}')
    assert isinstance(missing, Error)
    assert missing.code is ErrorCode.MALFORMED
    assert "to" in missing.detail
    extra = parse_client('{"type": "ping", "admin": true}')
    assert isinstance(extra, Error)
    assert extra.code is ErrorCode.MALFORMED


def test_server_messages_use_the_wire_names() -> None:
    relayed = json.loads(encode(Signal.model_construct(from_="a", payload={"n": 1})))
    assert relayed == {"type": "signal", "from": "a", "payload": {"n": 1}}
    assert json.loads(encode(Bye(reason=ByeReason.REPLACED))) == {"type": "bye",
                                                                 "reason": "replaced"}
    assert server_messages.validate_json(encode(Bye(reason=ByeReason.IDLE))) == Bye(
        reason=ByeReason.IDLE
    )


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.text(max_size=20),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner,
                                                                 max_size=4),
    max_leaves=12,
)


@given(st.one_of(st.text(max_size=200), json_values.map(json.dumps)))
def test_any_input_is_a_message_or_an_error_never_an_exception(raw: str) -> None:
    result = parse_client(raw)
    assert isinstance(result, SendSignal | Ping | Error)
