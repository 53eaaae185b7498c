"""The official openai SDK, sync and async, through the gateway to the fake upstream: every
call answered as the upstream would, and recorded with the usage the upstream reported."""

from __future__ import annotations

import asyncio
from typing import Any

import aiohttp
import openai
import pytest

from tests.conftest import UPSTREAM_KEY, FakeHandle, Gateway

MODEL = "gpt-4o-mini"
MESSAGES: list[Any] = [
    {"role": "system", "content": "You are terse."},
    {"role": "user", "content": "Say hello to the ledger."},
]


def client(gateway: Gateway, key: str) -> openai.OpenAI:
    return openai.OpenAI(base_url=gateway.v1, api_key=key, max_retries=0)


def aclient(gateway: Gateway, key: str) -> openai.AsyncOpenAI:
    return openai.AsyncOpenAI(base_url=gateway.v1, api_key=key, max_retries=0)


def assert_row_matches_fake(row: Any, record: Any) -> None:
    assert row.input_tokens == record.input_tokens
    assert row.output_tokens == record.output_tokens
    assert row.cached_input_tokens == record.cached_tokens
    assert row.reasoning_tokens == record.reasoning_tokens
    assert not row.estimated


def test_chat_non_streamed_is_forwarded_counted_priced_and_recorded(
        gateway: Gateway, fake: FakeHandle) -> None:
    key = gateway.key(project="production", user="alice")
    reply = client(gateway, key).chat.completions.create(
        model=MODEL, messages=MESSAGES, max_tokens=7, user="end-user-42",
        extra_headers={"x-tokenstile-feature": "greeting", "x-tokenstile-tags": "env=test"})
    record = fake.fake.tally.last
    assert record is not None
    assert reply.usage is not None
    assert reply.usage.completion_tokens == record.output_tokens == 7
    assert reply.choices[0].message.content
    # the upstream saw the gateway's provider key, never the caller's tokenstile key
    assert record.headers["authorization"] == f"Bearer {UPSTREAM_KEY}"
    assert key not in str(record.headers)
    [row] = gateway.rows()
    assert_row_matches_fake(row, record)
    assert (row.project, row.user, row.end_user) == ("production", "alice", "end-user-42")
    assert row.feature == "greeting" and row.tags == {"env": "test"}
    assert row.requested_model == row.served_model == MODEL
    assert row.status == 200 and row.outcome == "ok" and not row.streamed
    assert row.cost_nano > 0 and row.key_id and row.upstream == "openai"
    assert row.latency_ms > 0 and row.ttfb_ms is not None


def test_streamed_chat_hides_the_usage_chunk_it_asked_for(
        gateway: Gateway, fake: FakeHandle) -> None:
    key = gateway.key()
    chunks = list(client(gateway, key).chat.completions.create(
        model=MODEL, messages=MESSAGES, max_tokens=5, stream=True))
    record = fake.fake.tally.last
    assert record is not None
    # the gateway asked the upstream for usage …
    assert record.body["stream_options"] == {"include_usage": True}
    # … and the client, who did not, sees no trace of it
    assert all(chunk.usage is None and chunk.choices for chunk in chunks)
    text = "".join(c.choices[0].delta.content or "" for c in chunks)
    assert len(text.split()) == 5
    [row] = gateway.rows()
    assert_row_matches_fake(row, record)
    assert row.streamed and row.output_tokens == 5


def test_streamed_chat_keeps_usage_when_the_client_asked(
        gateway: Gateway, fake: FakeHandle) -> None:
    key = gateway.key()
    chunks = list(client(gateway, key).chat.completions.create(
        model=MODEL, messages=MESSAGES, max_tokens=4, stream=True,
        stream_options={"include_usage": True}))
    usage = chunks[-1].usage
    assert usage is not None and usage.completion_tokens == 4
    [row] = gateway.rows()
    assert row.input_tokens == usage.prompt_tokens


async def test_async_client_chat_stream_and_not(gateway: Gateway, fake: FakeHandle) -> None:
    key = gateway.key()
    api = aclient(gateway, key)
    reply = await api.chat.completions.create(model=MODEL, messages=MESSAGES, max_tokens=3)
    stream = await api.chat.completions.create(model=MODEL, messages=MESSAGES, max_tokens=6,
                                               stream=True)
    pieces = [chunk async for chunk in stream]
    await api.close()
    assert reply.usage is not None and reply.usage.completion_tokens == 3
    assert sum(1 for p in pieces if p.choices and p.choices[0].delta.content) == 6
    rows = await asyncio.to_thread(gateway.rows)
    records = fake.fake.tally.records
    assert [r.output_tokens for r in rows] == [3, 6]
    for row, record in zip(rows, records, strict=True):
        assert_row_matches_fake(row, record)


