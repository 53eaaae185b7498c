"""An ``openai`` SDK client served by Claude: chat completions routed to an Anthropic
upstream are translated both ways (messages, system, tools, streams, usage, stop reasons,
errors), reserved at Claude's estimate and recorded as chat calls on the anthropic
upstream."""

from __future__ import annotations

import json
from typing import Any

import openai
import pytest

from tests.conftest import UPSTREAM_KEY, FakeHandle, Gateway
from tests.gateway.test_anthropic_sdk import ANTHROPIC_KEY, anthropic_upstream

MODEL = "claude-haiku-4-5"
MESSAGES: list[Any] = [
    {"role": "system", "content": "You are terse."},
    {"role": "user", "content": "Say hello to the ledger."},
]
WEATHER: list[Any] = [{
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "Current weather for a city.",
        "parameters": {"type": "object", "properties": {"city": {"type": "string"}},
                       "required": ["city"]},
    },
}]


@pytest.fixture
def claude(make_gateway: Any, fake: FakeHandle) -> Gateway:
    gateway: Gateway = make_gateway(anthropic_upstream(fake))
    return gateway


def sdk(gateway: Gateway, key: str) -> openai.OpenAI:
    return openai.OpenAI(base_url=gateway.v1, api_key=key, max_retries=0)


def assert_chat_row(row: Any, record: Any) -> None:
    assert (row.api, row.upstream) == ("chat", "anthropic")
    assert row.input_tokens == record.input_tokens
    assert row.output_tokens == record.output_tokens
    assert row.cached_input_tokens == record.cached_tokens
    assert row.cache_write_tokens == record.cache_write_tokens
    assert not row.estimated and row.cost_nano > 0


def test_chat_completion_is_translated_to_messages_and_back(
        claude: Gateway, fake: FakeHandle) -> None:
    key = claude.key()
    reply = sdk(claude, key).chat.completions.create(
        model=MODEL, messages=MESSAGES, max_tokens=6, user="end-user-7")
    record = fake.fake.tally.last
    assert record is not None and record.route == "/v1/messages"
    # Anthropic's request shape, headers and key upstream
    assert record.body["system"] == "You are terse."
    assert record.body["messages"] == [{"role": "user", "content": "Say hello to the ledger."}]
    assert record.body["max_tokens"] == 6
    assert record.body["metadata"] == {"user_id": "end-user-7"}
    assert record.headers["x-api-key"] == ANTHROPIC_KEY
    assert record.headers["anthropic-version"] == "2023-06-01"
    assert UPSTREAM_KEY not in str(record.headers) and key not in str(record.headers)
    # OpenAI's answer shape
    assert reply.object == "chat.completion" and reply.model == MODEL
    choice = reply.choices[0]
    assert choice.message.role == "assistant" and choice.message.content
    assert choice.finish_reason == "length"
    assert reply.usage is not None
    assert reply.usage.prompt_tokens == record.input_tokens
    assert reply.usage.completion_tokens == record.output_tokens == 6
    [row] = claude.rows()
    assert_chat_row(row, record)
    assert row.end_user == "end-user-7" and row.served_model == MODEL


def test_streamed_chat_is_translated_chunk_by_chunk(claude: Gateway, fake: FakeHandle) -> None:
    key = claude.key()
    api = sdk(claude, key)
    chunks = list(api.chat.completions.create(model=MODEL, messages=MESSAGES, max_tokens=5,
                                              stream=True))
    assert chunks[0].choices[0].delta.role == "assistant"
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert len(text.split()) == 5
    assert chunks[-1].choices[0].finish_reason == "length"
    assert all(c.usage is None for c in chunks)  # the client did not ask for usage
    with_usage = list(api.chat.completions.create(
        model=MODEL, messages=MESSAGES, max_tokens=3, stream=True,
        stream_options={"include_usage": True}))
    usage = with_usage[-1].usage
    assert usage is not None and usage.completion_tokens == 3 and not with_usage[-1].choices
    rows = claude.rows()
    for row, record in zip(rows, fake.fake.tally.records, strict=True):
        assert_chat_row(row, record)
        assert row.streamed
    assert usage.prompt_tokens == rows[1].input_tokens


