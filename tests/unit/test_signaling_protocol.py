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
    Relay,
    SendSignal,
    Signal,
    encode,
    parse_client,
    read_client,
    server_messages,
    signal_envelope,
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


def relayed(sender: str, relay: Relay) -> dict[str, object]:
    """What the addressee's page parses out of a relayed signal."""
    message: dict[str, object] = json.loads(signal_envelope(sender) + relay.payload + "}")
    return message


def same_answer(raw: str) -> None:
    """The socket loop's reading (no `Signal` model, a prebuilt envelope) says what the
    models say, and the relayed message is what encoding a `Signal` would give."""
    fast, strict = read_client(raw), parse_client(raw)
    if isinstance(strict, SendSignal):
        assert isinstance(fast, Relay)
        assert fast.to == strict.to
        expected = json.loads(encode(Signal.model_construct(from_="a\"1", payload=strict.payload)))
        assert relayed('a"1', fast) == expected
    else:
        assert fast == strict


def test_the_relay_reading_agrees_with_the_models_on_edge_cases() -> None:
    # (These once guarded a hand-written stdlib json reading, which measured slower than
    # pydantic-core on SDP-sized payloads; they keep guarding the envelope.)
    deep, deeper = "[" * 150 + "]" * 150, "[" * 250 + "]" * 250  # pydantic allows 200 levels
    for raw in [
        '{"type":"signal","to":"b","payload":{"sdp":"v=0\\r\\n\u00e9"}}',
        '{"type":"signal","to":"b","payload":{"x":"\\ud800"}}',  # unpaired surrogate
        '{"type":"signal","to":"b","payload":{"x":"\\ud83d\\ude00"}}',  # a pair
        '{"type":"signal","to":"b","payload":{"x":NaN,"y":1e400,"z":-Infinity}}',
        '{"type":"signal","to":"b","payload":{"x":123456789012345678901234567890}}',
        '{"type":"signal","to":"b","to":"c","payload":{"a":1,"a":2}}',
        '{"type":"signal","to":"b","payload":{}} x',
        '{"type":"signal","to":"","payload":{}}',
        '{"type":"signal","to":"' + "b" * 65 + '","payload":{}}',
        '{"type":"signal","to":1,"payload":{}}',
        '{"type":"signal","to":"b","payload":[]}',
        '{"type":"signal","to":"b","payload":{},"extra":1}',
        '{"type":"signal","to":"b","payload":{"x":' + deep + "}}",
        '{"type":"signal","to":"b","payload":{"x":' + deeper + "}}",
        '{"type":"ping"}', '{"type":"ping","x":1}', '{"type":"pong"}', "[]", "null", "",
    ]:
        same_answer(raw)


signal_like = st.fixed_dictionaries(
    {"type": st.sampled_from(["signal", "ping", "Signal"]),
     "to": st.one_of(st.text(max_size=70), st.integers()),
     "payload": json_values},
    optional={"extra": json_values},
)


@given(st.one_of(st.text(max_size=200), json_values.map(json.dumps), signal_like.map(json.dumps)))
def test_the_relay_reading_agrees_with_the_models_on_any_input(raw: str) -> None:
    same_answer(raw)
