"""The Anthropic Messages adapter: validation, usage conversion, stream observation."""

from __future__ import annotations

import base64
from typing import Any

import orjson
import pytest
from anthropic.types import Message, RawMessageStreamEvent
from hypothesis import given, settings
from hypothesis import strategies as st
from pydantic import TypeAdapter

from tokenstile import tokens
from tokenstile.errors import GatewayError
from tokenstile.providers.anthropic import AnthropicAdapter, usage_from_anthropic
from tokenstile.providers.sse import EventSplitter
from tokenstile.types import Usage

MODEL = "claude-sonnet-4-6"
PNG_B64 = base64.b64encode(b"\x89PNG\r\n\x1a\n" + bytes(range(64))).decode()

adapter = AnthropicAdapter()


def sse(name: str, payload: dict[str, Any]) -> bytes:
    return f"event: {name}\ndata: ".encode() + orjson.dumps(payload) + b"\n\n"


def request(**overrides: Any) -> dict[str, Any]:
    body: dict[str, Any] = {
        "model": MODEL,
        "max_tokens": 1024,
        "system": [{"type": "text", "text": "You are a terse weather bot.",
                    "cache_control": {"type": "ephemeral"}}],
        "metadata": {"user_id": "end-user-42"},
        "tools": [{
            "name": "get_weather",
            "description": "Current weather for a city.",
            "input_schema": {"type": "object", "properties": {"city": {"type": "string"}},
                             "required": ["city"]},
        }],
        "messages": [
            {"role": "user", "content": [
                {"type": "text", "text": "What is the weather in Paris?"},
                {"type": "image",
                 "source": {"type": "base64", "media_type": "image/png", "data": PNG_B64}},
            ]},
            {"role": "assistant", "content": [
                {"type": "text", "text": "Let me check."},
                {"type": "tool_use", "id": "toolu_01A", "name": "get_weather",
                 "input": {"city": "Paris"}},
            ]},
            {"role": "user", "content": [
                {"type": "tool_result", "tool_use_id": "toolu_01A",
                 "content": [{"type": "text", "text": "18°C and sunny"}]},
            ]},
        ],
    }
    body.update(overrides)
    return body


# --- parse --------------------------------------------------------------------------------


def test_parse_fills_the_canonical_view() -> None:
    body = request(stream=True)
    req = adapter.parse("messages", body)
    assert req.wire == "anthropic" and req.api == "messages"
    assert req.model == MODEL
    assert req.body is body
    assert req.stream is True
    assert (req.output_cap, req.output_cap_field) == (1024, "max_tokens")
    assert req.end_user == "end-user-42"
    assert req.system_text == "You are a terse weather bot."
    assert req.tags == {}
    for piece in ("What is the weather in Paris?", "Let me check.", '{"city":"Paris"}',
                  "18°C and sunny"):
        assert piece in req.input_text
    assert PNG_B64 not in req.input_text
    assert adapter.upstream_body(req) is body


def test_parse_plain_string_system_and_content() -> None:
    req = adapter.parse("messages", {"model": MODEL, "max_tokens": 5, "system": "Be brief.",
                                     "messages": [{"role": "user", "content": "Hello"}]})
    assert req.system_text == "Be brief."
    assert req.input_text == "Hello"
    assert req.end_user is None and req.stream is False


def test_max_tokens_zero_warms_the_cache() -> None:
    # Anthropic accepts 0 (fill the prompt cache, generate nothing): reserve no output.
    req = adapter.parse("messages", request(max_tokens=0))
    assert req.output_cap == 0


def test_count_tokens_has_no_output_cap() -> None:
    body = request()
    del body["max_tokens"], body["metadata"]
    req = adapter.parse("count_tokens", body)
    assert req.output_cap == 0 and req.output_cap_field is None and req.stream is False


def _msg(**fields: Any) -> dict[str, Any]:
    return {"model": MODEL, "max_tokens": 10,
            "messages": [{"role": "user", "content": "hi"}], **fields}


