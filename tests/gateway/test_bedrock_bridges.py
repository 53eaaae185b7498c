"""Bedrock from the other SDKs: the ``openai`` SDK's chat completions served by Converse,
the ``anthropic`` SDK's Messages served by InvokeModel (Claude), whole and streamed, through
the same keys, budgets and ledger, with the upstream's errors in the client's own shape."""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import anthropic
import openai
import pytest

from tests.conftest import FakeHandle, Gateway
from tokenstile.types import Usage

AWS_KEY_ID = "AKIDTOKENSTILEBRIDGE"
AWS_SECRET = "fake-aws-secret-for-the-bridges"
MODEL = "anthropic.claude-3-5-haiku-20241022-v1:0"
NOVA = "us.amazon.nova-lite-v1:0"
WEATHER: dict[str, Any] = {"type": "function", "function": {
    "name": "get_weather", "description": "Current weather for a city.",
    "parameters": {"type": "object", "properties": {"city": {"type": "string"}},
                   "required": ["city"]}}}


@pytest.fixture
def bedrock(make_gateway: Any, fake: FakeHandle) -> Iterator[Gateway]:
    fake.fake.settings.aws_credentials = {AWS_KEY_ID: AWS_SECRET}
    gateway: Gateway = make_gateway({
        "upstreams": {"aws": {"kind": "bedrock", "region": "eu-west-1", "base_url": fake.url,
                              "aws_access_key_id": AWS_KEY_ID,
                              "aws_secret_access_key": AWS_SECRET}},
        "routes": [{"match": "haiku", "upstream": "aws", "model": MODEL},
                   {"match": "claude-3-5-haiku", "upstream": "aws", "model": MODEL}],
    })
    yield gateway
    fake.fake.settings.aws_credentials = {}


def chat_client(gateway: Gateway, key: str) -> openai.OpenAI:
    return openai.OpenAI(base_url=gateway.v1, api_key=key, max_retries=0)


def price(gateway: Gateway, model: str, row: Any) -> int:
    cost = gateway.runtime.pricer.cost_nano(model, Usage(row.input_tokens, row.output_tokens),
                                            "aws")
    assert cost is not None and cost > 0
    return cost


def test_chat_completions_are_served_by_converse(bedrock: Gateway, fake: FakeHandle) -> None:
    key = bedrock.key()
    reply = chat_client(bedrock, key).chat.completions.create(
        model="haiku", max_tokens=6, temperature=0.3, stop=["END"],
        messages=[{"role": "system", "content": "Be brief."},
                  {"role": "user", "content": "Hello there"}])
    record = fake.fake.tally.last
    assert record is not None and record.route == f"/model/{MODEL}/converse"
    assert record.status == 200 and record.api_key == AWS_KEY_ID  # signed, and verified
    assert record.body == {
        "messages": [{"role": "user", "content": [{"text": "Hello there"}]}],
        "system": [{"text": "Be brief."}],
        "inferenceConfig": {"maxTokens": 6, "stopSequences": ["END"], "temperature": 0.3}}
    assert reply.object == "chat.completion" and reply.model == MODEL
    assert reply.choices[0].finish_reason == "length"
    assert reply.usage is not None and reply.usage.completion_tokens == 6
    assert reply.usage.prompt_tokens == record.input_tokens
    [row] = bedrock.rows()
    assert (row.api, row.upstream, row.requested_model, row.served_model) == (
        "chat", "aws", "haiku", MODEL)
    assert (row.input_tokens, row.output_tokens) == (record.input_tokens, 6)
    assert not row.estimated and row.cost_nano == price(bedrock, MODEL, row)


def test_streamed_chat_with_usage_and_tool_calls(bedrock: Gateway, fake: FakeHandle) -> None:
    key = bedrock.key()
    stream = chat_client(bedrock, key).chat.completions.create(
        model=NOVA, stream=True, stream_options={"include_usage": True},
        tools=[WEATHER], tool_choice="required",
        messages=[{"role": "user", "content": "Weather in Paris? [[fake:tool_call=get_weather]]"}])
    chunks = list(stream)
    record = fake.fake.tally.last
    assert record is not None and record.route == f"/model/{NOVA}/converse-stream"
    assert record.body["toolConfig"]["toolChoice"] == {"any": {}}
    assert record.body["toolConfig"]["tools"][0]["toolSpec"]["name"] == "get_weather"
    calls = [c.choices[0].delta.tool_calls for c in chunks if c.choices and
             c.choices[0].delta.tool_calls]
    assert calls[0] is not None and calls[0][0].function is not None
    assert calls[0][0].function.name == "get_weather"
    arguments = "".join(call[0].function.arguments or "" for call in calls
                        if call[0].function is not None)
    assert json.loads(arguments) == {"city": "alpha"}
    assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] == "tool_calls"
    assert chunks[-1].usage is not None and not chunks[-1].choices
    [row] = bedrock.rows()
    assert chunks[-1].usage.completion_tokens == row.output_tokens == record.output_tokens
    assert row.streamed and not row.estimated and row.cost_nano == price(bedrock, NOVA, row)


def test_bedrock_errors_reach_the_openai_sdk_as_its_own(bedrock: Gateway) -> None:
    client = chat_client(bedrock, bedrock.key())
    with pytest.raises(openai.RateLimitError) as throttled:
        client.chat.completions.create(model="haiku", messages=[
            {"role": "user", "content": "[[fake:status=429]]"}])
    assert throttled.value.body == {"message": "Fake upstream error (status 429).",
                                    "type": "rate_limit_exceeded", "param": None,
                                    "code": None}
    assert "x-amzn-errortype" not in throttled.value.response.headers
    with pytest.raises(openai.BadRequestError) as unsupported:
        client.embeddings.create(model="haiku", input="hello")
    assert "Bedrock upstream" in unsupported.value.message


def test_anthropic_messages_are_served_by_invoke_model(bedrock: Gateway,
                                                       fake: FakeHandle) -> None:
    key = bedrock.key()
    api = anthropic.Anthropic(base_url=bedrock.url, api_key=key, max_retries=0)
    message = api.messages.create(model="claude-3-5-haiku", max_tokens=5,
                                  messages=[{"role": "user", "content": "Hi"}])
    record = fake.fake.tally.last
    assert record is not None and record.route == f"/model/{MODEL}/invoke"
    assert record.body == {"max_tokens": 5, "messages": [{"role": "user", "content": "Hi"}],
                           "anthropic_version": "bedrock-2023-05-31"}
    assert message.usage.output_tokens == 5 and message.content[0].type == "text"
    with api.messages.stream(model="claude-3-5-haiku", max_tokens=50,
                             messages=[{"role": "user", "content": "Hi again"}]) as stream:
        text = stream.get_final_text()
    assert len(text.split()) == 12
    rows = bedrock.rows()
    assert [(r.api, r.upstream, r.streamed) for r in rows] == [
        ("messages", "aws", False), ("messages", "aws", True)]
    assert rows[1].output_tokens == 12 and not rows[1].estimated
    with pytest.raises(anthropic.BadRequestError) as invalid:
        api.messages.create(model="claude-3-5-haiku", max_tokens=5,
                            messages=[{"role": "user", "content": "[[fake:status=400]]"}])
    assert invalid.value.body == {"type": "error", "error": {
        "type": "invalid_request_error", "message": "Fake upstream error (status 400)."}}
