"""The fake upstream, driven by the official openai and anthropic SDKs over real HTTP.

The SDKs are the judges of wire-format fidelity: if they parse a response into populated
objects (and raise their own exception classes for errors), the gateway's tests can trust
the fake. Usage must be exact and must match the fake's tally.
"""

from __future__ import annotations

import base64
import json
import os
import struct
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from typing import Any

import anthropic
import httpx2
import openai
import pytest

from tokenstile.testing._fake_core import count_text, reply_text
from tokenstile.testing.fake_upstream import (
    Directives,
    FakeUpstream,
    RunningServer,
    start_in_thread,
)

CLAUDE = "claude-haiku-4-5"  # the anthropic SDK warns on deprecated names (an error here)
GPT = "gpt-4o-mini"
WEATHER_TOOL: Any = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "Weather for a city",
        "parameters": {
            "type": "object",
            "properties": {
                "city": {"type": "string"},
                "days": {"type": "integer"},
                "unit": {"type": "string", "enum": ["celsius", "fahrenheit"]},
            },
            "required": ["city"],
        },
    },
}


def user(text: str) -> list[Any]:
    return [{"role": "user", "content": text}]


def chat_prompt_tokens(messages: list[dict[str, str]]) -> int:
    """OpenAI's cookbook formula, written out independently of the fake's code."""
    total = 3
    for message in messages:
        total += 3
        for key, value in message.items():
            total += count_text(value)
            if key == "name":
                total += 1
    return total


# ---------------------------------------------------------------------------------------
# Fixtures
# ---------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def fake() -> FakeUpstream:
    return FakeUpstream()


@pytest.fixture(scope="module")
def url(fake: FakeUpstream) -> Iterator[str]:
    with fake.serve() as server:
        yield server.url


@pytest.fixture(autouse=True)
def _clean(fake: FakeUpstream) -> Iterator[None]:
    fake.reset()
    fake.set_defaults(None)
    yield


@pytest.fixture
def oc(url: str) -> Iterator[openai.OpenAI]:
    with openai.OpenAI(base_url=f"{url}/v1", api_key="sk-test", max_retries=0,
                       timeout=5.0) as client:
        yield client


@pytest.fixture
def ac(url: str) -> Iterator[anthropic.Anthropic]:
    with anthropic.Anthropic(base_url=url, api_key="sk-ant-test", max_retries=0,
                             timeout=5.0) as client:
        yield client


def completion_tokens(client: openai.OpenAI, text: str) -> int:
    usage = client.chat.completions.create(model=GPT, messages=user(text)).usage
    assert usage is not None
    return usage.completion_tokens


def get_json(url: str) -> Any:
    with urllib.request.urlopen(url, timeout=5) as resp:
        return json.loads(resp.read())


def post_raw(url: str, payload: Any, headers: dict[str, str] | None = None
             ) -> tuple[int, Any]:
    """POST without an SDK's client-side checks; returns (status, parsed body)."""
    data = payload if isinstance(payload, bytes) else json.dumps(payload).encode()
    req = urllib.request.Request(
        url, data=data, headers={"content-type": "application/json", **(headers or {})}
    )
    try:
        with urllib.request.urlopen(req, timeout=5) as resp:
            return resp.status, json.loads(resp.read())
    except urllib.error.HTTPError as error:
        with error:
            return error.code, json.loads(error.read())


def post_json(url: str, payload: Any) -> Any:
    req = urllib.request.Request(
        url, data=json.dumps(payload).encode(), headers={"content-type": "application/json"}
    )
    with urllib.request.urlopen(req, timeout=5) as resp:
        return json.loads(resp.read())


# ---------------------------------------------------------------------------------------
# Tokens
# ---------------------------------------------------------------------------------------


def test_reply_text_is_one_o200k_token_per_word() -> None:
    for n in range(0, 300):
        assert count_text(reply_text(n)) == n


# ---------------------------------------------------------------------------------------
# OpenAI chat
# ---------------------------------------------------------------------------------------


def test_chat_non_stream_exact_usage_and_tally(fake: FakeUpstream, oc: openai.OpenAI) -> None:
    messages = [
        {"role": "system", "content": "You are terse."},
        {"role": "user", "content": "Hello there", "name": "bob"},
    ]
    r = oc.chat.completions.create(model=GPT, messages=messages)  # type: ignore[arg-type]
    assert r.object == "chat.completion"
    assert r.model == GPT
    assert r.id.startswith("chatcmpl-")
    assert r.choices[0].message.role == "assistant"
    assert r.choices[0].message.content == reply_text(12)
    assert r.choices[0].finish_reason == "stop"
    assert r.usage is not None
    assert r.usage.prompt_tokens == chat_prompt_tokens(messages)
    assert r.usage.completion_tokens == 12
    assert r.usage.total_tokens == r.usage.prompt_tokens + 12
    rec = fake.tally.last
    assert rec is not None
    assert (rec.route, rec.model, rec.stream, rec.status) == ("/v1/chat/completions", GPT,
                                                             False, 200)
    assert rec.completed and not rec.cut
    assert rec.api_key == "sk-test"
    assert rec.input_tokens == r.usage.prompt_tokens
    assert rec.output_tokens == 12
    assert rec.headers["authorization"] == "Bearer sk-test"
    assert rec.body["messages"] == messages
    assert fake.tally.requests == 1
    assert fake.tally.input_tokens == r.usage.prompt_tokens
    assert fake.tally.output_tokens == 12


def test_chat_max_tokens_cuts_with_length(oc: openai.OpenAI) -> None:
    r = oc.chat.completions.create(model=GPT, messages=user("hi"), max_tokens=5)
    assert r.choices[0].message.content == reply_text(5)
    assert r.choices[0].finish_reason == "length"
    assert r.usage is not None and r.usage.completion_tokens == 5
    r = oc.chat.completions.create(model=GPT, messages=user("hi"), max_completion_tokens=3)
    assert r.choices[0].finish_reason == "length"
    assert r.usage is not None and r.usage.completion_tokens == 3
    r = oc.chat.completions.create(model=GPT, messages=user("hi [[fake:output_tokens=4]]"),
                                   max_tokens=100)
    assert r.choices[0].finish_reason == "stop"
    assert r.usage is not None and r.usage.completion_tokens == 4


def test_chat_stream_with_include_usage(fake: FakeUpstream, oc: openai.OpenAI) -> None:
    stream = oc.chat.completions.create(
        model=GPT, messages=user("stream please"), stream=True,
        stream_options={"include_usage": True},
    )
    chunks = list(stream)
    assert all(c.object == "chat.completion.chunk" for c in chunks)
    assert chunks[0].choices[0].delta.role == "assistant"
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == reply_text(12)
    finish = [c.choices[0].finish_reason for c in chunks if c.choices and
              c.choices[0].finish_reason]
    assert finish == ["stop"]
    last = chunks[-1]
    assert last.choices == []
    assert last.usage is not None
    assert last.usage.completion_tokens == 12
    assert last.usage.prompt_tokens == chat_prompt_tokens(user("stream please"))
    assert all(c.usage is None for c in chunks[:-1])
    rec = fake.tally.last
    assert rec is not None and rec.stream and rec.completed
    assert (rec.input_tokens, rec.output_tokens) == (last.usage.prompt_tokens, 12)


