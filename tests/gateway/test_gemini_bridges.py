"""Gemini from the ``openai`` SDK: chat completions on a ``gemini-*`` model served by an
upstream of kind ``gemini`` through generateContent (whole, streamed, with tools), through
the same keys, budgets and ledger, with Google's errors in OpenAI's shape."""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import genai_prices
import openai
import pytest

from tests.conftest import FakeHandle, Gateway
from tokenstile.providers.gemini_translate import ChatOverGemini
from tokenstile.testing.fake_upstream import reply_text

GOOGLE_KEY = "AIza-bridge-google-key-0123456789"
FLASH = "gemini-2.5-flash"
LITE = "gemini-2.0-flash"
WEATHER: dict[str, Any] = {"type": "function", "function": {
    "name": "get_weather", "description": "Current weather for a city.",
    "parameters": {"type": "object", "properties": {"city": {"type": "string"}},
                   "required": ["city"]}}}


@pytest.fixture
def gemini(make_gateway: Any, fake: FakeHandle) -> Iterator[Gateway]:
    fake.fake.settings.require_key = GOOGLE_KEY
    gateway: Gateway = make_gateway({"upstreams": {"google": {
        "kind": "gemini", "base_url": fake.url, "api_key": GOOGLE_KEY}}})
    yield gateway
    fake.fake.settings.require_key = None


def chat_client(gateway: Gateway, key: str) -> openai.OpenAI:
    return openai.OpenAI(base_url=gateway.v1, api_key=key, max_retries=0)


def google_price(model: str, record: Any) -> int:
    usage = genai_prices.Usage(input_tokens=record.input_tokens,
                               cache_read_tokens=record.cached_tokens,
                               output_tokens=record.output_tokens)
    total = genai_prices.calc_price(usage, model, provider_id="google").total_price
    return int((total * 1_000_000_000).to_integral_value())


def test_chat_completions_are_served_by_generate_content(gemini: Gateway,
                                                         fake: FakeHandle) -> None:
    key = gemini.key()
    reply = chat_client(gemini, key).chat.completions.create(
        model=LITE, max_tokens=6, temperature=0.3, stop=["END"],
        messages=[{"role": "system", "content": "Be brief."},
                  {"role": "user", "content": "Hello there"}])
    record = fake.fake.tally.last
    assert record is not None and record.route == f"/v1beta/models/{LITE}:generateContent"
    assert record.api_key == GOOGLE_KEY and key not in str(record.headers)
    assert record.body == {
        "contents": [{"role": "user", "parts": [{"text": "Hello there"}]}],
        "systemInstruction": {"parts": [{"text": "Be brief."}]},
        "generationConfig": {"stopSequences": ["END"], "temperature": 0.3,
                             "maxOutputTokens": 6}}
    assert reply.object == "chat.completion" and reply.model == LITE
    assert reply.choices[0].message.content == reply_text(6)
    assert reply.choices[0].finish_reason == "length"
    assert reply.usage is not None and reply.usage.completion_tokens == 6
    assert reply.usage.prompt_tokens == record.input_tokens
    [row] = gemini.rows()
    assert (row.api, row.upstream, row.requested_model, row.served_model) == (
        "chat", "google", LITE, LITE)
    assert (row.input_tokens, row.output_tokens) == (record.input_tokens, 6)
    assert not row.estimated and row.cost_nano == google_price(LITE, record) > 0


def test_a_bridged_request_is_translated_once(gemini: Gateway, fake: FakeHandle,
                                              monkeypatch: pytest.MonkeyPatch) -> None:
    """The translation that counted the input at routing is the one forwarded, and the
    chat id carries Google's responseId."""
    translated: list[dict[str, Any]] = []
    translate = ChatOverGemini.translate

    def counting(self: ChatOverGemini, body: dict[str, Any]) -> dict[str, Any]:
        translated.append(body)
        return translate(self, body)

    monkeypatch.setattr(ChatOverGemini, "translate", counting)
    reply = chat_client(gemini, gemini.key()).chat.completions.create(
        model=LITE, max_tokens=6, messages=[{"role": "user", "content": "Hello there"}])
    assert len(translated) == 1
    record = fake.fake.tally.last
    assert record is not None and record.body["generationConfig"] == {"maxOutputTokens": 6}
    assert reply.id.startswith("chatcmpl-") and len(reply.id) > len("chatcmpl-")


def test_the_output_cap_bounds_a_thinking_models_thinking(gemini: Gateway,
                                                          fake: FakeHandle) -> None:
    chat_client(gemini, gemini.key()).chat.completions.create(
        model=FLASH, max_tokens=1000, messages=[{"role": "user", "content": "Think"}])
    record = fake.fake.tally.last
    assert record is not None
    assert record.body["generationConfig"] == {"maxOutputTokens": 500,
                                               "thinkingConfig": {"thinkingBudget": 500}}