def test_completions_streamed_and_not(gateway: Gateway, fake: FakeHandle) -> None:
    key = gateway.key()
    api = client(gateway, key)
    done = api.completions.create(model="gpt-3.5-turbo-instruct", prompt="Once upon",
                                  max_tokens=4)
    streamed = list(api.completions.create(model="gpt-3.5-turbo-instruct", prompt="a time",
                                           max_tokens=3, stream=True))
    assert done.usage is not None and done.usage.completion_tokens == 4
    assert all(chunk.usage is None for chunk in streamed)
    rows = gateway.rows()
    for row, record in zip(rows, fake.fake.tally.records, strict=True):
        assert_row_matches_fake(row, record)
    assert [r.api for r in rows] == ["completions", "completions"]


def test_embeddings_default_base64(gateway: Gateway, fake: FakeHandle) -> None:
    key = gateway.key()
    result = client(gateway, key).embeddings.create(model="text-embedding-3-small",
                                                    input=["first text", "second text"])
    assert len(result.data) == 2 and len(result.data[0].embedding) > 0
    [row] = gateway.rows()
    record = fake.fake.tally.last
    assert record is not None
    assert row.input_tokens == record.input_tokens > 0 and row.output_tokens == 0
    assert row.api == "embeddings" and row.cost_nano > 0


def test_responses_api_streamed_and_not(gateway: Gateway, fake: FakeHandle) -> None:
    key = gateway.key()
    api = client(gateway, key)
    done = api.responses.create(model=MODEL, input="Tell me something.", max_output_tokens=6)
    assert done.usage is not None and done.usage.output_tokens == 6
    events = list(api.responses.create(model=MODEL, input="Stream it. [[fake:output_tokens=3]]",
                                       max_output_tokens=4, stream=True))
    assert events[-1].type == "response.completed"
    rows = gateway.rows()
    for row, record in zip(rows, fake.fake.tally.records, strict=True):
        assert_row_matches_fake(row, record)
    assert [(r.api, r.streamed, r.output_tokens) for r in rows] == [
        ("responses", False, 6), ("responses", True, 3)]


def test_cached_and_reasoning_tokens_are_recorded_and_priced(
        gateway: Gateway, fake: FakeHandle) -> None:
    key = gateway.key()
    messages = [{"role": "user", "content": "x " * 200 +
                 "[[fake:cached_tokens=128,reasoning_tokens=3]]"}]
    client(gateway, key).chat.completions.create(model="gpt-4o", messages=messages,
                                                 max_tokens=5)
    [row] = gateway.rows()
    assert row.cached_input_tokens == 128 and row.reasoning_tokens == 3
    full = gateway.runtime.pricer.estimate_nano("gpt-4o", row.input_tokens, row.output_tokens)
    assert full is not None and 0 < row.cost_nano < full  # cached input is cheaper


def test_upstream_errors_pass_through_and_cost_nothing(
        gateway: Gateway, fake: FakeHandle) -> None:
    key = gateway.key()
    with pytest.raises(openai.InternalServerError) as caught:
        client(gateway, key).chat.completions.create(
            model=MODEL, messages=[{"role": "user", "content": "[[fake:status=500]]"}])
    assert caught.value.status_code == 500
    with pytest.raises(openai.RateLimitError):
        client(gateway, key).chat.completions.create(
            model=MODEL, messages=[{"role": "user", "content": "[[fake:status=429]]"}])
    rows = gateway.rows()
    assert [(r.status, r.outcome, r.cost_nano) for r in rows] == [
        (500, "upstream_error", 0), (429, "upstream_error", 0)]


async def test_client_disconnect_mid_stream_is_billed_for_what_was_generated(
        gateway: Gateway, fake: FakeHandle) -> None:
    key = gateway.key()
    body = {"model": MODEL, "max_tokens": 200, "stream": True,
            "messages": [{"role": "user", "content": "go [[fake:chunk_delay_ms=20]]"}]}
    async with aiohttp.ClientSession() as session:
        resp = await session.post(f"{gateway.v1}/chat/completions", json=body,
                                  headers={"authorization": f"Bearer {key}"})
        seen = 0
        async for line in resp.content:
            if line.startswith(b"data: {"):
                seen += 1
            if seen >= 5:
                break
        resp.close()
    assert fake.fake.tally.wait_for(lambda t: t.requests == 1, timeout=5)
    for _ in range(100):
        rows = await asyncio.to_thread(gateway.rows)
        if rows:
            break
        await asyncio.sleep(0.05)
    [row] = rows
    record = fake.fake.tally.last
    assert record is not None and record.cut
    assert row.outcome == "client_disconnect" and row.status == 499
    assert row.estimated and row.input_tokens > 0
    assert 4 <= row.output_tokens < 200  # the first chunk carries only the role
    assert row.cost_nano > 0


def test_models_lists_what_the_caller_may_use(gateway: Gateway, fake: FakeHandle) -> None:
    key = gateway.key(allowed_models=["gpt-4o*"])
    ids = [m.id for m in client(gateway, key).models.list()]
    assert ids and all(i.startswith("gpt-4o") for i in ids)
    with pytest.raises(openai.PermissionDeniedError) as caught:
        client(gateway, key).chat.completions.create(model="gpt-3.5-turbo", messages=MESSAGES)
    assert "may not use the model 'gpt-3.5-turbo'" in caught.value.message