def test_chat_stream_without_usage(oc: openai.OpenAI) -> None:
    chunks = list(oc.chat.completions.create(model=GPT, messages=user("x"), stream=True))
    assert all(c.usage is None for c in chunks)
    assert all(c.choices for c in chunks)
    chunks = list(oc.chat.completions.create(
        model=GPT, messages=user("x [[fake:no_usage]]"), stream=True,
        stream_options={"include_usage": True},
    ))
    assert all(c.usage is None and c.choices for c in chunks)
    assert "".join(c.choices[0].delta.content or "" for c in chunks) == reply_text(12)


def test_chat_no_usage_non_stream(oc: openai.OpenAI) -> None:
    r = oc.chat.completions.create(model=GPT, messages=user("[[fake:no_usage]]"))
    assert r.usage is None
    assert r.choices[0].message.content == reply_text(12)


def test_refuse_stream_options_is_a_400_and_its_streams_carry_no_usage(
        fake: FakeUpstream, oc: openai.OpenAI) -> None:
    refusing = "[[fake:refuse_stream_options]]"
    for options in ({"include_usage": True}, {"include_usage": False}):
        with pytest.raises(openai.BadRequestError, match="stream_options"):
            oc.chat.completions.create(model=GPT, messages=user(refusing), stream=True,
                                       stream_options=options)  # type: ignore[arg-type]
        rec = fake.tally.last
        assert rec is not None and rec.status == 400 and rec.output_tokens == 0
    with pytest.raises(openai.BadRequestError, match="stream_options"):
        oc.completions.create(model="gpt-3.5-turbo-instruct", prompt=refusing, stream=True,
                              stream_options={"include_usage": True})
    chunks = list(oc.chat.completions.create(model=GPT, messages=user(refusing), stream=True))
    assert all(c.usage is None and c.choices for c in chunks)
    assert "".join(c.choices[0].delta.content or "" for c in chunks) == reply_text(12)
    rec = fake.tally.last
    assert rec is not None and rec.completed and rec.output_tokens == 12


def test_usage_dialects_of_xai_and_deepseek(oc: openai.OpenAI) -> None:
    raw = oc.chat.completions.with_raw_response.create(
        model=GPT, messages=user("[[fake:usage_dialect=xai,reasoning_tokens=30]]"))
    usage = json.loads(raw.content)["usage"]
    assert usage["completion_tokens"] == 12
    assert usage["completion_tokens_details"]["reasoning_tokens"] == 30
    assert usage["total_tokens"] == usage["prompt_tokens"] + 12 + 30
    raw = oc.chat.completions.with_raw_response.create(
        model=GPT, messages=user("[[fake:usage_dialect=deepseek,cached_tokens=10]]"))
    usage = json.loads(raw.content)["usage"]
    assert "prompt_tokens_details" not in usage
    assert usage["prompt_cache_hit_tokens"] == 10
    assert usage["prompt_cache_miss_tokens"] == usage["prompt_tokens"] - 10


def test_usage_dialects_of_mistral_and_groq_streams(oc: openai.OpenAI) -> None:
    chunks = list(oc.chat.completions.create(
        model=GPT, messages=user("[[fake:usage_dialect=mistral]]"), stream=True))
    *body, last = chunks
    assert last.choices[0].finish_reason == "stop"
    assert last.usage is not None and last.usage.completion_tokens == 12
    assert all(c.usage is None for c in body)
    chunks = list(oc.chat.completions.create(
        model=GPT, messages=user("[[fake:usage_dialect=groq]]"), stream=True,
        stream_options={"include_usage": True}))
    finish, usage_chunk = chunks[-2:]
    extra = finish.model_extra or {}
    assert finish.choices[0].finish_reason == "stop" and finish.usage is None
    assert extra["x_groq"]["usage"]["completion_tokens"] == 12
    assert usage_chunk.usage is not None and usage_chunk.usage.completion_tokens == 12


def test_chat_tool_call(fake: FakeUpstream, oc: openai.OpenAI) -> None:
    r = oc.chat.completions.create(
        model=GPT, messages=user("weather? [[fake:tool_call=get_weather]]"),
        tools=[WEATHER_TOOL],
    )
    choice = r.choices[0]
    assert choice.finish_reason == "tool_calls"
    assert choice.message.content is None
    assert choice.message.tool_calls is not None
    call = choice.message.tool_calls[0]
    assert call.type == "function"
    assert call.id.startswith("call_")
    assert call.function.name == "get_weather"
    args = json.loads(call.function.arguments)
    assert args == {"city": "alpha", "days": 1, "unit": "celsius"}
    assert r.usage is not None
    expected = count_text(call.function.arguments) + count_text("get_weather")
    assert r.usage.completion_tokens == expected
    # Streamed: the deltas concatenate into the same call.
    chunks = list(oc.chat.completions.create(
        model=GPT, messages=user("weather? [[fake:tool_call=get_weather]]"),
        tools=[WEATHER_TOOL], stream=True, stream_options={"include_usage": True},
    ))
    deltas = [tc for c in chunks if c.choices for tc in (c.choices[0].delta.tool_calls or [])]
    assert deltas[0].id is not None and deltas[0].id.startswith("call_")
    assert deltas[0].function is not None and deltas[0].function.name == "get_weather"
    streamed_args = "".join((d.function.arguments or "") for d in deltas if d.function)
    assert json.loads(streamed_args) == args
    assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] == "tool_calls"
    assert chunks[-1].usage is not None and chunks[-1].usage.completion_tokens == expected
    # Without tools in the request, the directive is ignored.
    r = oc.chat.completions.create(model=GPT, messages=user("[[fake:tool_call=get_weather]]"))
    assert r.choices[0].message.tool_calls is None
    assert r.choices[0].finish_reason == "stop"


def test_chat_stream_helper_accumulates(oc: openai.OpenAI) -> None:
    with oc.chat.completions.stream(
        model=GPT, messages=user("hi"), stream_options={"include_usage": True}
    ) as stream:
        for _ in stream:
            pass
        final = stream.get_final_completion()
    assert final.choices[0].message.content == reply_text(12)
    assert final.usage is not None and final.usage.completion_tokens == 12


def test_cached_and_reasoning_tokens_openai(fake: FakeUpstream, oc: openai.OpenAI) -> None:
    r = oc.chat.completions.create(
        model="o4-mini",
        messages=user("[[fake:cached_tokens=64,reasoning_tokens=10,input_tokens=100]]"),
    )
    assert r.usage is not None
    assert r.usage.prompt_tokens == 100
    assert r.usage.prompt_tokens_details is not None
    assert r.usage.prompt_tokens_details.cached_tokens == 64
    assert r.usage.completion_tokens_details is not None
    assert r.usage.completion_tokens_details.reasoning_tokens == 10
    assert r.usage.completion_tokens == 12 + 10
    rec = fake.tally.last
    assert rec is not None
    assert (rec.input_tokens, rec.cached_tokens, rec.output_tokens, rec.reasoning_tokens) == (
        100, 64, 22, 10)
    # Cached tokens beyond the counted prompt raise the prompt to cover them.
    r = oc.chat.completions.create(model=GPT, messages=user("[[fake:cached_tokens=500]]"))
    assert r.usage is not None and r.usage.prompt_tokens == 500