BAD_BODIES: list[tuple[dict[str, Any], str]] = [
    ({"max_tokens": 10, "messages": [{"role": "user", "content": "hi"}]}, "model"),
    (_msg(model=7), "model"),
    (_msg(model=""), "model"),
    ({"model": MODEL, "messages": [{"role": "user", "content": "hi"}]}, "max_tokens"),
    (_msg(max_tokens="100"), "max_tokens"),
    (_msg(max_tokens=2.5), "max_tokens"),
    (_msg(max_tokens=True), "max_tokens"),
    (_msg(max_tokens=-1), "max_tokens"),
    ({"model": MODEL, "max_tokens": 10}, "messages"),
    (_msg(messages=[]), "messages"),
    (_msg(messages="hi"), "messages"),
    (_msg(messages=["hi"]), "messages[0]"),
    (_msg(messages=[{"role": "system", "content": "x"}]), "messages[0].role"),
    (_msg(messages=[{"content": "x"}]), "messages[0].role"),
    (_msg(messages=[{"role": "user"}]), "messages[0].content"),
    (_msg(messages=[{"role": "user", "content": 5}]), "messages[0].content"),
    (_msg(messages=[{"role": "user", "content": "a"},
                    {"role": "assistant", "content": ["text"]}]), "messages[1].content[0]"),
    (_msg(messages=[{"role": "user", "content": [{"text": "no type"}]}]),
     "messages[0].content[0]"),
    (_msg(system=5), "system"),
    (_msg(system=[{"type": "image", "source": {}}]), "system[0]"),
    (_msg(system=["plain"]), "system[0]"),
    (_msg(stream="yes"), "stream"),
    (_msg(tools={"name": "x"}), "tools"),
    (_msg(tools=["x"]), "tools[0]"),
    (_msg(metadata="user-1"), "metadata"),
    (_msg(metadata={"user_id": 5}), "metadata.user_id"),
]


@pytest.mark.parametrize(("body", "param"), BAD_BODIES)
def test_parse_rejects_malformed_bodies(body: dict[str, Any], param: str) -> None:
    with pytest.raises(GatewayError) as info:
        adapter.parse("messages", body)
    err = info.value
    assert err.status == 400
    assert err.param == param
    assert err.message.startswith("tokenstile: ")
    assert param.split("[")[0].split(".")[0] in err.message
    rendered = orjson.loads(err.body("anthropic"))
    assert rendered["type"] == "error"
    assert rendered["error"]["type"] == "invalid_request_error"


def test_missing_max_tokens_explains_why() -> None:
    with pytest.raises(GatewayError) as info:
        adapter.parse("messages", {"model": MODEL, "messages": [{"role": "user", "content": "x"}]})
    assert info.value.code == "missing_required_parameter"
    assert "required" in info.value.message


# --- counting -------------------------------------------------------------------------------


def test_count_input_is_the_claude_estimate() -> None:
    body = request()
    req = adapter.parse("messages", body)
    n = adapter.count_input(req)
    assert n == tokens.count_anthropic(MODEL, body["messages"], body["system"], body["tools"])
    assert n > tokens.ANTHROPIC_TOOL_SYSTEM_TOKENS
    plain = {"model": MODEL, "max_tokens": 5,
             "messages": [{"role": "user", "content": "word " * 200}]}
    # Claude's count is scaled up from o200k so that reservations err on the safe side.
    assert adapter.count_input(adapter.parse("messages", plain)) > tokens.count_text(
        "gpt-4o", "word " * 200)


# --- usage from a response body ---------------------------------------------------------------


RESPONSE: dict[str, Any] = {
    "id": "msg_01XFDUDYJgAACzvnptvVoYEL",
    "type": "message",
    "role": "assistant",
    "model": MODEL,
    "content": [{"type": "text", "text": "Hello!"}],
    "stop_reason": "end_turn",
    "stop_sequence": None,
    "usage": {
        "input_tokens": 21,
        "cache_creation_input_tokens": 188,
        "cache_read_input_tokens": 1500,
        "cache_creation": {"ephemeral_5m_input_tokens": 188, "ephemeral_1h_input_tokens": 0},
        "output_tokens": 393,
        "service_tier": "standard",
    },
}


def test_response_fixture_is_what_the_sdk_parses() -> None:
    Message.model_validate(RESPONSE)


def test_usage_converts_cache_reads_and_writes_into_input() -> None:
    usage = adapter.usage_from_body("messages", RESPONSE)
    assert usage == Usage(input_tokens=21 + 188 + 1500, output_tokens=393,
                          cached_input_tokens=1500, cache_write_tokens=188,
                          service_tier="standard")
    assert usage.total_tokens == 21 + 188 + 1500 + 393


def test_usage_without_cache_fields_and_with_thinking() -> None:
    usage = usage_from_anthropic({"input_tokens": 10, "output_tokens": 50,
                                  "output_tokens_details": {"thinking_tokens": 30}})
    assert usage == Usage(input_tokens=10, output_tokens=50, reasoning_tokens=30)


@pytest.mark.parametrize("payload", [None, [], "text", {"type": "message"},
                                     {"usage": "lots"}])
