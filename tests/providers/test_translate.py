"""OpenAI chat completions ⇄ Anthropic Messages, checked against both official SDKs."""

from __future__ import annotations

import base64
import itertools
from collections.abc import Callable, Iterator
from typing import Any, cast

import anthropic
import httpx2
import openai
import orjson
import pytest
from anthropic.types import Message, RawMessageStreamEvent
from anthropic.types.message_create_params import MessageCreateParamsNonStreaming
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from openai.lib.streaming.chat import ChatCompletionStreamState
from openai.types.chat import ChatCompletion, ChatCompletionChunk
from pydantic import TypeAdapter

from tokenstile.errors import GatewayError
from tokenstile.providers.mapping import anthropic_error_to_openai, openai_error_to_anthropic
from tokenstile.providers.sse import EventSplitter
from tokenstile.providers.translate import (
    JSON_OBJECT_INSTRUCTION,
    JSON_SCHEMA_INSTRUCTION,
    StreamTranslator,
    chat_to_messages,
    message_to_chat,
)
from tokenstile.types import Usage

MODEL = "claude-sonnet-4-6"
PNG = base64.b64encode(b"\x89PNG\r\n\x1a\n" + bytes(range(48))).decode()

_MESSAGE_PARAMS = TypeAdapter(MessageCreateParamsNonStreaming)
_ANTHROPIC_FIELDS = frozenset(MessageCreateParamsNonStreaming.__annotations__) | {"stream"}


def _force(value: Any) -> Any:
    """pydantic validates ``Iterable`` fields lazily; walk them so every block is checked."""
    if type(value).__name__ == "ValidatorIterator":
        return [_force(item) for item in value]
    if isinstance(value, dict):
        return {key: _force(item) for key, item in value.items()}
    if isinstance(value, list):
        return [_force(item) for item in value]
    return value


def assert_valid_anthropic_request(body: dict[str, Any]) -> None:
    """What the anthropic SDK would send: its request TypedDicts, and no unknown fields."""
    assert set(body) <= _ANTHROPIC_FIELDS, set(body) - _ANTHROPIC_FIELDS
    _force(_MESSAGE_PARAMS.validate_python({k: v for k, v in body.items() if k != "stream"}))
    roles = [m["role"] for m in body["messages"]]
    assert all(a != b for a, b in itertools.pairwise(roles)), roles


WEATHER_TOOL: dict[str, Any] = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "Current weather for a city.",
        "parameters": {"type": "object", "properties": {"city": {"type": "string"}},
                       "required": ["city"]},
    },
}
TIME_TOOL: dict[str, Any] = {"type": "function", "function": {"name": "get_time"}}

CHAT_REQUEST: dict[str, Any] = {
    "model": MODEL,
    "messages": [
        {"role": "system", "content": "You are a travel assistant."},
        {"role": "developer", "content": [{"type": "text", "text": "Answer in English."}]},
        {"role": "user", "content": [
            {"type": "text", "text": "Where was this taken, and what's the weather there?"},
            {"type": "image_url",
             "image_url": {"url": f"data:image/png;base64,{PNG}", "detail": "high"}},
            {"type": "image_url", "image_url": {"url": "https://example.com/eiffel.jpg"}},
        ]},
        {"role": "assistant", "content": "That is Paris. Checking weather and time.",
         "tool_calls": [
             {"id": "call_w", "type": "function",
              "function": {"name": "get_weather", "arguments": '{"city": "Paris"}'}},
             {"id": "call_t", "type": "function",
              "function": {"name": "get_time", "arguments": ""}},
         ]},
        {"role": "tool", "tool_call_id": "call_w", "content": "18°C, sunny"},
        {"role": "tool", "tool_call_id": "call_t",
         "content": [{"type": "text", "text": "14:05 CET"}]},
        {"role": "user", "content": "Thanks! Should I bring an umbrella?"},
    ],
    "tools": [WEATHER_TOOL, TIME_TOOL],
    "tool_choice": "auto",
    "max_completion_tokens": 800,
    "temperature": 0.3,
    "top_p": 0.9,
    "stop": ["\n\nUser:"],
    "user": "end-user-7",
    "stream": True,
    "stream_options": {"include_usage": True},
    "seed": 42,
    "metadata": {"feature": "travel"},
}