async def test_async_openai_client(fake: FakeUpstream, url: str) -> None:
    async with openai.AsyncOpenAI(base_url=f"{url}/v1", api_key="sk-async", max_retries=0,
                                  timeout=5.0) as client:
        r = await client.chat.completions.create(model=GPT, messages=user("hi"))
        assert r.choices[0].message.content == reply_text(12)
        stream = await client.chat.completions.create(
            model=GPT, messages=user("hi"), stream=True, stream_options={"include_usage": True}
        )
        chunks = [c async for c in stream]
        assert chunks[-1].usage is not None and chunks[-1].usage.completion_tokens == 12
        with pytest.raises(openai.InternalServerError):
            await client.chat.completions.create(model=GPT, messages=user("[[fake:status=500]]"))
    assert fake.tally.records[0].api_key == "sk-async"


# ---------------------------------------------------------------------------------------
# OpenAI: completions, embeddings, moderations, models
# ---------------------------------------------------------------------------------------


def test_legacy_completions(fake: FakeUpstream, oc: openai.OpenAI) -> None:
    r = oc.completions.create(model="gpt-3.5-turbo-instruct", prompt="Once upon a time",
                              max_tokens=7)
    assert r.object == "text_completion"
    assert r.choices[0].text == reply_text(7)
    assert r.choices[0].finish_reason == "length"
    assert r.usage is not None
    assert (r.usage.prompt_tokens, r.usage.completion_tokens) == (
        count_text("Once upon a time"), 7)
    chunks = list(oc.completions.create(
        model="gpt-3.5-turbo-instruct", prompt="Once upon a time", stream=True,
        stream_options={"include_usage": True},
    ))
    assert "".join(c.choices[0].text for c in chunks if c.choices) == reply_text(12)
    assert chunks[-1].choices == []
    assert chunks[-1].usage is not None and chunks[-1].usage.completion_tokens == 12
    assert fake.tally.output_tokens == 7 + 12


def test_embeddings_base64_default_and_float(fake: FakeUpstream, oc: openai.OpenAI) -> None:
    r = oc.embeddings.create(model="text-embedding-3-small", input=["hello world", "bye"])
    # The SDK asks for base64 unless told otherwise, and decodes it to floats itself.
    rec = fake.tally.last
    assert rec is not None and rec.body["encoding_format"] == "base64"
    assert len(r.data) == 2
    assert [d.index for d in r.data] == [0, 1]
    assert all(len(d.embedding) == 8 for d in r.data)
    assert r.usage.prompt_tokens == count_text("hello world") + count_text("bye")
    assert rec.input_tokens == r.usage.prompt_tokens and rec.output_tokens == 0
    floats = oc.embeddings.create(model="text-embedding-3-small", input=["hello world", "bye"],
                                  encoding_format="float")
    assert fake.tally.last is not None and fake.tally.last.body["encoding_format"] == "float"
    assert [d.embedding for d in floats.data] == [d.embedding for d in r.data]
    norm = sum(x * x for x in floats.data[0].embedding) ** 0.5
    assert abs(norm - 1.0) < 1e-5
    assert floats.data[0].embedding != floats.data[1].embedding
    # Asked for explicitly, base64 comes back as the raw string.
    raw = oc.embeddings.create(model="text-embedding-3-small", input="hello world",
                               encoding_format="base64", dimensions=4)
    encoded = raw.data[0].embedding
    assert isinstance(encoded, str)
    assert len(struct.unpack("<4f", base64.b64decode(encoded))) == 4
    tokens = oc.embeddings.create(model="text-embedding-3-small", input=[[1, 2, 3], [4, 5]])
    assert tokens.usage.prompt_tokens == 5


def test_moderations(oc: openai.OpenAI) -> None:
    r = oc.moderations.create(input=["a nice day", "something forbidden here"])
    assert r.model == "omni-moderation-latest"
    assert [x.flagged for x in r.results] == [False, True]
    assert r.results[1].categories.violence is True
    assert r.results[1].categories.harassment is False
    assert r.results[1].category_scores.violence > 0.9
    assert r.results[0].category_applied_input_types.violence == ["text"]
    single = oc.moderations.create(input="FORBIDDEN", model="omni-moderation-latest")
    assert single.results[0].flagged
    parts: Any = [
        {"type": "text", "text": "forbidden"},
        {"type": "image_url", "image_url": {"url": "data:image/png;base64,AAAA"}},
    ]
    multi = oc.moderations.create(input=parts)
    assert len(multi.results) == 1 and multi.results[0].flagged


def test_models(oc: openai.OpenAI, ac: anthropic.Anthropic) -> None:
    ids = [m.id for m in oc.models.list()]
    assert GPT in ids and CLAUDE in ids
    model = oc.models.retrieve(GPT)
    assert (model.id, model.object, model.owned_by) == (GPT, "model", "openai")
    with pytest.raises(openai.NotFoundError):
        oc.models.retrieve("no-such-model")
    claude = [m for m in ac.models.list() if m.id == CLAUDE]
    assert claude and claude[0].type == "model" and claude[0].display_name


# ---------------------------------------------------------------------------------------
# OpenAI Responses
# ---------------------------------------------------------------------------------------


def test_responses_non_stream(fake: FakeUpstream, oc: openai.OpenAI) -> None:
    r = oc.responses.create(model=GPT, input="Tell me a story", instructions="Be brief.")
    assert r.object == "response" and r.status == "completed"
    assert r.output_text == reply_text(12)
    assert r.instructions == "Be brief."
    assert r.usage is not None
    expected_in = chat_prompt_tokens([
        {"role": "developer", "content": "Be brief."},
        {"role": "user", "content": "Tell me a story"},
    ])
    assert r.usage.input_tokens == expected_in
    assert r.usage.output_tokens == 12
    assert r.usage.total_tokens == expected_in + 12
    rec = fake.tally.last
    assert rec is not None and rec.route == "/v1/responses" and rec.input_tokens == expected_in
    cut = oc.responses.create(model=GPT, input=[{"role": "user", "content": "hi"}],
                              max_output_tokens=16, extra_body={})
    assert cut.status == "completed"
    cut = oc.responses.create(model=GPT, input="hi [[fake:output_tokens=40]]",
                              max_output_tokens=16)
    assert cut.status == "incomplete"
    assert cut.incomplete_details is not None
    assert cut.incomplete_details.reason == "max_output_tokens"
    assert cut.usage is not None and cut.usage.output_tokens == 16