def test_no_usage_means_none(payload: Any) -> None:
    assert adapter.usage_from_body("messages", payload) is None


def test_count_tokens_is_free() -> None:
    # Not None: None would make the gateway bill its own estimate of the input.
    assert adapter.usage_from_body("count_tokens", {"input_tokens": 2095}) == Usage()


# --- streaming -----------------------------------------------------------------------------

# One stream as Anthropic documents it: message_start with the input and cache numbers and
# an initial output count, pings, a text block, a tool_use block streamed as partial JSON,
# then message_delta with the cumulative output count and message_stop.
STREAM_EVENTS: list[tuple[str, dict[str, Any]]] = [
    ("message_start", {"type": "message_start", "message": {
        "id": "msg_014p7gG3wDgGV9EUtLvnow3U", "type": "message", "role": "assistant",
        "model": MODEL, "content": [], "stop_reason": None, "stop_sequence": None,
        "usage": {"input_tokens": 472, "cache_creation_input_tokens": 0,
                  "cache_read_input_tokens": 2048, "output_tokens": 2}}}),
    ("content_block_start", {"type": "content_block_start", "index": 0,
                             "content_block": {"type": "text", "text": ""}}),
    ("ping", {"type": "ping"}),
    ("content_block_delta", {"type": "content_block_delta", "index": 0,
                             "delta": {"type": "text_delta", "text": "Okay, let me check "}}),
    ("content_block_delta", {"type": "content_block_delta", "index": 0,
                             "delta": {"type": "text_delta", "text": "the weather."}}),
    ("content_block_stop", {"type": "content_block_stop", "index": 0}),
    ("content_block_start", {"type": "content_block_start", "index": 1, "content_block": {
        "type": "tool_use", "id": "toolu_01T1x1fJ34qAmk2tNTrN7Up6", "name": "get_weather",
        "input": {}}}),
    ("content_block_delta", {"type": "content_block_delta", "index": 1,
                             "delta": {"type": "input_json_delta", "partial_json": ""}}),
    ("content_block_delta", {"type": "content_block_delta", "index": 1,
                             "delta": {"type": "input_json_delta",
                                       "partial_json": '{"city": "San Fra'}}),
    ("ping", {"type": "ping"}),
    ("content_block_delta", {"type": "content_block_delta", "index": 1,
                             "delta": {"type": "input_json_delta",
                                       "partial_json": 'ncisco, CA"}'}}),
    ("content_block_stop", {"type": "content_block_stop", "index": 1}),
    ("message_delta", {"type": "message_delta",
                       "delta": {"stop_reason": "tool_use", "stop_sequence": None},
                       "usage": {"output_tokens": 89}}),
    ("message_stop", {"type": "message_stop"}),
]
STREAM = [sse(name, payload) for name, payload in STREAM_EVENTS]
FINAL = Usage(input_tokens=472 + 2048, output_tokens=89, cached_input_tokens=2048)


def test_stream_fixture_is_what_the_sdk_parses() -> None:
    events: TypeAdapter[Any] = TypeAdapter(RawMessageStreamEvent)
    for name, payload in STREAM_EVENTS:
        if name != "ping":  # the SDK skips pings before parsing
            events.validate_python(payload)


def test_observer_relays_every_event_and_reads_usage() -> None:
    observer = adapter.observer(adapter.parse("messages", request(stream=True)))
    assert observer.usage is None
    relayed = [observer.on_event(event) for event in STREAM]
    assert relayed == STREAM
    assert observer.usage == FINAL
    # The tool's name is generated output too.
    assert observer.output_text() == ('Okay, let me check the weather.get_weather'
                                      '{"city": "San Francisco, CA"}')


def test_observer_sees_whole_events_however_the_bytes_arrive() -> None:
    raw = b"".join(STREAM)
    for size in (1, 7, 64, len(raw)):
        observer = adapter.observer(adapter.parse("messages", request(stream=True)))
        splitter = EventSplitter()
        out = b""
        for i in range(0, len(raw), size):
            for event in splitter.feed(raw[i:i + size]):
                relayed = observer.on_event(event)
                assert relayed is not None
                out += relayed
        assert out == raw
        assert observer.usage == FINAL


def test_message_delta_may_repeat_input_and_cache_fields() -> None:
    observer = adapter.observer(adapter.parse("messages", request(stream=True)))
    observer.on_event(STREAM[0])
    # Newer API versions repeat the input side at the end (larger when server tools ran).
    observer.on_event(sse("message_delta", {
        "type": "message_delta", "delta": {"stop_reason": "end_turn", "stop_sequence": None},
        "usage": {"input_tokens": 900, "cache_creation_input_tokens": 10,
                  "cache_read_input_tokens": 2048, "output_tokens": 40}}))
    assert observer.usage == Usage(input_tokens=900 + 10 + 2048, output_tokens=40,
                                   cached_input_tokens=2048, cache_write_tokens=10)


