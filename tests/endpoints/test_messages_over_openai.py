"""An ``anthropic`` SDK client using a model served by an OpenAI upstream: Messages are
translated to chat completions and back (system, content, tools, tool results, streams,
stop reasons, usage, errors), reserved at the OpenAI count of the translated request and
recorded as Messages calls on the OpenAI upstream."""

from __future__ import annotations

from typing import Any

import anthropic
import pytest

from tests.conftest import FakeHandle
from tokenstile.providers.messages_over_chat import ChunkTranslator, messages_to_chat

MODEL = "gpt-4o-mini"
WEATHER: list[Any] = [{"name": "get_weather", "description": "Current weather for a city.",
            "input_schema": {"type": "object", "properties": {"city": {"type": "string"}},
                             "required": ["city"]}}]


def price(row: Any) -> int:
    """gpt-4o-mini at $0.15 / $0.60 per million tokens, $0.075 cached (genai-prices)."""
    cached = row.cached_input_tokens
    return (row.input_tokens - cached) * 150 + cached * 75 + row.output_tokens * 600


async def test_a_message_is_translated_to_chat_and_back(in_process: Any, fake: FakeHandle) -> None:
    gw = await in_process({})
    client = gw.anthropic(await gw.key())
    message = await client.messages.create(
        model=MODEL, max_tokens=7, system="You are terse.", metadata={"user_id": "eu-1"},
        messages=[{"role": "user", "content": "Say hello. [[fake:cached_tokens=4]]"}])
    record = fake.fake.tally.last
    assert record is not None and record.route == "/v1/chat/completions"
    assert record.body["messages"][0] == {"role": "system", "content": "You are terse."}
    assert record.body["max_tokens"] == 7 and record.body["user"] == "eu-1"
    assert message.type == "message" and message.model == MODEL
    assert message.content[0].type == "text" and message.content[0].text
    assert message.stop_reason == "max_tokens"
    # Anthropic's convention: input without the cache reads, which are reported apart
    assert message.usage.cache_read_input_tokens == 4
    assert message.usage.input_tokens == record.input_tokens - 4
    assert message.usage.output_tokens == record.output_tokens == 7
    [row] = await gw.rows()
    assert (row.api, row.upstream, row.served_model) == ("messages", "openai", MODEL)
    assert (row.input_tokens, row.cached_input_tokens, row.output_tokens) == (
        record.input_tokens, 4, 7)
    assert row.end_user == "eu-1" and not row.estimated and row.cost_nano == price(row)


async def test_a_stream_is_translated_event_by_event(in_process: Any, fake: FakeHandle) -> None:
    gw = await in_process({})
    client = gw.anthropic(await gw.key())
    async with client.messages.stream(
            model=MODEL, max_tokens=50,
            messages=[{"role": "user", "content": "Tell me. [[fake:output_tokens=12]]"}]
    ) as stream:
        text = "".join([piece async for piece in stream.text_stream])
        final = await stream.get_final_message()
    record = fake.fake.tally.last
    assert record is not None and record.stream and record.body["stream_options"] == {
        "include_usage": True}
    assert text and final.content[0].text == text
    assert final.stop_reason == "end_turn"
    assert (final.usage.input_tokens, final.usage.output_tokens) == (record.input_tokens, 12)
    [row] = await gw.rows()
    assert row.streamed and row.api == "messages" and not row.estimated
    assert (row.input_tokens, row.output_tokens) == (record.input_tokens, 12)
    assert row.cost_nano == price(row)


async def test_tool_calls_and_their_results_go_both_ways(in_process: Any, fake: FakeHandle) -> None:
    gw = await in_process({})
    client = gw.anthropic(await gw.key())
    ask: Any = {"role": "user", "content": "Weather in Paris? [[fake:tool_call=get_weather]]"}
    first = await client.messages.create(model=MODEL, max_tokens=100, tools=WEATHER,
                                         tool_choice={"type": "any"}, messages=[ask])
    sent = fake.fake.tally.last
    assert sent is not None and sent.body["tool_choice"] == "required"
    assert sent.body["tools"][0]["function"]["name"] == "get_weather"
    assert first.stop_reason == "tool_use"
    [call] = [block for block in first.content if block.type == "tool_use"]
    assert call.name == "get_weather" and isinstance(call.input, dict)
    follow_up: list[Any] = [
        ask, {"role": "assistant", "content": first.content},
        {"role": "user", "content": [
            {"type": "tool_result", "tool_use_id": call.id, "content": "18C and sunny"},
            {"type": "text", "text": "Thanks!"}]}]
    second = await client.messages.create(model=MODEL, max_tokens=20, tools=WEATHER,
                                          messages=follow_up)
    assert second.content[0].type == "text"
    body = fake.fake.tally.last.body
    assert [m["role"] for m in body["messages"]] == ["user", "assistant", "tool", "user"]
    assert body["messages"][1]["tool_calls"][0]["id"] == call.id
    assert body["messages"][2] == {"role": "tool", "tool_call_id": call.id,
                                   "content": "18C and sunny"}
    rows = await gw.rows()
    assert [r.outcome for r in rows] == ["ok", "ok"] and all(r.cost_nano for r in rows)