def test_previous_response_id_bills_the_earlier_turns(oc: openai.OpenAI) -> None:
    first = oc.responses.create(model=GPT, input="Tell me a story")
    second = oc.responses.create(model=GPT, input="And then?", previous_response_id=first.id)
    assert first.usage is not None and second.usage is not None
    alone = chat_prompt_tokens([{"role": "user", "content": "And then?"}])
    assert second.usage.input_tokens == first.usage.input_tokens + 12 + alone
    third = oc.responses.create(model=GPT, input="Go on", previous_response_id=second.id)
    assert third.usage is not None
    assert third.usage.input_tokens > second.usage.input_tokens + 12
    with pytest.raises(openai.BadRequestError, match="Previous response with id"):
        oc.responses.create(model=GPT, input="x", previous_response_id="resp_nope")
    unstored = oc.responses.create(model=GPT, input="x", store=False)
    with pytest.raises(openai.NotFoundError):
        oc.responses.retrieve(unstored.id)


def test_structured_output_schemas_are_billed_as_input(oc: openai.OpenAI) -> None:
    schema = {"type": "object", "properties": {"a": {"type": "string"}}}
    fmt = {"type": "json_schema", "name": "a", "schema": schema}
    plain = oc.responses.create(model=GPT, input="fill")
    shaped = oc.responses.create(model=GPT, input="fill", text={"format": fmt})
    assert plain.usage is not None and shaped.usage is not None
    assert shaped.usage.input_tokens - plain.usage.input_tokens == count_text(
        json.dumps(fmt, separators=(",", ":")))
    chat = oc.chat.completions.create(model=GPT, messages=user("fill"), response_format={
        "type": "json_schema", "json_schema": {"name": "a", "schema": schema}})
    bare = oc.chat.completions.create(model=GPT, messages=user("fill"))
    assert chat.usage is not None and bare.usage is not None
    assert chat.usage.prompt_tokens > bare.usage.prompt_tokens


def test_background_responses_complete_on_a_poll_and_are_billed_once(
        fake: FakeUpstream, oc: openai.OpenAI) -> None:
    created = oc.responses.create(model=GPT, input="essay [[fake:background_polls=3]]",
                                  background=True)
    assert (created.status, created.usage, created.background) == ("queued", None, True)
    assert fake.tally.output_tokens == 0
    assert [oc.responses.retrieve(created.id).status for _ in range(3)] == [
        "in_progress", "in_progress", "completed"]
    done = oc.responses.retrieve(created.id)
    assert done.usage is not None and done.usage.output_tokens == 12
    assert done.output_text == reply_text(12)
    [bill] = [r for r in fake.tally.records if r.method == "BACKGROUND"]
    assert (bill.request_id, bill.outcome, bill.output_tokens) == (created.id, "completed", 12)
    assert fake.tally.output_tokens == 12  # billed once, whatever the number of polls
    items = oc.responses.input_items.list(created.id)
    assert [item.type for item in items] == ["message"]
    oc.responses.delete(created.id)
    with pytest.raises(openai.NotFoundError):
        oc.responses.retrieve(created.id)


def test_background_responses_held_cancelled_or_finished(fake: FakeUpstream,
                                                         oc: openai.OpenAI, url: str) -> None:
    queued = oc.responses.create(model=GPT, input="x [[fake:background_hold]]",
                                 background=True)
    cancelled = oc.responses.cancel(queued.id)
    assert cancelled.status == "cancelled" and cancelled.usage is not None
    assert cancelled.usage.total_tokens == 0  # nothing ran yet
    running = oc.responses.create(model=GPT, input="y [[fake:background_hold,output_tokens=20]]",
                                  background=True)
    for _ in range(5):
        assert oc.responses.retrieve(running.id).status == "in_progress"
    stopped = oc.responses.cancel(running.id)
    assert stopped.usage is not None and stopped.usage.output_tokens == 10
    assert oc.responses.cancel(running.id).status == "cancelled"  # once
    held = oc.responses.create(model=GPT, input="z [[fake:background_hold]]", background=True)
    assert post_json(f"{url}/_fake/responses/{held.id}/finish", {}) == {"ok": True}
    assert oc.responses.retrieve(held.id).status == "completed"
    assert not fake.finish_background(held.id)
    foreground = oc.responses.create(model=GPT, input="now")
    with pytest.raises(openai.BadRequestError):
        oc.responses.cancel(foreground.id)
    bills = [r.outcome for r in fake.tally.records if r.method == "BACKGROUND"]
    assert bills == ["cancelled", "cancelled", "completed"]


def test_a_background_response_can_be_streamed_again(fake: FakeUpstream,
                                                     oc: openai.OpenAI) -> None:
    created = oc.responses.create(model=GPT, input="x [[fake:background_hold]]",
                                  background=True)
    events = list(oc.responses.retrieve(created.id, stream=True, starting_after=1))
    assert [e.sequence_number for e in events] == list(range(2, 2 + len(events)))
    assert events[-1].type == "response.completed"
    assert [r.outcome for r in fake.tally.records if r.method == "BACKGROUND"] == ["completed"]
    foreground = oc.responses.create(model=GPT, input="y")
    with pytest.raises(openai.BadRequestError):
        list(oc.responses.retrieve(foreground.id, stream=True))


def test_a_background_stream_left_early_still_completes(fake: FakeUpstream,
                                                         oc: openai.OpenAI) -> None:
    with oc.responses.create(model=GPT, background=True, stream=True,
                             input="x [[fake:output_tokens=30,chunk_delay_ms=20]]") as stream:
        for event in stream:
            if event.type == "response.output_text.delta":
                break
    assert fake.tally.wait_for(lambda t: any(r.method == "BACKGROUND" for r in t.records))
    [bill] = [r for r in fake.tally.records if r.method == "BACKGROUND"]
    assert bill.output_tokens == 30
    post = next(r for r in fake.tally.records if r.route == "/v1/responses")
    assert post.output_tokens == 0  # billed once, as the background response
    assert oc.responses.retrieve(bill.request_id).status == "completed"


def test_responses_cached_and_reasoning(oc: openai.OpenAI) -> None:
    r = oc.responses.create(
        model="o4-mini",
        input="[[fake:cached_tokens=30,reasoning_tokens=7,input_tokens=50]]",
    )
    assert r.usage is not None
    assert r.usage.input_tokens == 50
    assert r.usage.input_tokens_details.cached_tokens == 30
    assert r.usage.output_tokens_details.reasoning_tokens == 7
    assert r.usage.output_tokens == 19