EXPECTED_MESSAGES: dict[str, Any] = {
    "model": MODEL,
    "max_tokens": 800,
    "system": "You are a travel assistant.\n\nAnswer in English.",
    "messages": [
        {"role": "user", "content": [
            {"type": "text", "text": "Where was this taken, and what's the weather there?"},
            {"type": "image",
             "source": {"type": "base64", "media_type": "image/png", "data": PNG}},
            {"type": "image",
             "source": {"type": "url", "url": "https://example.com/eiffel.jpg"}},
        ]},
        {"role": "assistant", "content": [
            {"type": "text", "text": "That is Paris. Checking weather and time."},
            {"type": "tool_use", "id": "call_w", "name": "get_weather",
             "input": {"city": "Paris"}},
            {"type": "tool_use", "id": "call_t", "name": "get_time", "input": {}},
        ]},
        {"role": "user", "content": [
            {"type": "tool_result", "tool_use_id": "call_w", "content": "18°C, sunny"},
            {"type": "tool_result", "tool_use_id": "call_t", "content": "14:05 CET"},
            {"type": "text", "text": "Thanks! Should I bring an umbrella?"},
        ]},
    ],
    "tools": [
        {"name": "get_weather", "description": "Current weather for a city.",
         "input_schema": {"type": "object", "properties": {"city": {"type": "string"}},
                          "required": ["city"]}},
        {"name": "get_time", "input_schema": {"type": "object", "properties": {}}},
    ],
    "tool_choice": {"type": "auto"},
    "stop_sequences": ["\n\nUser:"],
    "metadata": {"user_id": "end-user-7"},
    "stream": True,
}


def user(text: str = "hi") -> dict[str, Any]:
    return {"role": "user", "content": text}


def chat(*messages: dict[str, Any], **fields: Any) -> dict[str, Any]:
    return {"model": MODEL, "messages": list(messages) or [user()], **fields}


# --- requests -------------------------------------------------------------------------------


def test_realistic_request_translates_field_by_field() -> None:
    out = chat_to_messages(CHAT_REQUEST)
    assert out == EXPECTED_MESSAGES
    assert_valid_anthropic_request(out)


def test_translation_does_not_mutate_the_request() -> None:
    before = orjson.dumps(CHAT_REQUEST)
    chat_to_messages(CHAT_REQUEST)
    assert orjson.dumps(CHAT_REQUEST) == before


def test_consecutive_turns_of_one_role_are_merged() -> None:
    out = chat_to_messages(chat(
        user("first"),
        {"role": "system", "content": "mid-conversation system text"},
        user("second"),
        {"role": "assistant", "content": "a1"},
        {"role": "assistant", "content": [{"type": "text", "text": "a2"}]},
        {"role": "user", "content": "   "},  # whitespace only: dropped, Anthropic rejects it
        {"role": "assistant", "content": None, "tool_calls": [
            {"id": "c1", "type": "function", "function": {"name": "f", "arguments": "{}"}}]},
        user("question after the call"),
        {"role": "tool", "tool_call_id": "c1", "content": "result"},
    ))
    assert out["system"] == "mid-conversation system text"
    assert out["messages"] == [
        {"role": "user", "content": [{"type": "text", "text": "first"},
                                     {"type": "text", "text": "second"}]},
        {"role": "assistant", "content": [
            {"type": "text", "text": "a1"}, {"type": "text", "text": "a2"},
            {"type": "tool_use", "id": "c1", "name": "f", "input": {}}]},
        # Tool results open the user turn even when the client put text first.
        {"role": "user", "content": [
            {"type": "tool_result", "tool_use_id": "c1", "content": "result"},
            {"type": "text", "text": "question after the call"}]},
    ]
    assert_valid_anthropic_request(out)


def test_prefilled_final_assistant_turn_loses_trailing_whitespace() -> None:
    out = chat_to_messages(chat(user("JSON please"),
                                {"role": "assistant", "content": "{\n  "}))
    assert out["messages"][-1] == {"role": "assistant", "content": "{"}


@pytest.mark.parametrize(("arguments", "expected"), [
    ('{"a": 1}', {"a": 1}),
    ("", {}),
    (None, {}),
    ({"already": "parsed"}, {"already": "parsed"}),
    ('{"a": 1', {"_raw": '{"a": 1'}),
    ("[1, 2]", {"_raw": "[1, 2]"}),
    ("not json", {"_raw": "not json"}),
])
def test_tool_call_arguments(arguments: Any, expected: dict[str, Any]) -> None:
    out = chat_to_messages(chat(user(), {"role": "assistant", "tool_calls": [
        {"id": "c", "type": "function", "function": {"name": "f", "arguments": arguments}}]}))
    assert out["messages"][1]["content"][0]["input"] == expected


@pytest.mark.parametrize(("choice", "parallel", "expected"), [
    ("auto", None, {"type": "auto"}),
    ("none", None, {"type": "none"}),
    ("required", None, {"type": "any"}),
    ({"type": "function", "function": {"name": "get_weather"}}, None,
     {"type": "tool", "name": "get_weather"}),
    (None, None, None),
    (None, False, {"type": "auto", "disable_parallel_tool_use": True}),
    ("required", False, {"type": "any", "disable_parallel_tool_use": True}),
    ("none", False, {"type": "none"}),
    ("auto", True, {"type": "auto"}),
])
def test_tool_choice(choice: Any, parallel: bool | None, expected: dict[str, Any] | None
                     ) -> None:
    body = chat(tools=[WEATHER_TOOL], tool_choice=choice, parallel_tool_calls=parallel)
    out = chat_to_messages(body)
    assert out.get("tool_choice") == expected
    assert_valid_anthropic_request(out)