async def test_a_streamed_tool_call_arrives_as_input_json(in_process: Any) -> None:
    gw = await in_process({})
    client = gw.anthropic(await gw.key())
    async with client.messages.stream(
            model=MODEL, max_tokens=100, tools=WEATHER,
            messages=[{"role": "user", "content": "Paris? [[fake:tool_call=get_weather]]"}]
    ) as stream:
        final = await stream.get_final_message()
    [call] = [block for block in final.content if block.type == "tool_use"]
    assert call.name == "get_weather" and "city" in call.input
    assert final.stop_reason == "tool_use"


async def test_upstream_errors_and_refusals_are_anthropic_shaped(in_process: Any,
                                                                 fake: FakeHandle) -> None:
    gw = await in_process({"limits": [{"name": "spend", "scope": "project", "unit": "usd",
                                 "window": "day", "amount": 0.0001}]})
    client = gw.anthropic(await gw.key())
    with pytest.raises(anthropic.InternalServerError) as failed:
        await client.messages.create(model=MODEL, max_tokens=5, messages=[
            {"role": "user", "content": "x [[fake:status=500]]"}])
    assert failed.value.body["type"] == "error"
    with pytest.raises(anthropic.RateLimitError) as refused:  # 1,000 output tokens: $0.0006
        await client.messages.create(model=MODEL, max_tokens=1000, messages=[
            {"role": "user", "content": "x"}])
    assert refused.value.body["error"]["type"] == "rate_limit_error"
    search: list[Any] = [{"type": "web_search_20250305", "name": "web_search"}]
    with pytest.raises(anthropic.BadRequestError) as server_tool:
        await client.messages.create(model=MODEL, max_tokens=5, tools=search,
                                     messages=[{"role": "user", "content": "x"}])
    assert "server tool" in server_tool.value.message
    rows = await gw.rows()
    assert [r.outcome for r in rows] == ["upstream_error", "blocked", "error"]
    assert len([r for r in fake.fake.tally.records if r.status == 200]) == 0


def test_translation_of_content_blocks() -> None:
    body = messages_to_chat({
        "model": "o4-mini", "max_tokens": 64, "stop_sequences": ["END"],
        "system": [{"type": "text", "text": "A"}, {"type": "text", "text": "B"}],
        "output_config": {"format": {"type": "json_schema", "schema": {"type": "object"}}},
        "messages": [{"role": "user", "content": [
            {"type": "text", "text": "look"},
            {"type": "image", "source": {"type": "base64", "media_type": "image/png",
                                         "data": "AAAA"}},
            {"type": "document", "source": {"type": "base64",
                                            "media_type": "application/pdf", "data": "JV"}}]},
            {"role": "assistant", "content": [{"type": "thinking", "thinking": "hm"},
                                              {"type": "text", "text": "ok"}]}]}, 4096)
    assert body["max_completion_tokens"] == 64 and body["stop"] == ["END"]
    assert body["messages"][0] == {"role": "system", "content": "A\nB"}
    parts = body["messages"][1]["content"]
    assert parts[1] == {"type": "image_url", "image_url": {"url": "data:image/png;base64,AAAA"}}
    assert parts[2]["file"]["file_data"] == "data:application/pdf;base64,JV"
    assert body["messages"][2] == {"role": "assistant", "content": "ok"}
    assert body["response_format"]["json_schema"]["strict"] is True


def test_a_stream_cut_before_its_usage_leaves_the_text_to_count() -> None:
    translator = ChunkTranslator(MODEL)
    out = translator.feed(b'data: {"id":"chatcmpl-1","choices":[{"index":0,"delta":'
                          b'{"content":"Hello"}}]}\n\n')
    assert b"message_start" in out and b"text_delta" in out
    assert translator.usage is None and translator.output_text() == "Hello"
    end = translator.feed(b"data: [DONE]\n\n")
    assert b"content_block_stop" in end and b"message_stop" in end