def test_responses_stream_event_sequence(fake: FakeUpstream, oc: openai.OpenAI) -> None:
    events = list(oc.responses.create(model=GPT, input="stream it", stream=True))
    types = [e.type for e in events]
    assert types == [
        "response.created",
        "response.in_progress",
        "response.output_item.added",
        "response.content_part.added",
        *["response.output_text.delta"] * 12,
        "response.output_text.done",
        "response.content_part.done",
        "response.output_item.done",
        "response.completed",
    ]
    assert [e.sequence_number for e in events] == list(range(len(events)))
    done = events[-1]
    assert done.type == "response.completed"
    assert done.response.output_text == reply_text(12)
    assert done.response.usage is not None and done.response.usage.output_tokens == 12
    rec = fake.tally.last
    assert rec is not None and rec.stream and rec.output_tokens == 12
    with oc.responses.stream(model=GPT, input="stream it") as stream:
        deltas = [e.delta for e in stream if e.type == "response.output_text.delta"]
        final = stream.get_final_response()
    assert "".join(deltas) == reply_text(12) == final.output_text


def test_responses_tool_call(oc: openai.OpenAI) -> None:
    tool: Any = {"type": "function", "name": "get_weather",
            "parameters": WEATHER_TOOL["function"]["parameters"]}
    r = oc.responses.create(model=GPT, input="[[fake:tool_call=get_weather]]",
                            tools=[tool])
    item = r.output[0]
    assert item.type == "function_call"
    assert item.name == "get_weather"
    assert json.loads(item.arguments)["city"] == "alpha"
    events: list[Any] = list(oc.responses.create(
        model=GPT, input="[[fake:tool_call=get_weather]]", tools=[tool], stream=True))
    args = "".join(e.delta for e in events if e.type == "response.function_call_arguments.delta")
    assert json.loads(args) == json.loads(item.arguments)
    assert events[-1].type == "response.completed"


# ---------------------------------------------------------------------------------------
# Anthropic
# ---------------------------------------------------------------------------------------


def test_messages_non_stream(fake: FakeUpstream, ac: anthropic.Anthropic) -> None:
    msg = ac.messages.create(model=CLAUDE, max_tokens=100, system="Be terse.",
                             messages=user("Hello"))
    assert msg.type == "message" and msg.role == "assistant" and msg.model == CLAUDE
    assert msg.id.startswith("msg_")
    assert msg.content[0].type == "text" and msg.content[0].text == reply_text(12)
    assert msg.stop_reason == "end_turn"
    expected_in = chat_prompt_tokens([{"role": "system", "content": "Be terse."},
                                      {"role": "user", "content": "Hello"}])
    assert msg.usage.input_tokens == expected_in
    assert msg.usage.output_tokens == 12
    assert msg.usage.cache_read_input_tokens == 0
    assert msg._request_id is not None and msg._request_id.startswith("req_")
    rec = fake.tally.last
    assert rec is not None and rec.api_key == "sk-ant-test"
    # anthropic SDK 2.x sends the key as a Bearer token, not x-api-key.
    assert rec.headers["authorization"] == "Bearer sk-ant-test"
    assert "anthropic-version" in rec.headers
    short = ac.messages.create(model=CLAUDE, max_tokens=3, messages=user("Hello"))
    assert short.stop_reason == "max_tokens" and short.usage.output_tokens == 3


def test_messages_cache_tokens_exclude_from_input(fake: FakeUpstream,
                                                   ac: anthropic.Anthropic) -> None:
    msg = ac.messages.create(
        model=CLAUDE, max_tokens=100,
        messages=user("[[fake:input_tokens=200,cached_tokens=120,cache_write_tokens=30]]"),
    )
    assert msg.usage.input_tokens == 50  # Anthropic's input excludes cache reads and writes
    assert msg.usage.cache_read_input_tokens == 120
    assert msg.usage.cache_creation_input_tokens == 30
    rec = fake.tally.last
    assert rec is not None
    assert (rec.input_tokens, rec.cached_tokens, rec.cache_write_tokens) == (200, 120, 30)


def test_messages_stream_events_and_helper(fake: FakeUpstream, ac: anthropic.Anthropic) -> None:
    events = list(ac.messages.create(model=CLAUDE, max_tokens=100, messages=user("Hi"),
                                     stream=True))
    types = [e.type for e in events]  # the SDK skips ping
    assert types == ["message_start", "content_block_start",
                     *["content_block_delta"] * 12,
                     "content_block_stop", "message_delta", "message_stop"]
    start = events[0]
    assert start.type == "message_start"
    assert start.message.usage.input_tokens == chat_prompt_tokens(user("Hi"))
    delta = events[-2]
    assert delta.type == "message_delta"
    assert delta.usage.output_tokens == 12 and delta.delta.stop_reason == "end_turn"
    with ac.messages.stream(model=CLAUDE, max_tokens=100,
                            messages=user("Hi [[fake:cached_tokens=40]]")) as stream:
        text = "".join(stream.text_stream)
        final = stream.get_final_message()
    assert text == reply_text(12) == final.content[0].text  # type: ignore[union-attr]
    assert final.usage.output_tokens == 12
    assert final.usage.cache_read_input_tokens == 40
    rec = fake.tally.last
    assert rec is not None and rec.stream and rec.output_tokens == 12


def test_messages_raw_sse_has_ping_and_event_lines(fake: FakeUpstream, url: str) -> None:
    req = urllib.request.Request(
        f"{url}/v1/messages",
        data=json.dumps({"model": CLAUDE, "max_tokens": 2, "stream": True,
                         "messages": user("hi")}).encode(),
        headers={"content-type": "application/json", "x-api-key": "k",
                 "anthropic-version": "2023-06-01"},
    )
    with urllib.request.urlopen(req, timeout=5) as resp:
        assert resp.headers["content-type"].startswith("text/event-stream")
        raw = resp.read().decode()
    frames = [f for f in raw.split("\n\n") if f]
    names = [f.split("\n")[0] for f in frames]
    assert names[:3] == ["event: message_start", "event: content_block_start", "event: ping"]
    assert names[-1] == "event: message_stop"
    assert fake.tally.last is not None and fake.tally.last.api_key == "k"  # from x-api-key


def test_messages_tool_use(ac: anthropic.Anthropic) -> None:
    tool: Any = {"name": "get_weather", "description": "Weather",
            "input_schema": WEATHER_TOOL["function"]["parameters"]}
    msg = ac.messages.create(model=CLAUDE, max_tokens=100, tools=[tool],
                             messages=user("weather [[fake:tool_call=get_weather]]"))
    assert msg.stop_reason == "tool_use"
    block = msg.content[0]
    assert block.type == "tool_use" and block.name == "get_weather"
    assert block.input == {"city": "alpha", "days": 1, "unit": "celsius"}
    assert block.id.startswith("toolu_")
    with ac.messages.stream(model=CLAUDE, max_tokens=100, tools=[tool],
                            messages=user("weather [[fake:tool_call=get_weather]]")) as stream:
        final = stream.get_final_message()
    streamed = final.content[0]
    assert streamed.type == "tool_use" and streamed.input == block.input
    assert final.stop_reason == "tool_use"
    assert final.usage.output_tokens == msg.usage.output_tokens