def test_tool_choice_without_tools_is_dropped() -> None:
    assert "tool_choice" not in chat_to_messages(chat(tool_choice="auto"))


def test_strict_tools_and_schemas_without_type() -> None:
    tool = {"type": "function", "function": {"name": "f", "strict": True,
                                             "parameters": {"properties": {}}}}
    out = chat_to_messages(chat(tools=[tool]))
    assert out["tools"] == [{"name": "f", "strict": True,
                             "input_schema": {"type": "object", "properties": {}}}]


@pytest.mark.parametrize(("fields", "expected"), [
    ({}, 4096),
    ({"max_tokens": 100}, 100),
    ({"max_completion_tokens": 200}, 200),
    ({"max_tokens": 100, "max_completion_tokens": 200}, 200),
])
def test_output_cap(fields: dict[str, Any], expected: int) -> None:
    assert chat_to_messages(chat(**fields))["max_tokens"] == expected


def test_default_output_cap_is_the_callers() -> None:
    assert chat_to_messages(chat(), default_max_tokens=1000)["max_tokens"] == 1000


def test_attribution_and_stop_fields() -> None:
    out = chat_to_messages(chat(stop="END", safety_identifier="u-1", stream=False, n=1))
    assert out["stop_sequences"] == ["END"]
    assert out["metadata"] == {"user_id": "u-1"}
    assert "stream" not in out
    assert_valid_anthropic_request(out)


def test_sampling_knobs_are_dropped_unless_asked_for() -> None:
    # Current Claude models refuse non-default sampling values; OpenAI clients send them.
    body = chat(temperature=1.7, top_p=0.9, top_k=40)
    out = chat_to_messages(body)
    assert not {"temperature", "top_p", "top_k"} & set(out)
    assert_valid_anthropic_request(out)
    forwarded = chat_to_messages(body, sampling=True)
    # OpenAI's 0..2 is clamped to Anthropic's 0..1, so the shared default 1 keeps its meaning.
    assert (forwarded["temperature"], forwarded["top_p"], forwarded["top_k"]) == (1.0, 0.9, 40)
    assert chat_to_messages(chat(temperature=0), sampling=True)["temperature"] == 0.0


def test_openai_only_fields_are_dropped() -> None:
    out = chat_to_messages(chat(seed=1, frequency_penalty=0.5, presence_penalty=0.5,
                                logit_bias={"50256": -100}, store=True, service_tier="auto",
                                reasoning_effort="low", stream_options={"include_usage": True},
                                metadata={"k": "v"}, logprobs=False, modalities=["text"]))
    assert set(out) == {"model", "max_tokens", "messages"}


def test_response_format_json_schema_is_native_structured_output() -> None:
    schema = {"type": "object", "properties": {"answer": {"type": "string"}},
              "required": ["answer"], "additionalProperties": False}
    body = chat(response_format={"type": "json_schema",
                                 "json_schema": {"name": "a", "schema": schema,
                                                 "strict": True}})
    out = chat_to_messages(body)
    assert out["output_config"] == {"format": {"type": "json_schema", "schema": schema}}
    assert "system" not in out
    assert_valid_anthropic_request(out)
    fallback = chat_to_messages(body, structured_outputs=False)
    assert "output_config" not in fallback
    assert fallback["system"].startswith(JSON_SCHEMA_INSTRUCTION)
    assert '"answer"' in fallback["system"]


def test_response_format_json_object_is_an_instruction() -> None:
    out = chat_to_messages(chat({"role": "system", "content": "Be helpful."}, user(),
                                response_format={"type": "json_object"}))
    assert out["system"] == "Be helpful.\n\n" + JSON_OBJECT_INSTRUCTION
    plain = chat_to_messages(chat(response_format={"type": "text"}))
    assert "system" not in plain


def test_pdf_files_become_documents() -> None:
    pdf = base64.b64encode(b"%PDF-1.4 ...").decode()
    out = chat_to_messages(chat({"role": "user", "content": [
        {"type": "file", "file": {"filename": "a.pdf",
                                  "file_data": f"data:application/pdf;base64,{pdf}"}},
        {"type": "text", "text": "Summarise"}]}))
    assert out["messages"][0]["content"][0] == {
        "type": "document",
        "source": {"type": "base64", "media_type": "application/pdf", "data": pdf}}
    assert_valid_anthropic_request(out)