def test_stream_cut_before_any_usage_leaves_counting_to_the_gateway() -> None:
    observer = adapter.observer(adapter.parse("messages", request(stream=True)))
    observer.on_event(sse("ping", {"type": "ping"}))
    assert observer.usage is None
    assert observer.output_text() == ""


def test_stream_cut_before_message_delta_counts_the_text_so_far() -> None:
    observer = adapter.observer(adapter.parse("messages", request(stream=True)))
    for event in STREAM[:5]:
        observer.on_event(event)
    usage = observer.usage
    assert usage is not None
    # Input is exact from message_start; output is at least what was visibly generated.
    assert usage.input_tokens == 472 + 2048 and usage.cached_input_tokens == 2048
    text = "Okay, let me check the weather."
    assert observer.output_text() == text
    assert usage.output_tokens == max(2, tokens.count_text(MODEL, text))
    assert usage.output_tokens > 2


def test_stream_cut_right_after_message_start_bills_its_numbers() -> None:
    observer = adapter.observer(adapter.parse("messages", request(stream=True)))
    observer.on_event(STREAM[0])
    assert observer.usage == Usage(input_tokens=472 + 2048, output_tokens=2,
                                   cached_input_tokens=2048)


def test_thinking_text_counts_as_output() -> None:
    observer = adapter.observer(adapter.parse("messages", request(stream=True)))
    for event in (
        STREAM[0],
        sse("content_block_start", {"type": "content_block_start", "index": 0,
                                    "content_block": {"type": "thinking", "thinking": "",
                                                      "signature": ""}}),
        sse("content_block_delta", {"type": "content_block_delta", "index": 0,
                                    "delta": {"type": "thinking_delta",
                                              "thinking": "The user wants weather. "}}),
        sse("content_block_delta", {"type": "content_block_delta", "index": 0,
                                    "delta": {"type": "signature_delta",
                                              "signature": "EqQBCgIYAhIM"}}),
    ):
        assert observer.on_event(event) == event
    assert observer.reasoning_text() == "The user wants weather. "
    assert observer.output_text() == "" and not observer.answering()
    usage = observer.usage  # cut here: the thinking is billed as output and as reasoning
    assert usage is not None and usage.output_tokens == usage.reasoning_tokens > 1


def test_error_events_and_oddities_pass_through_untouched() -> None:
    observer = adapter.observer(adapter.parse("messages", request(stream=True)))
    odd = [
        sse("error", {"type": "error",
                      "error": {"type": "overloaded_error", "message": "Overloaded"}}),
        b"event: message_delta\ndata: {not json\n\n",
        b": keep-alive comment\n\n",
        b"data: [1, 2]\n\n",
        b'event: message_start\r\ndata: {"type": "message_start", "message": 3}\r\n\r\n',
    ]
    for event in odd:
        assert observer.on_event(event) == event
    assert observer.usage is None


EVENT_NAMES = ["message_start", "message_delta", "message_stop", "content_block_start",
               "content_block_delta", "ping", "error"]
JSON = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**63), 2**63 - 1) | st.text(max_size=8),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(
        st.sampled_from(["type", "usage", "delta", "message", "text", "index", "output_tokens",
                         "input_tokens", "cache_read_input_tokens", "content_block",
                         "partial_json", "stop_reason"]), inner, max_size=4),
    max_leaves=12)


@st.composite
def odd_events(draw: st.DrawFn) -> bytes:
    name = draw(st.sampled_from(EVENT_NAMES))
    extra = draw(st.dictionaries(st.sampled_from(["usage", "delta", "message", "index",
                                                  "content_block", "error"]), JSON,
                                 max_size=3))
    return sse(name, {"type": draw(st.sampled_from([name, *EVENT_NAMES])), **extra})


@settings(max_examples=300, deadline=None)
@given(st.lists(st.one_of(st.binary(max_size=200), st.sampled_from(STREAM), odd_events()),
                max_size=12))
def test_observer_never_raises_and_never_drops(events: list[bytes]) -> None:
    observer = adapter.observer(adapter.parse("messages", request(stream=True)))
    for event in events:
        assert observer.on_event(event) == event
    usage = observer.usage
    assert usage is None or min(usage.input_tokens, usage.output_tokens) >= 0
    assert isinstance(observer.output_text(), str)