def test_count_tokens_matches_messages_usage(fake: FakeUpstream, ac: anthropic.Anthropic
                                             ) -> None:
    messages = [
        {"role": "user", "content": "What is up?"},
        {"role": "assistant", "content": [{"type": "text", "text": "Not much."}]},
        {"role": "user", "content": "ok"},
    ]
    counted = ac.messages.count_tokens(model=CLAUDE, system="sys",
                                       messages=messages)  # type: ignore[arg-type]
    msg = ac.messages.create(model=CLAUDE, max_tokens=10, system="sys",
                             messages=messages)  # type: ignore[arg-type]
    assert counted.input_tokens == msg.usage.input_tokens > 0
    records = fake.tally.records
    assert records[0].route == "/v1/messages/count_tokens"
    assert records[0].input_tokens == 0  # counting is not billed usage


def test_anthropic_requires_max_tokens(url: str) -> None:
    status, body = post_raw(f"{url}/v1/messages", {"model": CLAUDE, "messages": user("hi")},
                            {"anthropic-version": "2023-06-01"})
    assert status == 400
    assert body["type"] == "error"
    assert body["error"] == {"type": "invalid_request_error",
                             "message": "max_tokens: Field required"}


# ---------------------------------------------------------------------------------------
# Errors
# ---------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("status", "exc"),
    [
        (400, openai.BadRequestError),
        (401, openai.AuthenticationError),
        (403, openai.PermissionDeniedError),
        (404, openai.NotFoundError),
        (429, openai.RateLimitError),
        (500, openai.InternalServerError),
        (503, openai.InternalServerError),
    ],
)
def test_openai_error_statuses(fake: FakeUpstream, oc: openai.OpenAI, status: int,
                               exc: type[openai.APIStatusError]) -> None:
    with pytest.raises(exc) as info:
        oc.chat.completions.create(model=GPT, messages=user(f"[[fake:status={status}]]"))
    assert info.value.status_code == status
    body = info.value.body
    assert isinstance(body, dict) and set(body) == {"message", "type", "param", "code"}
    rec = fake.tally.last
    assert rec is not None and rec.status == status and rec.outcome == "error"
    assert (rec.input_tokens, rec.output_tokens) == (0, 0)
    assert fake.tally.errors == 1 and fake.tally.input_tokens == 0


@pytest.mark.parametrize(
    ("status", "exc", "kind"),
    [
        (400, anthropic.BadRequestError, "invalid_request_error"),
        (401, anthropic.AuthenticationError, "authentication_error"),
        (403, anthropic.PermissionDeniedError, "permission_error"),
        (404, anthropic.NotFoundError, "not_found_error"),
        (429, anthropic.RateLimitError, "rate_limit_error"),
        (500, anthropic.InternalServerError, "api_error"),
        (529, anthropic.OverloadedError, "overloaded_error"),
    ],
)
def test_anthropic_error_statuses(ac: anthropic.Anthropic, status: int,
                                  exc: type[anthropic.APIStatusError], kind: str) -> None:
    with pytest.raises(exc) as info:
        ac.messages.create(model=CLAUDE, max_tokens=10,
                           messages=user(f"[[fake:status={status}]]"))
    assert info.value.status_code == status
    body = info.value.body
    assert isinstance(body, dict) and body["type"] == "error"
    assert body["error"]["type"] == kind


def test_retry_after_header_and_sdk_retry(fake: FakeUpstream, url: str,
                                          oc: openai.OpenAI) -> None:
    with pytest.raises(openai.RateLimitError) as info:
        oc.chat.completions.create(model=GPT, messages=user("[[fake:status=429,retry_after=2]]"))
    assert info.value.response.headers["retry-after"] == "2"
    # A scripted 429 then success: the SDK's own retry honours retry-after (0.1 s here).
    fake.script([{"status": 429, "retry_after": 0.1}])
    with openai.OpenAI(base_url=f"{url}/v1", api_key="k", max_retries=1) as client:
        r = client.chat.completions.create(model=GPT, messages=user("hi"))
    assert r.choices[0].message.content == reply_text(12)
    assert [rec.status for rec in fake.tally.records][-2:] == [429, 200]


def test_unknown_directive_is_a_400(oc: openai.OpenAI) -> None:
    with pytest.raises(openai.BadRequestError, match="unknown fake directive"):
        oc.chat.completions.create(model=GPT, messages=user("[[fake:stauts=500]]"))


def test_unknown_route_and_bad_json(url: str) -> None:
    with pytest.raises(urllib.error.HTTPError) as info:
        get_json(f"{url}/v1/nope")
    with info.value as error:
        assert error.code == 404
        assert json.loads(error.read())["error"]["type"] == "invalid_request_error"
    status, body = post_raw(f"{url}/v1/chat/completions", b"{not json")
    assert status == 400 and body["error"]["type"] == "invalid_request_error"


def test_require_key() -> None:
    fake = FakeUpstream(require_key="sk-good")
    with fake.serve() as server:
        with openai.OpenAI(base_url=f"{server.url}/v1", api_key="sk-bad",
                           max_retries=0) as bad, pytest.raises(openai.AuthenticationError):
            bad.chat.completions.create(model=GPT, messages=user("hi"))
        with anthropic.Anthropic(base_url=server.url, api_key="sk-bad",
                                 max_retries=0) as abad, \
                pytest.raises(anthropic.AuthenticationError) as info:
            abad.messages.create(model=CLAUDE, max_tokens=5, messages=user("hi"))
        assert info.value.body["error"]["type"] == "authentication_error"  # type: ignore[index]
        with openai.OpenAI(base_url=f"{server.url}/v1", api_key="sk-good",
                           max_retries=0) as good:
            assert good.chat.completions.create(model=GPT, messages=user("hi")).choices
        with anthropic.Anthropic(base_url=server.url, api_key="sk-good",
                                 max_retries=0) as agood:
            assert agood.messages.create(model=CLAUDE, max_tokens=5, messages=user("hi")).content
    assert [r.api_key for r in fake.tally.records] == ["sk-bad", "sk-bad", "sk-good", "sk-good"]
    assert [r.status for r in fake.tally.records] == [401, 401, 200, 200]


# ---------------------------------------------------------------------------------------
# Timing and connection directives
# ---------------------------------------------------------------------------------------


def test_delay_ms(oc: openai.OpenAI) -> None:
    t0 = time.perf_counter()
    oc.chat.completions.create(model=GPT, messages=user("[[fake:delay_ms=200]]"))
    assert time.perf_counter() - t0 >= 0.2


def test_chunk_delay_ms_spaces_chunks(fake: FakeUpstream, oc: openai.OpenAI) -> None:
    t0 = time.perf_counter()
    stream = oc.chat.completions.create(
        model=GPT, messages=user("[[fake:chunk_delay_ms=30]] [[fake:output_tokens=5]]"),
        stream=True,
    )
    arrivals = [time.perf_counter() - t0 for _ in stream]
    # 5 tokens + the end, 30 ms apart (a busy client reads late, never early: no gap
    # between two arrivals is checked, since a client that fell behind reads several at once)
    assert arrivals[-1] >= 0.15
    assert fake.tally.last is not None and fake.tally.last.directives == {
        "chunk_delay_ms": 30.0, "output_tokens": 5}