BAD_REQUESTS: list[tuple[dict[str, Any], str]] = [
    ({"messages": [user()]}, "model"),
    (chat(n=2), "n"),
    (chat(n=0), "n"),
    (chat(logprobs=True), "logprobs"),
    (chat(top_logprobs=3), "logprobs"),
    (chat(modalities=["text", "audio"]), "modalities"),
    (chat(audio={"voice": "alloy", "format": "wav"}), "audio"),
    (chat(functions=[{"name": "f"}]), "functions"),
    (chat(function_call="auto"), "function_call"),
    (chat(web_search_options={}), "web_search_options"),
    ({"model": MODEL}, "messages"),
    (chat(messages=[]), "messages"),
    (chat({"role": "system", "content": "only a system prompt"}), "messages"),
    (chat(cast(Any, "hello")), "messages[0]"),
    (chat({"role": "function", "name": "f", "content": "x"}), "messages[0].role"),
    (chat({"role": "user", "content": 5}), "messages[0].content"),
    (chat({"role": "user", "content": [{"type": "input_audio", "input_audio": {}}]}),
     "messages[0].content[0]"),
    (chat({"role": "user", "content": [{"type": "image_url",
                                        "image_url": {"url": "data:image/bmp;base64,AAAA"}}]}),
     "messages[0].content[0].image_url"),
    (chat({"role": "user", "content": [{"type": "image_url",
                                        "image_url": {"url": "data:image/png,rawbytes"}}]}),
     "messages[0].content[0].image_url"),
    (chat({"role": "user", "content": [{"type": "image_url",
                                        "image_url": {"url": "ftp://host/a.png"}}]}),
     "messages[0].content[0].image_url"),
    (chat({"role": "user", "content": [{"type": "file", "file": {"file_id": "file-1"}}]}),
     "messages[0].content[0].file"),
    (chat(user(), {"role": "assistant", "content": [{"type": "image_url", "image_url": {
        "url": "https://x/y.png"}}]}), "messages[1].content[0]"),
    (chat(user(), {"role": "assistant", "tool_calls": [{"type": "function",
                                                        "function": {"name": "f"}}]}),
     "messages[1].tool_calls[0].id"),
    (chat(user(), {"role": "assistant", "tool_calls": "x"}), "messages[1].tool_calls"),
    (chat(user(), {"role": "tool", "content": "x"}), "messages[1].tool_call_id"),
    (chat(tools=[{"type": "custom", "custom": {"name": "grammar"}}]), "tools[0].type"),
    (chat(tools=[{"type": "function", "function": {}}]), "tools[0].function"),
    (chat(tools=[{"type": "function", "function": {"name": "f", "parameters": {
        "type": "array"}}}]), "tools[0].function.parameters"),
    (chat(tools=[WEATHER_TOOL], tool_choice="sometimes"), "tool_choice"),
    (chat(tools=[WEATHER_TOOL], tool_choice={"type": "function"}), "tool_choice"),
    (chat(tools=[WEATHER_TOOL], parallel_tool_calls="no"), "parallel_tool_calls"),
    (chat(temperature=3), "temperature"),
    (chat(temperature="hot"), "temperature"),
    (chat(top_p=1.5), "top_p"),
    (chat(top_k=-1), "top_k"),
    (chat(stop=[1]), "stop"),
    (chat(user=5), "user"),
    (chat(max_tokens=0), "max_tokens"),
    (chat(max_completion_tokens="many"), "max_completion_tokens"),
    (chat(response_format={"type": "json_schema", "json_schema": {"name": "x"}}),
     "response_format"),
    (chat(response_format={"type": "grammar"}), "response_format"),
    (chat(stream="yes"), "stream"),
]


@pytest.mark.parametrize(("body", "param"), BAD_REQUESTS)
def test_untranslatable_requests_are_clear_400s(body: dict[str, Any], param: str) -> None:
    with pytest.raises(GatewayError) as info:
        chat_to_messages(body)
    assert info.value.status == 400
    assert info.value.param == param
    assert info.value.message.startswith("tokenstile: ")


def test_n_error_says_what_to_do() -> None:
    with pytest.raises(GatewayError, match="one choice per request"):
        chat_to_messages(chat(n=3))


# --- responses -----------------------------------------------------------------------------

TOOL_RESPONSE: dict[str, Any] = {
    "id": "msg_01Aq9w938a90dw8q",
    "type": "message",
    "role": "assistant",
    "model": MODEL,
    "content": [
        {"type": "thinking", "thinking": "Need the weather.", "signature": "EqQBCgIYAhIM"},
        {"type": "text", "text": "I'll check both cities."},
        {"type": "tool_use", "id": "toolu_01A", "name": "get_weather",
         "input": {"city": "Paris"}},
        {"type": "tool_use", "id": "toolu_01B", "name": "get_weather",
         "input": {"city": "Oslo, Norway"}},
    ],
    "stop_reason": "tool_use",
    "stop_sequence": None,
    "usage": {"input_tokens": 120, "cache_creation_input_tokens": 30,
              "cache_read_input_tokens": 1000, "output_tokens": 77,
              "output_tokens_details": {"thinking_tokens": 12}},
}


