"""Usage beyond text tokens, read from every answer shape: audio, 1-hour cache writes,
searches and the service tier, from OpenAI chat and Responses and from Anthropic, whole and
streamed; and what a request body says it may be billed for (``PriceTerms``)."""

from __future__ import annotations

from typing import Any

import orjson
import pytest

from tokenstile.providers.anthropic import AnthropicAdapter, usage_from_anthropic
from tokenstile.providers.openai import OpenAIAdapter
from tokenstile.providers.terms import price_terms
from tokenstile.providers.translate import ChatOverMessages
from tokenstile.types import PriceTerms, Usage

openai_adapter = OpenAIAdapter()
anthropic_adapter = AnthropicAdapter()


def data(payload: dict[str, Any]) -> bytes:
    return b"data: " + orjson.dumps(payload) + b"\n\n"


def event(name: str, payload: dict[str, Any]) -> bytes:
    return f"event: {name}\ndata: ".encode() + orjson.dumps(payload) + b"\n\n"


AUDIO_CHAT_USAGE = {
    "prompt_tokens": 10_000, "completion_tokens": 5_000, "total_tokens": 15_000,
    "prompt_tokens_details": {"cached_tokens": 600, "audio_tokens": 8_000,
                              "cached_tokens_details": {"audio_tokens": 400}},
    "completion_tokens_details": {"reasoning_tokens": 0, "audio_tokens": 4_500},
}
AUDIO_USAGE = Usage(input_tokens=10_000, output_tokens=5_000, cached_input_tokens=600,
                    input_audio_tokens=8_000, output_audio_tokens=4_500,
                    cached_audio_tokens=400, service_tier="default")


def test_chat_audio_tokens_and_tier_from_a_whole_answer() -> None:
    body = {"model": "gpt-audio", "service_tier": "default", "usage": AUDIO_CHAT_USAGE}
    assert openai_adapter.usage_from_body("chat", body) == AUDIO_USAGE


def test_chat_audio_tokens_and_tier_from_a_stream() -> None:
    req = openai_adapter.parse("chat", {"model": "gpt-audio", "stream": True,
                                        "messages": [{"role": "user", "content": "hi"}]})
    observer = openai_adapter.observer(req)
    base = {"id": "c", "object": "chat.completion.chunk", "model": "gpt-audio",
            "service_tier": "default"}
    observer.on_event(data({**base, "choices": [{"index": 0, "delta": {"content": "a"}}]}))
    observer.on_event(data({**base, "choices": [], "usage": AUDIO_CHAT_USAGE}))
    assert observer.usage == AUDIO_USAGE


@pytest.mark.parametrize("stream", [False, True])
def test_chat_search_models_bill_one_search_per_call(stream: bool) -> None:
    usage = {"prompt_tokens": 10, "completion_tokens": 5, "total_tokens": 15}
    model = "gpt-4o-mini-search-preview-2025-03-11"
    if stream:
        req = openai_adapter.parse("chat", {"model": "gpt-4o-mini-search-preview",
                                            "stream": True, "messages": [
                                                {"role": "user", "content": "news?"}]})
        observer = openai_adapter.observer(req)
        observer.on_event(data({"model": model, "choices": [{"delta": {"content": "x"}}]}))
        observer.on_event(data({"model": model, "choices": [], "usage": usage}))
        got = observer.usage
    else:
        got = openai_adapter.usage_from_body("chat", {"model": model, "usage": usage})
    assert got is not None and got.web_search_requests == 1
    plain = openai_adapter.usage_from_body("chat", {"model": "gpt-4o-mini", "usage": usage})
    assert plain is not None and plain.web_search_requests == 0


RESPONSE_OUTPUT = [
    {"type": "web_search_call", "id": "ws_1", "status": "completed",
     "action": {"type": "search", "query": "a"}},
    {"type": "web_search_call", "id": "ws_2", "status": "completed",
     "action": {"type": "open_page", "url": "https://example.com"}},
    {"type": "file_search_call", "id": "fs_1", "status": "completed", "queries": ["a"]},
    {"type": "message", "id": "msg_1", "role": "assistant", "content": []},
]
RESPONSES_USAGE = {"input_tokens": 2_000, "output_tokens": 300,
                   "input_tokens_details": {"cached_tokens": 500},
                   "output_tokens_details": {"reasoning_tokens": 100}}