def test_hang_until_client_gives_up(fake: FakeUpstream, oc: openai.OpenAI) -> None:
    t0 = time.perf_counter()
    with pytest.raises(openai.APITimeoutError):
        oc.with_options(timeout=0.3).chat.completions.create(
            model=GPT, messages=user("[[fake:hang]]"))
    assert time.perf_counter() - t0 < 2
    assert fake.tally.wait_for(lambda t: t.requests == 1, timeout=3)
    rec = fake.tally.last
    assert rec is not None and rec.outcome == "client_disconnected" and rec.cut
    assert fake.tally.in_flight == 0


def test_client_leaving_a_slow_stream_is_recorded(fake: FakeUpstream, oc: openai.OpenAI) -> None:
    stream = oc.chat.completions.create(
        model=GPT, messages=user("[[fake:chunk_delay_ms=50,output_tokens=100]]"), stream=True)
    got = [next(stream) for _ in range(4)]  # role chunk + 3 tokens
    stream.close()
    assert len(got) == 4
    assert fake.tally.wait_for(lambda t: t.requests == 1, timeout=3)
    rec = fake.tally.last
    assert rec is not None and rec.outcome == "client_disconnected"
    assert 3 <= rec.output_tokens < 10


def test_cut_after_drops_openai_stream(fake: FakeUpstream, oc: openai.OpenAI) -> None:
    pieces: list[str] = []
    with pytest.raises(openai.APIConnectionError):
        for chunk in oc.chat.completions.create(
            model=GPT, messages=user("[[fake:cut_after=3]]"), stream=True,
            stream_options={"include_usage": True},
        ):
            pieces.extend(c.delta.content or "" for c in chunk.choices)
    assert "".join(pieces) == reply_text(3)
    rec = fake.tally.last
    assert rec is not None and rec.outcome == "cut" and rec.cut and not rec.completed
    assert rec.output_tokens == 3 and rec.input_tokens > 0
    assert fake.tally.cut == 1


def test_cut_after_drops_anthropic_stream_and_non_stream(fake: FakeUpstream,
                                                         ac: anthropic.Anthropic,
                                                         oc: openai.OpenAI) -> None:
    texts: list[str] = []
    # The anthropic SDK lets the transport error through unwrapped.
    with pytest.raises((anthropic.APIConnectionError, httpx2.TransportError)):
        for event in ac.messages.create(model=CLAUDE, max_tokens=50, stream=True,
                                        messages=user("[[fake:cut_after=2]]")):
            if event.type == "content_block_delta" and event.delta.type == "text_delta":
                texts.append(event.delta.text)
    assert "".join(texts) == reply_text(2)
    with pytest.raises(openai.APIConnectionError):
        oc.chat.completions.create(model=GPT, messages=user("[[fake:cut_after=1]]"))
    outcomes = [r.outcome for r in fake.tally.records]
    assert outcomes == ["cut", "cut"]


def test_error_after_sends_in_stream_error(fake: FakeUpstream, oc: openai.OpenAI,
                                           ac: anthropic.Anthropic) -> None:
    seen = 0
    with pytest.raises(openai.APIError, match="error while processing"):
        for _ in oc.chat.completions.create(model=GPT, messages=user("[[fake:error_after=2]]"),
                                            stream=True):
            seen += 1
    assert seen == 3  # role chunk + 2 tokens
    with pytest.raises(anthropic.APIStatusError) as info:
        for _ in ac.messages.create(model=CLAUDE, max_tokens=50, stream=True,
                                    messages=user("[[fake:error_after=2]]")):
            pass
    assert info.value.body["error"]["type"] == "overloaded_error"  # type: ignore[index]
    events = list(oc.responses.create(model=GPT, input="[[fake:error_after=1]]", stream=True))
    assert events[-1].type == "response.failed"
    assert events[-1].sequence_number == len(events) - 1
    assert [r.outcome for r in fake.tally.records] == ["stream_error"] * 3
    assert [r.output_tokens for r in fake.tally.records] == [2, 2, 1]


def test_stall_after_until_read_timeout(fake: FakeUpstream, oc: openai.OpenAI) -> None:
    got: list[str] = []
    with pytest.raises(openai.APITimeoutError):
        for chunk in oc.with_options(timeout=0.3).chat.completions.create(
            model=GPT, messages=user("[[fake:stall_after=2]]"), stream=True
        ):
            got.extend(c.delta.content or "" for c in chunk.choices)
    assert "".join(got) == reply_text(2)
    assert fake.tally.wait_for(lambda t: t.requests == 1, timeout=3)
    assert fake.tally.records[0].outcome == "client_disconnected"


# ---------------------------------------------------------------------------------------
# Script queue, defaults, control over HTTP
# ---------------------------------------------------------------------------------------


def test_script_queue_then_text_wins(fake: FakeUpstream, oc: openai.OpenAI) -> None:
    fake.script([
        "[[fake:status=503]]",
        {"output_tokens": 2},
        Directives(output_tokens=3),
        {"output_tokens": 9},
        None,
    ])
    with pytest.raises(openai.InternalServerError):
        oc.chat.completions.create(model=GPT, messages=user("a"))
    assert completion_tokens(oc, "b") == 2
    assert completion_tokens(oc, "c") == 3
    r = oc.chat.completions.create(model=GPT, messages=user("[[fake:output_tokens=1]]"))
    assert r.usage is not None and r.usage.completion_tokens == 1
    assert fake.pending_script == 1
    r = oc.chat.completions.create(model=GPT, messages=user("e"))
    assert r.usage is not None and r.usage.completion_tokens == 12
    assert fake.pending_script == 0


def test_defaults_apply_to_every_request(fake: FakeUpstream, oc: openai.OpenAI) -> None:
    fake.set_defaults("[[fake:output_tokens=3]]")
    assert completion_tokens(oc, "a") == 3
    fake.settings.default_output_tokens = 4
    fake.set_defaults(None)
    assert completion_tokens(oc, "a") == 4
    fake.settings.default_output_tokens = 12


def test_http_control_routes(fake: FakeUpstream, url: str, oc: openai.OpenAI) -> None:
    oc.chat.completions.create(model=GPT, messages=user("hi"))
    tally = get_json(f"{url}/_fake/tally")
    assert tally["requests"] == 1 and tally["output_tokens"] == 12
    record = tally["records"][0]
    assert record["api_key"] == "sk-test" and record["completed"] is True
    assert record["headers"]["authorization"] == "Bearer sk-test"
    assert "records" not in get_json(f"{url}/_fake/tally?records=0")
    assert post_json(f"{url}/_fake/script", ["[[fake:output_tokens=2]]"])["pending"] == 1
    assert post_json(f"{url}/_fake/defaults", {"reasoning_tokens": 1})["ok"]
    r = oc.chat.completions.create(model=GPT, messages=user("hi"))
    assert r.usage is not None and r.usage.completion_tokens == 2 + 1
    assert post_json(f"{url}/_fake/reset", {})["ok"]
    assert get_json(f"{url}/_fake/tally")["requests"] == 0