def test_response_with_tool_calls() -> None:
    Message.model_validate(TOOL_RESPONSE)
    out = message_to_chat(TOOL_RESPONSE, "claude-latest", created=1_700_000_000)
    parsed = ChatCompletion.model_validate(out)
    assert parsed.id == "chatcmpl-01Aq9w938a90dw8q"
    assert parsed.object == "chat.completion"
    assert parsed.created == 1_700_000_000
    assert parsed.model == "claude-latest"
    choice = parsed.choices[0]
    assert choice.finish_reason == "tool_calls"
    assert choice.message.role == "assistant"
    assert choice.message.content == "I'll check both cities."
    calls = choice.message.tool_calls or []
    assert [(c.id, c.function.name, orjson.loads(c.function.arguments))  # type: ignore[union-attr]
            for c in calls] == [("toolu_01A", "get_weather", {"city": "Paris"}),
                                ("toolu_01B", "get_weather", {"city": "Oslo, Norway"})]
    usage = parsed.usage
    assert usage is not None
    assert (usage.prompt_tokens, usage.completion_tokens, usage.total_tokens) == (
        1150, 77, 1227)
    assert usage.prompt_tokens_details is not None
    assert usage.prompt_tokens_details.cached_tokens == 1000
    assert usage.completion_tokens_details is not None
    assert usage.completion_tokens_details.reasoning_tokens == 12


@pytest.mark.parametrize(("stop_reason", "finish"), [
    ("end_turn", "stop"),
    ("stop_sequence", "stop"),
    ("max_tokens", "length"),
    ("model_context_window_exceeded", "length"),
    ("tool_use", "tool_calls"),
    ("refusal", "content_filter"),
    ("pause_turn", "stop"),
    (None, "stop"),
    ("something_new", "stop"),
])
def test_stop_reasons(stop_reason: str | None, finish: str) -> None:
    resp = {**TOOL_RESPONSE, "content": [{"type": "text", "text": "Hi"}],
            "stop_reason": stop_reason}
    out = message_to_chat(resp, MODEL)
    assert ChatCompletion.model_validate(out).choices[0].finish_reason == finish


def test_response_without_text_has_null_content() -> None:
    out = message_to_chat({**TOOL_RESPONSE, "content": TOOL_RESPONSE["content"][2:]}, MODEL)
    assert out["choices"][0]["message"]["content"] is None
    ChatCompletion.model_validate(out)


@settings(max_examples=300, deadline=None)
@given(st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=6),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(
        st.sampled_from(["id", "type", "content", "text", "input", "name", "usage",
                         "stop_reason", "input_tokens", "output_tokens"]), inner, max_size=5),
    max_leaves=30))
def test_response_translation_never_raises(resp: Any) -> None:
    out = message_to_chat(resp, MODEL, created=1)
    ChatCompletion.model_validate(out)


# --- streams -------------------------------------------------------------------------------


def sse(name: str, payload: dict[str, Any]) -> bytes:
    return f"event: {name}\ndata: ".encode() + orjson.dumps(payload) + b"\n\n"


def _start(usage: dict[str, Any]) -> bytes:
    return sse("message_start", {"type": "message_start", "message": {
        "id": "msg_01Stream", "type": "message", "role": "assistant", "model": MODEL,
        "content": [], "stop_reason": None, "stop_sequence": None, "usage": usage}})


def _delta(index: int, kind: str, key: str, value: str) -> bytes:
    return sse("content_block_delta", {"type": "content_block_delta", "index": index,
                                       "delta": {"type": kind, key: value}})


ANTHROPIC_STREAM = [
    _start({"input_tokens": 300, "cache_creation_input_tokens": 50,
            "cache_read_input_tokens": 1200, "output_tokens": 1}),
    sse("content_block_start", {"type": "content_block_start", "index": 0, "content_block": {
        "type": "thinking", "thinking": "", "signature": ""}}),
    _delta(0, "thinking_delta", "thinking", "Weather lookup needed."),
    _delta(0, "signature_delta", "signature", "EqQBCgIYAhIM"),
    sse("content_block_stop", {"type": "content_block_stop", "index": 0}),
    sse("content_block_start", {"type": "content_block_start", "index": 1,
                                "content_block": {"type": "text", "text": ""}}),
    sse("ping", {"type": "ping"}),
    _delta(1, "text_delta", "text", "Let me "),
    _delta(1, "text_delta", "text", "check."),
    sse("content_block_stop", {"type": "content_block_stop", "index": 1}),
    sse("content_block_start", {"type": "content_block_start", "index": 2, "content_block": {
        "type": "tool_use", "id": "toolu_01W", "name": "get_weather", "input": {}}}),
    _delta(2, "input_json_delta", "partial_json", ""),
    _delta(2, "input_json_delta", "partial_json", '{"city": '),
    _delta(2, "input_json_delta", "partial_json", '"Paris"}'),
    sse("content_block_stop", {"type": "content_block_stop", "index": 2}),
    sse("content_block_start", {"type": "content_block_start", "index": 3, "content_block": {
        "type": "tool_use", "id": "toolu_01T", "name": "get_time", "input": {}}}),
    _delta(3, "input_json_delta", "partial_json", "{}"),
    sse("content_block_stop", {"type": "content_block_stop", "index": 3}),
    sse("message_delta", {"type": "message_delta",
                          "delta": {"stop_reason": "tool_use", "stop_sequence": None},
                          "usage": {"output_tokens": 64}}),
    sse("message_stop", {"type": "message_stop"}),
]
STREAM_USAGE = Usage(input_tokens=1550, output_tokens=64, cached_input_tokens=1200,
                     cache_write_tokens=50)