RESPONSES_EXPECTED = Usage(input_tokens=2_000, output_tokens=300, cached_input_tokens=500,
                           reasoning_tokens=100, web_search_requests=2, file_search_calls=1,
                           service_tier="priority")


def test_responses_searches_and_tier_from_a_whole_answer() -> None:
    body = {"object": "response", "service_tier": "priority", "output": RESPONSE_OUTPUT,
            "usage": RESPONSES_USAGE}
    assert openai_adapter.usage_from_body("responses", body) == RESPONSES_EXPECTED


def test_responses_searches_and_tier_from_a_stream() -> None:
    req = openai_adapter.parse("responses", {"model": "gpt-5", "stream": True, "input": "x"})
    observer = openai_adapter.observer(req)
    for i, item in enumerate(RESPONSE_OUTPUT[:3]):
        observer.on_event(event("response.output_item.added", {
            "type": "response.output_item.added", "output_index": i, "item": item}))
    observer.on_event(event("response.completed", {"type": "response.completed", "response": {
        "service_tier": "priority", "output": RESPONSE_OUTPUT, "usage": RESPONSES_USAGE}}))
    assert observer.usage == RESPONSES_EXPECTED


def test_responses_stream_counts_searches_the_final_answer_lost() -> None:
    """A search item seen in the stream counts even if the final output lists fewer."""
    req = openai_adapter.parse("responses", {"model": "gpt-5", "stream": True, "input": "x"})
    observer = openai_adapter.observer(req)
    for i in range(3):
        observer.on_event(event("response.output_item.added", {
            "type": "response.output_item.added", "output_index": i,
            "item": {"type": "web_search_call", "id": f"ws_{i}", "status": "in_progress"}}))
    observer.on_event(event("response.incomplete", {"type": "response.incomplete",
                                                    "response": {"usage": RESPONSES_USAGE}}))
    assert observer.usage is not None and observer.usage.web_search_requests == 3


ANTHROPIC_USAGE = {
    "input_tokens": 50, "cache_read_input_tokens": 1_000,
    "cache_creation_input_tokens": 3_000,
    "cache_creation": {"ephemeral_5m_input_tokens": 1_000, "ephemeral_1h_input_tokens": 2_000},
    "output_tokens": 400, "server_tool_use": {"web_search_requests": 3,
                                              "web_fetch_requests": 1},
    "service_tier": "priority",
}
ANTHROPIC_EXPECTED = Usage(input_tokens=4_050, output_tokens=400, cached_input_tokens=1_000,
                           cache_write_tokens=3_000, cache_write_1h_tokens=2_000,
                           web_search_requests=3, web_fetch_requests=1,
                           service_tier="priority")


def test_anthropic_one_hour_writes_searches_and_tier_from_a_whole_answer() -> None:
    body = {"type": "message", "usage": ANTHROPIC_USAGE}
    assert anthropic_adapter.usage_from_body("messages", body) == ANTHROPIC_EXPECTED


def test_anthropic_cache_creation_split_alone_still_counts_the_writes() -> None:
    usage = usage_from_anthropic({"input_tokens": 5, "output_tokens": 1, "cache_creation": {
        "ephemeral_5m_input_tokens": 10, "ephemeral_1h_input_tokens": 20}})
    assert usage is not None
    assert (usage.cache_write_tokens, usage.cache_write_1h_tokens, usage.input_tokens) == (
        30, 20, 35)


def anthropic_stream_events() -> list[bytes]:
    start_usage = {**ANTHROPIC_USAGE, "output_tokens": 1,
                   "server_tool_use": {"web_search_requests": 0, "web_fetch_requests": 0}}
    delta_usage = {k: ANTHROPIC_USAGE[k] for k in (
        "input_tokens", "cache_read_input_tokens", "cache_creation_input_tokens",
        "output_tokens", "server_tool_use")}
    return [
        event("message_start", {"type": "message_start", "message": {
            "id": "msg_1", "type": "message", "role": "assistant", "model": "claude-x",
            "content": [], "usage": start_usage}}),
        event("content_block_start", {"type": "content_block_start", "index": 0,
                                      "content_block": {"type": "text", "text": ""}}),
        event("content_block_delta", {"type": "content_block_delta", "index": 0,
                                      "delta": {"type": "text_delta", "text": "hi"}}),
        event("message_delta", {"type": "message_delta", "delta": {"stop_reason": "end_turn"},
                                "usage": delta_usage}),
        event("message_stop", {"type": "message_stop"}),
    ]


