"""Streams captured from the fake upstream rebuild the answer the same request gets
non-streamed; incomplete or failed streams rebuild nothing."""

from __future__ import annotations

from typing import Any

import aiohttp
import orjson
import pytest

from tokenstile.cache.assemble import assemble_from_stream
from tokenstile.cache.recorder import StreamRecorder
from tokenstile.providers.anthropic import AnthropicStreamObserver
from tokenstile.providers.openai import OpenAIStreamObserver
from tokenstile.testing.fake_upstream import FakeUpstream
from tokenstile.types import Usage

from .conftest import CASES, STREAMABLE, Captured, Case, comparable, post


def expected_from(cap: Captured) -> Any:
    want = comparable(cap.body)
    if cap.case.api == "completions":
        want.pop("system_fingerprint")  # the fake's completion chunks do not carry it
    return want


@pytest.mark.parametrize("name", STREAMABLE)
def test_stream_rebuilds_the_non_streamed_answer(captured: dict[str, Captured],
                                                 name: str) -> None:
    cap = captured[name]
    body = assemble_from_stream(cap.case.api, cap.case.wire, cap.events)
    assert body is not None
    assert comparable(body) == expected_from(cap)


@pytest.mark.parametrize("name", STREAMABLE)
def test_arbitrary_byte_chunks_work_too(captured: dict[str, Captured], name: str) -> None:
    cap = captured[name]
    raw = cap.raw_stream
    chunks = [raw[i:i + 7] for i in range(0, len(raw), 7)]
    body = assemble_from_stream(cap.case.api, cap.case.wire, chunks)
    assert body is not None and comparable(body) == expected_from(cap)


@pytest.mark.parametrize("name", STREAMABLE)
def test_a_stream_cut_short_rebuilds_nothing(captured: dict[str, Captured], name: str) -> None:
    cap = captured[name]
    for end in range(len(cap.events)):
        assert assemble_from_stream(cap.case.api, cap.case.wire, cap.events[:end]) is None


def test_chat_stream_without_usage_gives_a_body_without_usage(
        captured: dict[str, Captured]) -> None:
    cap = captured["chat_text"]
    events = [e.replace(b',"usage":null', b"") for e in cap.events if b'"choices":[]' not in e]
    body = assemble_from_stream("chat", "openai", events)
    assert body is not None
    want = comparable(cap.body)
    del want["usage"]
    assert comparable(body) == want


@pytest.mark.parametrize("case", [c for c in CASES if c.name in
                                  ("chat_text", "completions", "responses_text",
                                   "messages_text")], ids=lambda c: c.name)
async def test_streams_that_end_in_an_error_rebuild_nothing(
        upstream: tuple[FakeUpstream, str], case: Case) -> None:
    _, url = upstream
    body = orjson.loads(orjson.dumps(case.streamed_body()))
    for key in ("messages", "input", "prompt"):
        if key in body:
            if isinstance(body[key], list):
                body[key][-1]["content"] += " [[fake:error_after=2]]"
            else:
                body[key] += " [[fake:error_after=2]]"
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=10)) as session:
        status, raw = await post(session, url, case, body)
    assert status == 200 and raw
    assert assemble_from_stream(case.api, case.wire, [raw]) is None


def _chunk(choices: list[dict[str, Any]], **extra: Any) -> bytes:
    obj = {"id": "c1", "object": "chat.completion.chunk", "created": 1, "model": "m",
           "choices": choices, **extra}
    return b"data: " + orjson.dumps(obj) + b"\n\n"


def test_interleaved_choices_tool_calls_and_logprobs() -> None:
    lp = {"content": [{"token": "a", "logprob": -0.1, "bytes": [97], "top_logprobs": []}],
          "refusal": None}
    events = [
        _chunk([{"index": 1, "delta": {"role": "assistant", "content": ""}}]),
        _chunk([{"index": 0, "delta": {"role": "assistant", "content": None, "tool_calls": [
            {"index": 0, "id": "call_1", "type": "function",
             "function": {"name": "f", "arguments": ""}}]}}]),
        _chunk([{"index": 1, "delta": {"content": "a"}, "logprobs": lp}]),
        _chunk([{"index": 0, "delta": {"tool_calls": [
            {"index": 1, "id": "call_2", "type": "function",
             "function": {"name": "g", "arguments": "{}"}}]}}]),
        _chunk([{"index": 0, "delta": {"tool_calls": [
            {"index": 0, "function": {"arguments": '{"x":'}}]}}]),
        _chunk([{"index": 0, "delta": {"tool_calls": [
            {"index": 0, "function": {"arguments": "1}"}}]}}]),
        _chunk([{"index": 1, "delta": {"content": "b"}, "logprobs": lp}]),
        _chunk([{"index": 0, "delta": {}, "finish_reason": "tool_calls"}]),
        _chunk([{"index": 1, "delta": {}, "finish_reason": "stop"}]),
        b"data: [DONE]\n\n",
    ]
    body = assemble_from_stream("chat", "openai", events)
    assert body is not None
    parsed = orjson.loads(body)
    first, second = parsed["choices"]
    assert first["message"]["content"] is None
    assert [(c["id"], c["function"]["name"], c["function"]["arguments"])
            for c in first["message"]["tool_calls"]] == [("call_1", "f", '{"x":1}'),
                                                         ("call_2", "g", "{}")]
    assert second["message"]["content"] == "ab" and second["finish_reason"] == "stop"
    assert len(second["logprobs"]["content"]) == 2
    assert "usage" not in parsed


def test_what_cannot_be_rebuilt_is_not_cached() -> None:
    audio = [_chunk([{"index": 0, "delta": {"audio": {"id": "a", "data": "AAAA"}}}]),
             _chunk([{"index": 0, "delta": {}, "finish_reason": "stop"}]), b"data: [DONE]\n\n"]
    assert assemble_from_stream("chat", "openai", audio) is None
    assert assemble_from_stream("embeddings", "openai", [b"data: {}\n\n"]) is None
    assert assemble_from_stream("chat", "openai", [b"data: [DONE]\n\n"]) is None
    assert assemble_from_stream("messages", "anthropic", [b"event: x\ndata: nope\n\n"]) is None


def test_recorder_keeps_the_usage_the_client_does_not_see(
        captured: dict[str, Captured]) -> None:
    cap = captured["chat_text"]
    recorder = StreamRecorder(OpenAIStreamObserver(strip_usage=True), "chat", "openai")
    relayed = [out for e in cap.events if (out := recorder.on_event(e)) is not None]
    assert all(b'"usage"' not in e for e in relayed)
    assert recorder.usage is not None and recorder.usage.output_tokens > 0
    body = recorder.body()
    assert body is not None and comparable(body) == comparable(cap.body)
    assert recorder.output_text() == orjson.loads(cap.body)["choices"][0]["message"]["content"]


def test_recorder_gives_up_past_its_limit(captured: dict[str, Captured]) -> None:
    cap = captured["messages_text"]
    inner = AnthropicStreamObserver("claude-haiku-4-5")
    recorder = StreamRecorder(inner, "messages", "anthropic", max_bytes=200)
    for event in cap.events:
        assert recorder.on_event(event) == event
    assert recorder.body() is None
    assert recorder.usage is not None and recorder.usage.output_tokens > 0
    recorder.usage = Usage(input_tokens=1)
    assert inner.usage == Usage(input_tokens=1)  # the setter reaches the wrapped observer