def test_stream_fixture_is_what_the_anthropic_sdk_parses() -> None:
    events: TypeAdapter[Any] = TypeAdapter(RawMessageStreamEvent)
    for event in ANTHROPIC_STREAM:
        name = event.split(b"\n", 1)[0]
        if name != b"event: ping":
            events.validate_python(orjson.loads(event.split(b"data: ", 1)[1]))


def _translate(events: list[bytes], include_usage: bool) -> tuple[StreamTranslator, bytes]:
    translator = StreamTranslator("claude-latest", include_usage=include_usage, created=7)
    out = b"".join(piece for event in events
                   if (piece := translator.on_event(event)) is not None)
    return translator, out


def _chunks(raw: bytes) -> Iterator[ChatCompletionChunk]:
    for event in EventSplitter().feed(raw):
        assert event.startswith(b"data: ") and event.endswith(b"\n\n")
        data = event[6:-2]
        if data == b"[DONE]":
            return
        yield ChatCompletionChunk.model_validate(orjson.loads(data))


@pytest.mark.parametrize("include_usage", [True, False])
def test_stream_translation_is_what_the_openai_sdk_parses(include_usage: bool) -> None:
    translator, raw = _translate(ANTHROPIC_STREAM, include_usage)
    assert raw.endswith(b"data: [DONE]\n\n") and raw.count(b"[DONE]") == 1
    chunks = list(_chunks(raw))
    assert {c.id for c in chunks} == {"chatcmpl-01Stream"}
    assert {c.model for c in chunks} == {"claude-latest"}
    assert chunks[0].choices[0].delta.role == "assistant"
    state = ChatCompletionStreamState()
    for chunk in chunks:
        state.handle_chunk(chunk)
    final = state.get_final_completion()
    choice = final.choices[0]
    assert choice.message.content == "Let me check."
    assert choice.finish_reason == "tool_calls"
    calls = choice.message.tool_calls or []
    assert [(c.id, c.function.name, c.function.arguments) for c in calls] == [
        ("toolu_01W", "get_weather", '{"city": "Paris"}'), ("toolu_01T", "get_time", "{}")]
    if include_usage:
        assert chunks[-1].choices == []
        assert final.usage is not None
        assert (final.usage.prompt_tokens, final.usage.completion_tokens) == (1550, 64)
    else:
        assert all(c.usage is None for c in chunks)
    # Usage is tracked whether or not the client sees it.
    assert translator.usage == STREAM_USAGE
    assert translator.reasoning_text() == "Weather lookup needed."
    assert translator.output_text() == 'Let me check.get_weather{"city": "Paris"}get_time{}'


def _openai_client(handler: Callable[[httpx2.Request], httpx2.Response]) -> openai.OpenAI:
    return openai.OpenAI(api_key="ts-test", base_url="http://gateway.test/v1", max_retries=0,
                         http_client=httpx2.Client(transport=httpx2.MockTransport(handler)))


def test_openai_sdk_streams_the_translation_end_to_end() -> None:
    seen: list[dict[str, Any]] = []

    def handler(request: httpx2.Request) -> httpx2.Response:
        body = orjson.loads(request.content)
        seen.append(chat_to_messages(body))
        translator = StreamTranslator.for_request(body, body["model"])
        raw = b"".join(translator.feed(event) for event in ANTHROPIC_STREAM)
        return httpx2.Response(200, headers={"content-type": "text/event-stream"},
                               content=raw)

    client = _openai_client(handler)
    with client.chat.completions.stream(
        model=MODEL, messages=CHAT_REQUEST["messages"], tools=cast(Any, [WEATHER_TOOL, TIME_TOOL]),
        stream_options={"include_usage": True},
    ) as stream:
        for _ in stream:
            pass
        final = stream.get_final_completion()
    assert final.choices[0].message.content == "Let me check."
    assert final.usage is not None and final.usage.total_tokens == 1614
    calls = final.choices[0].message.tool_calls or []
    assert [c.function.arguments for c in calls] == ['{"city": "Paris"}', "{}"]
    # What the SDK actually sent translates into a valid streaming Anthropic request.
    assert seen[0]["stream"] is True
    assert seen[0]["messages"] == EXPECTED_MESSAGES["messages"]
    assert_valid_anthropic_request(seen[0])