def test_anthropic_one_hour_writes_searches_and_tier_from_a_stream() -> None:
    req = anthropic_adapter.parse("messages", {"model": "claude-haiku-4-5", "max_tokens": 9,
                                               "stream": True, "messages": [
                                                   {"role": "user", "content": "hi"}]})
    observer = anthropic_adapter.observer(req)
    for raw in anthropic_stream_events():
        observer.on_event(raw)
    assert observer.usage == ANTHROPIC_EXPECTED


def test_chat_translated_to_claude_keeps_the_new_usage_fields() -> None:
    bridge = ChatOverMessages({"model": "claude-haiku-4-5", "messages": [
        {"role": "user", "content": "hi"}]})
    assert bridge.usage_from_body({"type": "message", "usage": ANTHROPIC_USAGE}) == \
        ANTHROPIC_EXPECTED
    observer = bridge.observer(openai_adapter.parse("chat", {
        "model": "claude-haiku-4-5", "stream": True,
        "messages": [{"role": "user", "content": "hi"}]}))
    for raw in anthropic_stream_events():
        observer.on_event(raw)
    assert observer.usage == ANTHROPIC_EXPECTED


# --- what a request may be billed for ----------------------------------------------------


def terms(api: str, body: dict[str, Any]) -> PriceTerms:
    adapter = anthropic_adapter if api == "messages" else openai_adapter
    return price_terms(adapter.parse(api, body))  # type: ignore[arg-type]


HI: list[Any] = [{"role": "user", "content": "hi"}]


def test_openai_terms() -> None:
    assert terms("chat", {"model": "gpt-4o", "messages": HI}) == PriceTerms()
    assert terms("chat", {"model": "gpt-4o", "messages": HI, "service_tier": "Flex"}) == \
        PriceTerms(service_tier="flex")
    audio = terms("chat", {"model": "gpt-audio", "modalities": ["text", "audio"],
                           "audio": {"voice": "alloy", "format": "wav"}, "messages": [
                               {"role": "user", "content": [{"type": "input_audio",
                                                             "input_audio": {"data": "AA",
                                                                             "format": "wav"}}]}]})
    assert audio == PriceTerms(audio_input=True, audio_output=True)
    assert terms("chat", {"model": "gpt-4o-search-preview", "messages": HI,
                          "web_search_options": {}}).web_searches == 1
    tools = [{"type": "web_search"}, {"type": "file_search", "vector_store_ids": ["vs"]}]
    assert terms("responses", {"model": "gpt-5", "input": "x", "tools": tools,
                               "max_tool_calls": 4}) == PriceTerms(web_searches=4,
                                                                   file_searches=4)
    assert terms("responses", {"model": "gpt-5", "input": "x", "tools": tools}) == PriceTerms()


def test_anthropic_terms() -> None:
    base: dict[str, Any] = {"model": "claude-haiku-4-5", "max_tokens": 10}
    assert terms("messages", {**base, "messages": HI}) == PriceTerms()
    five = {**base, "system": [{"type": "text", "text": "s",
                                "cache_control": {"type": "ephemeral"}}], "messages": HI}
    assert terms("messages", five).cache_write == "5m"
    hour = {**base, "messages": [{"role": "user", "content": [
        {"type": "text", "text": "a", "cache_control": {"type": "ephemeral"}},
        {"type": "text", "text": "b", "cache_control": {"type": "ephemeral", "ttl": "1h"}}]}]}
    assert terms("messages", hour).cache_write == "1h"
    nested = {**base, "messages": [{"role": "user", "content": [
        {"type": "tool_result", "tool_use_id": "t", "content": [
            {"type": "text", "text": "r", "cache_control": {"type": "ephemeral",
                                                            "ttl": "1h"}}]}]}]}
    assert terms("messages", nested).cache_write == "1h"
    automatic = {**base, "messages": HI, "cache_control": {"type": "ephemeral"}}
    assert terms("messages", automatic).cache_write == "5m"
    tool = {**base, "messages": HI, "tools": [
        {"type": "web_search_20250305", "name": "web_search", "max_uses": 5},
        {"type": "web_search_20250305", "name": "web_search2", "max_uses": 2}]}
    assert terms("messages", tool).web_searches == 7
    unbounded = {**base, "messages": HI, "tools": [
        {"type": "web_search_20250305", "name": "web_search"}]}
    assert terms("messages", unbounded).web_searches == 0
    assert terms("messages", {**base, "messages": HI,
                              "service_tier": "standard_only"}).service_tier == "standard"