async def test_async_client_with_the_stream_helper(claude: Gateway, fake: FakeHandle) -> None:
    key = claude.key()
    api = openai.AsyncOpenAI(base_url=claude.v1, api_key=key, max_retries=0)
    async with api, api.chat.completions.stream(
            model=MODEL, max_tokens=50,
            messages=[{"role": "user", "content": "hi [[fake:output_tokens=4]]"}]) as stream:
        final = await stream.get_final_completion()
    assert final.choices[0].finish_reason == "stop"
    assert len((final.choices[0].message.content or "").split()) == 4


def test_tools_round_trip_through_translation(claude: Gateway, fake: FakeHandle) -> None:
    key = claude.key()
    api = sdk(claude, key)
    ask: list[Any] = [{"role": "user",
                       "content": "Weather in Paris? [[fake:tool_call=get_weather]]"}]
    first = api.chat.completions.create(model=MODEL, messages=ask, tools=WEATHER,
                                        tool_choice="auto", max_tokens=60)
    sent = fake.fake.tally.last
    assert sent is not None
    assert sent.body["tools"][0]["name"] == "get_weather"
    assert sent.body["tools"][0]["input_schema"]["properties"] == {"city": {"type": "string"}}
    assert sent.body["tool_choice"] == {"type": "auto"}
    assert first.choices[0].finish_reason == "tool_calls"
    [call] = first.choices[0].message.tool_calls or []
    assert call.type == "function" and call.function.name == "get_weather"
    assert "city" in json.loads(call.function.arguments)

    streamed = list(api.chat.completions.create(model=MODEL, messages=ask, tools=WEATHER,
                                                max_tokens=60, stream=True))
    deltas = [tc for c in streamed if c.choices for tc in c.choices[0].delta.tool_calls or []]
    assert deltas[0].function is not None and deltas[0].function.name == "get_weather"
    arguments = "".join(d.function.arguments or "" for d in deltas if d.function)
    assert json.loads(arguments) == json.loads(call.function.arguments)
    assert streamed[-1].choices[0].finish_reason == "tool_calls"

    follow_up: list[Any] = [
        *ask,
        {"role": "assistant", "content": None, "tool_calls": [call.model_dump()]},
        {"role": "tool", "tool_call_id": call.id, "content": "18 degrees and sunny"},
    ]
    answer = api.chat.completions.create(model=MODEL, messages=follow_up, tools=WEATHER,
                                         max_tokens=5)
    sent = fake.fake.tally.last
    assert sent is not None
    assert [m["role"] for m in sent.body["messages"]] == ["user", "assistant", "user"]
    assert sent.body["messages"][1]["content"][0]["type"] == "tool_use"
    assert sent.body["messages"][2]["content"][0] == {
        "type": "tool_result", "tool_use_id": call.id, "content": "18 degrees and sunny"}
    assert answer.choices[0].message.content and answer.choices[0].finish_reason == "length"
    rows = claude.rows()
    for row, record in zip(rows, fake.fake.tally.records, strict=True):
        assert_chat_row(row, record)


def test_cache_usage_reaches_the_openai_client_and_the_ledger(
        claude: Gateway, fake: FakeHandle) -> None:
    key = claude.key()
    reply = sdk(claude, key).chat.completions.create(model=MODEL, max_tokens=4, messages=[
        {"role": "user", "content": "y " * 300 + "[[fake:cached_tokens=160,"
                                                  "cache_write_tokens=40]]"}])
    assert reply.usage is not None and reply.usage.prompt_tokens_details is not None
    assert reply.usage.prompt_tokens_details.cached_tokens == 160
    [row] = claude.rows()
    assert (row.cached_input_tokens, row.cache_write_tokens) == (160, 40)
    assert row.input_tokens == reply.usage.prompt_tokens