def test_openai_sdk_reads_a_translated_response_end_to_end() -> None:
    def handler(request: httpx2.Request) -> httpx2.Response:
        return httpx2.Response(200, json=message_to_chat(TOOL_RESPONSE, MODEL))

    completion = _openai_client(handler).chat.completions.create(
        model=MODEL, messages=[{"role": "user", "content": "weather?"}])
    assert completion.choices[0].finish_reason == "tool_calls"
    assert completion.usage is not None and completion.usage.prompt_tokens == 1150


def test_text_only_stream_ends_with_stop() -> None:
    translator, raw = _translate([
        _start({"input_tokens": 10, "output_tokens": 1}),
        sse("content_block_start", {"type": "content_block_start", "index": 0,
                                    "content_block": {"type": "text", "text": ""}}),
        _delta(0, "text_delta", "text", "Hello"),
        sse("message_delta", {"type": "message_delta",
                              "delta": {"stop_reason": "end_turn", "stop_sequence": None},
                              "usage": {"output_tokens": 2}}),
        sse("message_stop", {"type": "message_stop"}),
    ], include_usage=False)
    chunks = list(_chunks(raw))
    assert [c.choices[0].delta.content for c in chunks] == ["", "Hello", None]
    assert chunks[-1].choices[0].finish_reason == "stop"
    assert translator.usage == Usage(input_tokens=10, output_tokens=2)


def test_stream_error_event_becomes_an_openai_error_the_sdk_raises() -> None:
    events = [*ANTHROPIC_STREAM[:8], sse("error", {
        "type": "error", "error": {"type": "overloaded_error", "message": "Overloaded"}})]
    _, raw = _translate(events, include_usage=True)
    last = raw.rsplit(b"\n\n", 2)[-2]
    assert orjson.loads(last[6:]) == {"error": {
        "message": "Overloaded", "type": "server_error", "param": None,
        "code": "overloaded_error"}}
    assert b"[DONE]" not in raw

    def handler(request: httpx2.Request) -> httpx2.Response:
        return httpx2.Response(200, headers={"content-type": "text/event-stream"},
                               content=raw)

    stream = _openai_client(handler).chat.completions.create(
        model=MODEL, messages=[{"role": "user", "content": "x"}], stream=True)
    with pytest.raises(openai.APIError, match="Overloaded"):
        for _ in stream:
            pass


def test_stream_cut_before_any_usage_reports_none() -> None:
    translator = StreamTranslator(MODEL)
    assert translator.on_event(sse("ping", {"type": "ping"})) is None
    assert translator.usage is None


def test_stream_cut_mid_message_counts_the_text() -> None:
    translator, _ = _translate(ANTHROPIC_STREAM[:9], include_usage=True)
    usage = translator.usage
    assert usage is not None
    assert usage.input_tokens == 1550 and usage.output_tokens > 1


@settings(max_examples=300, deadline=None)
@given(st.lists(st.one_of(st.binary(max_size=120), st.sampled_from(ANTHROPIC_STREAM)),
                max_size=25), st.booleans())
def test_stream_translation_never_raises_and_always_parses(events: list[bytes],
                                                           include_usage: bool) -> None:
    translator, raw = _translate(events, include_usage)
    for event in EventSplitter().feed(raw):
        data = event[6:-2]
        if data != b"[DONE]":
            payload = orjson.loads(data)
            if "error" not in payload:
                ChatCompletionChunk.model_validate(payload)
    translator.output_text()
    usage = translator.usage
    assert usage is None or usage.total_tokens >= 0


# --- errors --------------------------------------------------------------------------------


def test_anthropic_errors_read_as_openai_errors() -> None:
    body = orjson.dumps({"type": "error", "error": {"type": "rate_limit_error",
                                                   "message": "Number of requests exceeded"}})
    translated = anthropic_error_to_openai(429, body)
    assert orjson.loads(translated) == {"error": {
        "message": "Number of requests exceeded", "type": "rate_limit_exceeded",
        "param": None, "code": "rate_limit_error"}}

    def handler(request: httpx2.Request) -> httpx2.Response:
        return httpx2.Response(429, content=translated,
                               headers={"content-type": "application/json"})

    with pytest.raises(openai.RateLimitError, match="Number of requests exceeded"):
        _openai_client(handler).chat.completions.create(
            model=MODEL, messages=[{"role": "user", "content": "hi"}])


def test_unparseable_upstream_errors_still_read_as_errors() -> None:
    out = orjson.loads(anthropic_error_to_openai(502, b"<html>Bad Gateway</html>"))
    assert out["error"]["type"] == "server_error"
    assert "502" in out["error"]["message"] and "Bad Gateway" in out["error"]["message"]
    out = orjson.loads(openai_error_to_anthropic(500, b""))
    assert out == {"type": "error", "error": {"type": "api_error",
                                              "message": "the upstream answered 500"}}


