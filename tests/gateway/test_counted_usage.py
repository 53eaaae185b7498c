"""Answers the provider reports no usage for, and streams that end before their usage, are
billed from the gateway's own count of everything the model wrote: message text, tool calls,
refusals and reasoning (chat ``reasoning_content``, Responses reasoning items, Anthropic
thinking), in whole answers and streams; and reasoning a model does without streaming it is
billed at an estimate when its stream ends early, never as nothing."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import anthropic
import openai
import orjson
import pytest

from tests.conftest import FakeHandle, Gateway
from tokenstile.clock import FakeClock
from tokenstile.testing.fake_upstream import FakeRecord
from tokenstile.types import LedgerRow

ANTHROPIC_KEY = "sk-ant-upstream-secret-0123456789"
TOOLS = [{"type": "function", "function": {
    "name": "get_weather", "parameters": {"type": "object", "properties": {
        "city": {"type": "string"}, "days": {"type": "integer"}}}}}]


def with_claude(fake: FakeHandle) -> dict[str, Any]:
    return {"upstreams": {"anthropic": {"kind": "anthropic", "base_url": fake.url,
                                        "api_key": ANTHROPIC_KEY}}}


def gpt(gateway: Gateway, key: str) -> openai.OpenAI:
    return openai.OpenAI(base_url=gateway.v1, api_key=key, max_retries=0)


def claude(gateway: Gateway, key: str) -> anthropic.Anthropic:
    return anthropic.Anthropic(base_url=gateway.url, api_key=key, max_retries=0)


def last(fake: FakeHandle) -> FakeRecord:
    record = fake.fake.tally.last
    assert record is not None
    return record


def one_row(gateway: Gateway, timeout: float = 5.0) -> LedgerRow:
    """The single ledger row (a client that left is billed a moment later)."""
    deadline = time.monotonic() + timeout
    while True:
        rows = gateway.rows()
        if rows or time.monotonic() > deadline:
            break
        time.sleep(0.02)
    [row] = rows
    return row


def user(text: str) -> list[dict[str, str]]:
    return [{"role": "user", "content": text}]


# --- whole answers without a usage block ----------------------------------------------------

Call = Callable[[Gateway, str], None]


def chat_text(gateway: Gateway, key: str) -> None:
    reply = gpt(gateway, key).chat.completions.create(
        model="gpt-4o-mini", messages=user("Go. [[fake:no_usage,output_tokens=40]]"))
    assert reply.usage is None and reply.choices[0].message.content


def chat_tool_call(gateway: Gateway, key: str) -> None:
    reply = gpt(gateway, key).chat.completions.create(
        model="gpt-4o-mini", tools=TOOLS,  # type: ignore[arg-type]
        messages=user("Weather? [[fake:no_usage,tool_call=get_weather]]"))
    assert reply.choices[0].message.tool_calls


def chat_reasoning(gateway: Gateway, key: str) -> None:
    raw = gpt(gateway, key).chat.completions.with_raw_response.create(
        model="deepseek-r1", messages=user(
            "Think. [[fake:no_usage,output_tokens=30,reasoning_tokens=300,reasoning_text]]"))
    message = orjson.loads(raw.http_response.content)["choices"][0]["message"]
    assert len(message["reasoning_content"].split()) == 300


def completion(gateway: Gateway, key: str) -> None:
    reply = gpt(gateway, key).completions.create(
        model="gpt-3.5-turbo-instruct", max_tokens=50,
        prompt="Continue. [[fake:no_usage,output_tokens=25]]")
    assert reply.usage is None and reply.choices[0].text


def responses_reasoning(gateway: Gateway, key: str) -> None:
    reply = gpt(gateway, key).responses.create(
        model="gpt-oss-120b", input="Think. [[fake:no_usage,output_tokens=20,"
                                    "reasoning_tokens=150,reasoning_text]]")
    assert reply.usage is None and [i.type for i in reply.output] == ["reasoning", "message"]


def responses_tool_call(gateway: Gateway, key: str) -> None:
    reply = gpt(gateway, key).responses.create(
        model="gpt-4o-mini", input="Weather? [[fake:no_usage,tool_call=get_weather]]",
        tools=[{"type": "function", "name": "get_weather",  # type: ignore[list-item]
                "parameters": TOOLS[0]["function"]["parameters"]}])
    assert reply.output[0].type == "function_call"


def messages_thinking(gateway: Gateway, key: str) -> None:
    raw = claude(gateway, key).messages.with_raw_response.create(
        model="claude-sonnet-4-5", max_tokens=1000,
        thinking={"type": "enabled", "budget_tokens": 500},
        messages=[{"role": "user", "content": "Think. [[fake:no_usage,output_tokens=35,"
                                              "reasoning_tokens=120,reasoning_text]]"}])
    body = orjson.loads(raw.http_response.content)
    assert "usage" not in body and [b["type"] for b in body["content"]] == ["thinking", "text"]


def bridged_chat(gateway: Gateway, key: str) -> None:
    reply = gpt(gateway, key).chat.completions.create(
        model="claude-sonnet-4-5", max_tokens=100,
        messages=user("Hello. [[fake:no_usage,output_tokens=45]]"))
    assert reply.usage is None and reply.choices[0].message.content


WHOLE: dict[str, tuple[Call, bool, int]] = {
    # name: (call, served by Claude, reasoning tokens)
    "chat text": (chat_text, False, 0),
    "chat tool call": (chat_tool_call, False, 0),
    "chat reasoning_content": (chat_reasoning, False, 300),
    "completions": (completion, False, 0),
    "responses reasoning item": (responses_reasoning, False, 150),
    "responses function call": (responses_tool_call, False, 0),
    "messages thinking block": (messages_thinking, True, 120),
    "chat served by claude": (bridged_chat, True, 0),
}


@pytest.mark.parametrize("case", list(WHOLE))
def test_a_whole_answer_without_usage_is_billed_what_it_wrote(
        make_gateway: Any, fake: FakeHandle, case: str) -> None:
    call, served_by_claude, reasoning = WHOLE[case]
    gateway = make_gateway(with_claude(fake) if served_by_claude else None)
    call(gateway, gateway.key())
    record, row = last(fake), one_row(gateway)
    assert record.output_tokens > 10 and record.reasoning_tokens == reasoning
    assert row.estimated and row.outcome == "ok"
    if served_by_claude:  # Claude's tokenizer is estimated (o200k x factor)
        assert record.output_tokens <= row.output_tokens <= record.output_tokens * 1.25
        assert reasoning <= row.reasoning_tokens <= reasoning * 1.25
    else:
        assert (row.output_tokens, row.reasoning_tokens) == (record.output_tokens, reasoning)
    assert row.cost_nano > 0 or row.served_model in ("deepseek-r1", "gpt-oss-120b")


# --- streams ---------------------------------------------------------------------------------


def test_a_stream_without_usage_bills_its_reasoning_content(
        gateway: Gateway, fake: FakeHandle) -> None:
    chunks = list(gpt(gateway, gateway.key()).chat.completions.create(
        model="qwq-32b", stream=True, messages=user(
            "Think. [[fake:no_usage,output_tokens=12,reasoning_tokens=400,reasoning_text]]")))
    shown = [c.choices[0].delta.model_extra.get("reasoning_content")  # type: ignore[union-attr]
             for c in chunks if c.choices]
    assert sum(1 for s in shown if s) == 400
    record, row = last(fake), one_row(gateway)
    assert row.estimated and record.output_tokens == 412
    assert (row.output_tokens, row.reasoning_tokens) == (412, 400)


def test_a_chat_stream_left_while_it_reasons_bills_the_reasoning_relayed(
        gateway: Gateway, fake: FakeHandle) -> None:
    stream = gpt(gateway, gateway.key()).chat.completions.create(
        model="deepseek-r1", stream=True, messages=user(
            "Think. [[fake:output_tokens=50,reasoning_tokens=1801,reasoning_text,"
            "stall_after=700]]"))
    seen = 0
    for chunk in stream:
        if chunk.choices and (chunk.choices[0].delta.model_extra or {}).get(
                "reasoning_content"):
            seen += 1
            if seen == 700:
                break
    stream.close()
    assert fake.fake.tally.wait_for(lambda t: t.requests == 1)
    record, row = last(fake), one_row(gateway)
    assert record.output_tokens == record.reasoning_tokens == 700  # the fake's bill
    assert row.outcome == "client_disconnect" and row.estimated
    assert (row.output_tokens, row.reasoning_tokens) == (700, 700)


def test_a_responses_stream_cut_while_it_reasons_bills_the_reasoning_relayed(
        gateway: Gateway, fake: FakeHandle) -> None:
    events = []
    with pytest.raises(openai.APIError):  # the gateway reports the cut in the stream
        for event in gpt(gateway, gateway.key()).responses.create(
                model="gpt-oss-120b", stream=True,
                input="Think. [[fake:output_tokens=30,reasoning_tokens=500,"
                      "reasoning_text,cut_after=320]]"):
            events.append(event.type)
    assert events.count("response.reasoning_text.delta") == 320
    record, row = last(fake), one_row(gateway)
    assert record.cut and record.output_tokens == 320
    assert row.outcome == "upstream_cut" and row.estimated
    assert (row.output_tokens, row.reasoning_tokens) == (320, 320)


def test_a_claude_stream_left_while_it_thinks_bills_the_thinking_as_reasoning(
        make_gateway: Any, fake: FakeHandle) -> None:
    gateway = make_gateway(with_claude(fake))
    params: Any = {
        "model": "claude-sonnet-4-5", "max_tokens": 4000,
        "thinking": {"type": "enabled", "budget_tokens": 3000},
        "messages": [{"role": "user", "content": "Think. [[fake:output_tokens=20,"
                                                 "reasoning_tokens=900,reasoning_text,"
                                                 "stall_after=600]]"}]}
    thought = 0
    with claude(gateway, gateway.key()).messages.stream(**params) as events:
        for event in events:
            if event.type == "thinking":
                thought += 1
                if thought == 600:
                    break
    assert fake.fake.tally.wait_for(lambda t: t.requests == 1)
    record, row = last(fake), one_row(gateway)
    assert record.output_tokens == 600
    assert row.outcome == "client_disconnect"
    # Claude's tokenizer is estimated (o200k x factor): at least what was streamed.
    assert 600 <= row.reasoning_tokens == row.output_tokens <= 600 * 1.25


@pytest.mark.parametrize("cap", [None, 600])
def test_hidden_reasoning_cut_before_any_visible_token_is_billed_at_an_estimate(
        make_gateway: Any, fake: FakeHandle, cap: int | None) -> None:
    clock = FakeClock()
    gateway = make_gateway({"hidden_reasoning": {"tokens_per_s": {"o4-mini": 50}}},
                           clock=clock)
    extra = {} if cap is None else {"max_completion_tokens": cap}
    stream = gpt(gateway, gateway.key()).chat.completions.create(
        model="o4-mini", stream=True, **extra,  # type: ignore[call-overload]
        messages=user("Think hard. [[fake:output_tokens=40,reasoning_tokens=1801,"
                      "stall_after=0]]"))
    first = next(iter(stream))  # the role chunk; then it thinks without showing anything
    assert first.choices[0].delta.role == "assistant"
    clock.advance(20.0)  # twenty seconds of thinking, then the client gives up
    stream.close()
    assert fake.fake.tally.wait_for(lambda t: t.requests == 1)
    record, row = last(fake), one_row(gateway)
    assert record.output_tokens == record.reasoning_tokens == 1801  # the provider's bill
    assert row.outcome == "client_disconnect" and row.estimated
    assert "reasoning_estimated" in row.flags
    billed = 50 * 20 if cap is None else cap
    assert (row.output_tokens, row.reasoning_tokens) == (billed, billed)
    assert row.cost_nano > 0


def test_visible_output_ends_the_hidden_reasoning_estimate(
        make_gateway: Any, fake: FakeHandle) -> None:
    clock = FakeClock()
    gateway = make_gateway(clock=clock)
    stream = gpt(gateway, gateway.key()).chat.completions.create(
        model="gpt-5-mini", stream=True, max_completion_tokens=5000,
        messages=user("Think. [[fake:output_tokens=40,reasoning_tokens=900,stall_after=1,"
                      "chunk_delay_ms=500]]"))
    clock.advance(12.0)  # it reasons (unseen) before its first visible token, half a second on
    for chunk in stream:
        if chunk.choices and chunk.choices[0].delta.content:
            break
    stream.close()
    assert fake.fake.tally.wait_for(lambda t: t.requests == 1)
    record, row = last(fake), one_row(gateway)
    assert record.output_tokens == 901
    assert row.outcome == "client_disconnect" and "reasoning_estimated" in row.flags
    # 12 s at the built-in pace for gpt-5 (50 tokens/s), and the one visible token.
    assert (row.output_tokens, row.reasoning_tokens) == (1 + 600, 600)


def test_a_stream_whose_usage_came_is_not_estimated(
        make_gateway: Any, fake: FakeHandle) -> None:
    clock = FakeClock()
    gateway = make_gateway(clock=clock)
    chunks = list(gpt(gateway, gateway.key()).chat.completions.create(
        model="o4-mini", stream=True, messages=user(
            "Think. [[fake:output_tokens=8,reasoning_tokens=64]]")))
    assert chunks
    record, row = last(fake), one_row(gateway)
    assert not row.estimated and "reasoning_estimated" not in row.flags
    assert (row.output_tokens, row.reasoning_tokens) == (record.output_tokens, 64)