def test_upstream_errors_are_translated_to_openai_errors(
        claude: Gateway, fake: FakeHandle) -> None:
    key = claude.key()
    api = sdk(claude, key)
    with pytest.raises(openai.RateLimitError) as limited:
        api.chat.completions.create(model=MODEL, max_tokens=5, messages=[
            {"role": "user", "content": "[[fake:status=429,retry_after=2]]"}])
    body: Any = limited.value.body
    assert set(body) == {"message", "type", "param", "code"}
    assert body["code"] == "rate_limit_error"
    assert limited.value.response.headers["retry-after"] == "2"
    with pytest.raises(openai.InternalServerError):
        api.chat.completions.create(model=MODEL, max_tokens=5, messages=[
            {"role": "user", "content": "[[fake:status=500]]"}])
    with pytest.raises(openai.APIError):
        list(api.chat.completions.create(model=MODEL, max_tokens=50, stream=True, messages=[
            {"role": "user", "content": "[[fake:error_after=2]]"}]))
    rows = claude.rows()
    assert [(r.status, r.outcome) for r in rows[:2]] == [
        (429, "upstream_error"), (500, "upstream_error")]
    assert rows[2].output_tokens >= 2 and rows[2].input_tokens > 0


@pytest.mark.parametrize(("call", "api_name"), [
    (lambda api: api.completions.create(model=MODEL, prompt="hi", max_tokens=3),
     "completions"),
    (lambda api: api.embeddings.create(model=MODEL, input="hi"), "embeddings"),
    (lambda api: api.responses.create(model=MODEL, input="hi"), "Responses"),
])
def test_other_openai_apis_are_refused_for_the_anthropic_upstream(
        claude: Gateway, fake: FakeHandle, call: Any, api_name: str) -> None:
    key = claude.key()
    with pytest.raises(openai.BadRequestError) as caught:
        call(sdk(claude, key))
    assert f"the {api_name} API is not supported by the anthropic upstream" in \
        caught.value.message
    body: Any = caught.value.body
    assert body["code"] == "unsupported_api"
    assert fake.fake.tally.requests == 0


def test_parameters_claude_cannot_honour_are_refused_before_anything_is_reserved(
        make_gateway: Any, fake: FakeHandle) -> None:
    gateway = make_gateway({**anthropic_upstream(fake), "projects": {"p": {"daily_limit": 1000}}})
    key = gateway.key(project="p")
    with pytest.raises(openai.BadRequestError) as caught:
        sdk(gateway, key).chat.completions.create(model=MODEL, messages=MESSAGES, n=2)
    assert "'n' must be 1 for Claude models" in caught.value.message
    assert fake.fake.tally.requests == 0
    # nothing was left reserved: the whole budget is still there
    sdk(gateway, key).chat.completions.create(model=MODEL, messages=MESSAGES, max_tokens=900)


def test_reservations_use_the_claude_estimate_and_supply_a_cap(
        make_gateway: Any, fake: FakeHandle) -> None:
    gateway = make_gateway({**anthropic_upstream(fake), "projects": {"p": {"daily_limit": 600}}})
    key = gateway.key(project="p")
    sdk(gateway, key).chat.completions.create(model=MODEL, messages=MESSAGES)
    record = fake.fake.tally.last
    assert record is not None
    [row] = gateway.rows()
    # no max_tokens from the client: Anthropic needs one, and the budget sized it
    assert "max_tokens_supplied" in row.flags
    assert 0 < record.body["max_tokens"] < 600
    assert_chat_row(row, record)


def test_routes_can_send_an_openai_model_name_to_claude(
        make_gateway: Any, fake: FakeHandle) -> None:
    gateway = make_gateway({**anthropic_upstream(fake),
                            "routes": [{"match": "smart", "upstream": "anthropic",
                                        "model": "claude-sonnet-4-6"}]})
    key = gateway.key()
    reply = sdk(gateway, key).chat.completions.create(model="smart", messages=MESSAGES,
                                                      max_tokens=3)
    assert reply.model == "claude-sonnet-4-6"
    record = fake.fake.tally.last
    assert record is not None and record.body["model"] == "claude-sonnet-4-6"
    [row] = gateway.rows()
    assert (row.requested_model, row.served_model, row.upstream) == (
        "smart", "claude-sonnet-4-6", "anthropic")