def test_tally_totals_match_usage_across_apis(fake: FakeUpstream, oc: openai.OpenAI,
                                              ac: anthropic.Anthropic) -> None:
    u1 = oc.chat.completions.create(model=GPT, messages=user("one")).usage
    u2 = oc.responses.create(model=GPT, input="two").usage
    u3 = ac.messages.create(model=CLAUDE, max_tokens=9,
                            messages=user("three [[fake:cached_tokens=20]]")).usage
    assert u1 is not None and u2 is not None
    anthropic_in = u3.input_tokens + (u3.cache_read_input_tokens or 0)
    assert fake.tally.input_tokens == u1.prompt_tokens + u2.input_tokens + anthropic_in
    assert fake.tally.output_tokens == u1.completion_tokens + u2.output_tokens + u3.output_tokens
    assert fake.tally.cached_tokens == 20
    assert fake.tally.requests == 3 and fake.tally.in_flight == 0


# ---------------------------------------------------------------------------------------
# Serving helpers
# ---------------------------------------------------------------------------------------


def test_start_in_thread_serves_any_asgi_app() -> None:
    calls: list[str] = []

    async def app(scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            return
        calls.append(scope["path"])
        await send({"type": "http.response.start", "status": 200,
                    "headers": [(b"content-type", b"text/plain")]})
        await send({"type": "http.response.body", "body": b"ok"})

    base, stop = start_in_thread(app)
    try:
        with urllib.request.urlopen(f"{base}/ping", timeout=5) as resp:
            assert resp.read() == b"ok"
    finally:
        stop()
    assert calls == ["/ping"]
    with pytest.raises(OSError):
        urllib.request.urlopen(f"{base}/ping", timeout=1)
    with RunningServer(app) as server:
        assert server.running and server.port > 0
        with urllib.request.urlopen(f"{server.url}/x", timeout=5) as resp:
            assert resp.status == 200
    assert not server.running
    assert threading.active_count() < 50


def test_cli_process_prints_ready_line() -> None:
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    proc = subprocess.Popen(
        [sys.executable, "-m", "tokenstile.testing.fake_upstream", "--port", "0",
         "--output-tokens", "3"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env,
    )
    watchdog = threading.Timer(15, proc.kill)  # bounded even if it never gets ready
    watchdog.start()
    try:
        assert proc.stdout is not None
        line = proc.stdout.readline().strip()
        assert line.startswith("listening on http://127.0.0.1:")
        base = line.removeprefix("listening on ")
        with openai.OpenAI(base_url=f"{base}/v1", api_key="k", max_retries=0) as client:
            r = client.chat.completions.create(model=GPT, messages=user("hi"))
        assert r.choices[0].message.content == reply_text(3)
        assert get_json(f"{base}/_fake/tally")["requests"] == 1
    finally:
        watchdog.cancel()
        proc.terminate()
        try:
            proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=5)
        if proc.stdout:
            proc.stdout.close()
        if proc.stderr:
            proc.stderr.close()
    # uvicorn re-raises the SIGTERM it handled after its graceful shutdown.
    assert proc.returncode in (0, -15)


def _report(url: str, path: str, key: str, **params: Any) -> tuple[int, Any]:
    from urllib.parse import urlencode

    headers = {"authorization": f"Bearer {key}"} if path.startswith("/v1/organization/") \
        else {"x-api-key": key, "anthropic-version": "2023-06-01"}
    req = urllib.request.Request(f"{url}{path}?{urlencode(params, doseq=True)}",
                                 headers=headers)
    try:
        with urllib.request.urlopen(req, timeout=5) as resp:
            return resp.status, json.loads(resp.read())
    except urllib.error.HTTPError as error:
        return error.code, json.loads(error.read())


def test_admin_reports_in_the_providers_shapes(fake: FakeUpstream, url: str,
                                               oc: openai.OpenAI, ac: anthropic.Anthropic
                                               ) -> None:
    oc.chat.completions.create(model="gpt-4o-mini", messages=user("hi"), max_tokens=5)
    ac.messages.create(model="claude-haiku-4-5", max_tokens=5, messages=user("hi"))
    served = {r.model: r for r in fake.tally.records}
    now = int(time.time())
    status, page = _report(url, "/v1/organization/usage/completions", "sk-admin-x",
                           start_time=now - 3 * 86400, bucket_width="1d", group_by="model",
                           limit=2)
    assert status == 200 and page["object"] == "page" and page["has_more"] is True
    assert [b["results"] for b in page["data"]] == [[], []]
    status, rest = _report(url, "/v1/organization/usage/completions", "sk-admin-x",
                           start_time=now - 3 * 86400, group_by="model", limit=2,
                           page=page["next_page"])
    assert rest["has_more"] is False and rest["next_page"] is None
    [result] = rest["data"][-1]["results"]
    assert result["object"] == "organization.usage.completions.result"
    assert (result["model"], result["input_tokens"], result["output_tokens"],
            result["num_model_requests"]) == ("gpt-4o-mini", served["gpt-4o-mini"].input_tokens,
                                              served["gpt-4o-mini"].output_tokens, 1)
    _, costs = _report(url, "/v1/organization/costs", "sk-admin-x", start_time=now - 86400,
                       group_by="line_item")
    lines = {r["line_item"]: r["amount"] for r in costs["data"][-1]["results"]}
    assert set(lines) == {"gpt-4o-mini, input", "gpt-4o-mini, output"}
    assert lines["gpt-4o-mini, input"]["currency"] == "usd"

    fake.seed_drift("claude-haiku-4-5", provider="anthropic", output_tokens=100, usd=0.5)
    since = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(now - 2 * 86400))
    _, usage = _report(url, "/v1/organizations/usage_report/messages", "sk-ant-admin01-x",
                       **{"starting_at": since, "group_by[]": "model",
                          "ending_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
                          "limit": 31})
    [claude] = usage["data"][-1]["results"]
    assert claude["model"] == "claude-haiku-4-5" and claude["output_tokens"] == \
        served["claude-haiku-4-5"].output_tokens + 100
    assert claude["uncached_input_tokens"] == served["claude-haiku-4-5"].input_tokens
    _, cost = _report(url, "/v1/organizations/cost_report", "sk-ant-admin01-x",
                      **{"starting_at": since, "group_by[]": "description"})
    cents = sum(float(r["amount"]) for r in cost["data"][-1]["results"])
    assert 50 < cents < 51  # the seeded 0.5 USD plus what the call cost, in cents

    # An ordinary API key is refused, as the providers refuse it; reading is not recorded.
    assert _report(url, "/v1/organization/costs", "sk-proj-x")[0] == 401
    assert _report(url, "/v1/organizations/cost_report", "sk-ant-api03-x")[0] == 401
    assert len(fake.tally.records) == 2
    assert post_json(f"{url}/_fake/reports/drift", [{"model": "gpt-4o", "usd": 1}])["drifts"] \
        == 2
    assert post_raw(f"{url}/_fake/reports/drift", {"nope": 1})[0] == 400