def test_openai_errors_read_as_anthropic_errors() -> None:
    body = orjson.dumps({"error": {"message": "Incorrect API key provided",
                                   "type": "invalid_request_error", "param": None,
                                   "code": "invalid_api_key"}})
    translated = openai_error_to_anthropic(401, body)
    assert orjson.loads(translated) == {"type": "error", "error": {
        "type": "authentication_error", "message": "Incorrect API key provided"}}

    def handler(request: httpx2.Request) -> httpx2.Response:
        return httpx2.Response(401, content=translated,
                               headers={"content-type": "application/json"})

    client = anthropic.Anthropic(
        api_key="ts-test", base_url="http://gateway.test", max_retries=0,
        http_client=httpx2.Client(transport=httpx2.MockTransport(handler)))
    with pytest.raises(anthropic.AuthenticationError, match="Incorrect API key"):
        client.messages.create(model=MODEL, max_tokens=5,
                               messages=[{"role": "user", "content": "hi"}])


# --- property: any JSON-like body either translates validly or is a GatewayError --------------

_LEAF = (st.none() | st.booleans() | st.integers(-(2**63), 2**63 - 1)
         | st.floats(allow_nan=False, allow_infinity=False) | st.text(max_size=8))
_JSON = st.recursive(_LEAF, lambda inner: st.lists(inner, max_size=4)
                     | st.dictionaries(st.text(max_size=6), inner, max_size=4), max_leaves=20)


def _pick(noisy: bool, *values: Any) -> st.SearchStrategy[Any]:
    """One of ``values``; in noisy bodies, sometimes arbitrary JSON instead."""
    return st.one_of(st.sampled_from(values), _JSON) if noisy else st.sampled_from(values)


def _chat_bodies(noisy: bool) -> st.SearchStrategy[dict[str, Any]]:
    text = st.text(max_size=10)
    part = st.fixed_dictionaries({"type": _pick(noisy, "text", "image_url", "file")}, optional={
        "text": _pick(noisy, "hello", " ", "x y"),
        "image_url": _pick(noisy, {"url": f"data:image/png;base64,{PNG}"},
                           {"url": "https://x.test/a.png"}, {"url": "data:,x"}),
        "file": _pick(noisy, {"file_data": "data:application/pdf;base64,AAAA"}),
    })
    tool_call = st.fixed_dictionaries({
        "id": _pick(noisy, "call_1", "call_2"),
        "type": st.just("function"),
        "function": st.fixed_dictionaries({"name": _pick(noisy, "f", "g")}, optional={
            "arguments": _pick(noisy, '{"a": 1}', "{", "", "[1]")}),
    })
    roles = ("system", "developer", "user", "assistant", "tool")
    message = st.fixed_dictionaries({"role": _pick(noisy, *roles)}, optional={
        "content": st.one_of(text, st.lists(part, max_size=3)),
        "tool_calls": st.lists(tool_call, max_size=2),
        "tool_call_id": _pick(noisy, "call_1", "call_2"),
    })
    return st.fixed_dictionaries({
        "model": _pick(noisy, MODEL),
        "messages": st.lists(message, min_size=1, max_size=6),
    }, optional={
        "tools": st.lists(st.sampled_from([WEATHER_TOOL, TIME_TOOL]), max_size=2),
        "tool_choice": _pick(noisy, "auto", "none", "required",
                             {"type": "function", "function": {"name": "get_time"}}),
        "parallel_tool_calls": _pick(noisy, False, True),
        "max_tokens": _pick(noisy, 1, 100),
        "max_completion_tokens": _pick(noisy, 1, 100),
        "temperature": _pick(noisy, 0, 0.5, 1.5),
        "top_p": _pick(noisy, 0.1, 1),
        "stop": _pick(noisy, "x", ["a", "b"]),
        "user": _pick(noisy, "u"),
        "n": _pick(noisy, 1),
        "stream": _pick(noisy, True, False),
        "response_format": _pick(noisy, {"type": "json_object"}, {"type": "text"},
                                 {"type": "json_schema", "json_schema": {
                                     "name": "s", "schema": {"type": "object"}}}),
        "seed": _JSON,
    })


@settings(max_examples=600, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.one_of(_chat_bodies(noisy=False), _chat_bodies(noisy=True), _JSON), st.booleans())
def test_request_translation_is_valid_or_a_gateway_error(body: Any, sampling: bool) -> None:
    try:
        out = chat_to_messages(body, sampling=sampling)
    except GatewayError as err:
        assert err.status == 400 and err.message.startswith("tokenstile: ")
        return
    if sampling:  # forwarded on request, for older models; current SDK types lack them
        out = {k: v for k, v in out.items() if k not in ("temperature", "top_p", "top_k")}
    assert_valid_anthropic_request(out)