def test_streamed_chat_with_usage(gemini: Gateway, fake: FakeHandle) -> None:
    stream = chat_client(gemini, gemini.key()).chat.completions.create(
        model=FLASH, stream=True, stream_options={"include_usage": True},
        messages=[{"role": "user", "content": "Count [[fake:reasoning_tokens=9]]"}])
    chunks = list(stream)
    record = fake.fake.tally.last
    assert record is not None and record.route.endswith(":streamGenerateContent")
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == reply_text(12)
    finishes = [c.choices[0].finish_reason for c in chunks if c.choices]
    assert finishes[-1] == "stop" and finishes.count("stop") == 1
    usage = chunks[-1].usage
    assert usage is not None and usage.completion_tokens == 12 + 9
    assert usage.completion_tokens_details is not None
    assert usage.completion_tokens_details.reasoning_tokens == 9
    [row] = gemini.rows()
    assert (row.output_tokens, row.reasoning_tokens) == (21, 9)
    assert row.streamed and not row.estimated
    assert row.cost_nano == google_price(FLASH, record)


@pytest.mark.parametrize("streamed", [False, True])
def test_tool_calls_go_both_ways(gemini: Gateway, fake: FakeHandle, streamed: bool) -> None:
    api = chat_client(gemini, gemini.key())
    ask: list[Any] = [{"role": "user",
                       "content": "Weather in Oslo? [[fake:tool_call=get_weather]]"}]
    if streamed:
        chunks = list(api.chat.completions.create(model=FLASH, messages=ask, tools=[WEATHER],
                                                  tool_choice="required", stream=True))
        calls = [call for c in chunks if c.choices for call in c.choices[0].delta.tool_calls
                 or ()]
        finish = [c.choices[0].finish_reason for c in chunks if c.choices][-1]
        function = calls[0].function
        assert function is not None
        name, arguments, call_id = function.name, function.arguments, calls[0].id
    else:
        reply = api.chat.completions.create(model=FLASH, messages=ask, tools=[WEATHER],
                                            tool_choice="required")
        finish = reply.choices[0].finish_reason
        [call] = reply.choices[0].message.tool_calls or []
        assert call.type == "function"
        name, arguments, call_id = call.function.name, call.function.arguments, call.id
    assert finish == "tool_calls" and name == "get_weather"
    assert json.loads(arguments or "") == {"city": "alpha"}
    record = fake.fake.tally.last
    assert record is not None
    assert record.body["tools"] == [{"functionDeclarations": [{
        "name": "get_weather", "description": "Current weather for a city.",
        "parametersJsonSchema": WEATHER["function"]["parameters"]}]}]
    assert record.body["toolConfig"] == {"functionCallingConfig": {"mode": "ANY"}}
    # The answer goes back with the call's result, named by its tool.
    api.chat.completions.create(model=FLASH, tools=[WEATHER], messages=[
        *ask, {"role": "assistant", "content": None, "tool_calls": [
            {"id": call_id, "type": "function",
             "function": {"name": "get_weather", "arguments": arguments}}]},
        {"role": "tool", "tool_call_id": call_id, "content": "12 degrees"}])
    record = fake.fake.tally.last
    assert record is not None and record.body["contents"][1:] == [
        {"role": "model", "parts": [{"functionCall": {"name": "get_weather",
                                                      "args": {"city": "alpha"}}}]},
        {"role": "user", "parts": [{"functionResponse": {
            "name": "get_weather", "response": {"content": "12 degrees"}}}]}]
    rows = gemini.rows()
    assert all(r.cost_nano == google_price(FLASH, rec) for r, rec in
               zip(rows, fake.fake.tally.records, strict=True))


def test_google_errors_reach_the_openai_sdk_in_its_shape(gemini: Gateway) -> None:
    api = chat_client(gemini, gemini.key())
    with pytest.raises(openai.RateLimitError) as limited:
        api.chat.completions.create(model=FLASH, messages=[
            {"role": "user", "content": "hi [[fake:status=429]]"}])
    assert isinstance(limited.value.body, dict)
    assert limited.value.body["message"] == "Fake upstream error (status 429)."
    with pytest.raises(openai.BadRequestError) as unsupported:
        api.completions.create(model=FLASH, prompt="hi")
    assert "served by the Gemini upstream 'google'" in unsupported.value.message


def test_a_small_chat_cap_on_a_model_that_must_think_is_a_budget_google_takes_or_a_422(
        gemini: Gateway, fake: FakeHandle) -> None:
    api = chat_client(gemini, gemini.key())
    api.chat.completions.create(model="gemini-2.5-pro", max_tokens=200,
                                messages=[{"role": "user", "content": "hi"}])
    api.chat.completions.create(model="gemini-2.5-flash-lite", max_tokens=200,
                                messages=[{"role": "user", "content": "hi"}])
    assert [r.body["generationConfig"] for r in fake.fake.tally.records] == [
        {"thinkingConfig": {"thinkingBudget": 128}, "maxOutputTokens": 72},
        {"thinkingConfig": {"thinkingBudget": 0}, "maxOutputTokens": 200}]
    with pytest.raises(openai.UnprocessableEntityError) as refused:
        api.chat.completions.create(model="gemini-2.5-pro", max_tokens=100,
                                    messages=[{"role": "user", "content": "hi"}])
    assert "always thinks, at least 128 tokens" in refused.value.message
    assert fake.fake.tally.requests == 2
