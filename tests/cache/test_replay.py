"""Cached answers replayed as streams: every event is valid for the official SDKs, their
stream accumulators rebuild the cached body, and so does our own assembler."""

from __future__ import annotations

from typing import Any, Literal

import orjson
import pytest
from anthropic.types import Message
from hypothesis import given, settings
from hypothesis import strategies as st
from openai.types import Completion
from openai.types.responses import Response

from tokenstile.cache.answer import CachedAnswer
from tokenstile.cache.assemble import assemble_from_stream
from tokenstile.cache.replay import content_type, replay, replay_answer
from tokenstile.providers.openai import OpenAIAdapter

from .conftest import STREAMABLE, Captured
from .sdk import (
    chat_from_stream,
    completion_from_stream,
    events_of,
    message_from_stream,
    plain,
    response_from_stream,
    same_chat,
)


def sdk_check(api: str, body: bytes, chunks: list[bytes]) -> None:
    """The SDK reading ``chunks`` ends with the answer in ``body``."""
    if api == "chat":
        final, _ = chat_from_stream(chunks)
        same_chat(final, body)
    elif api == "completions":
        parts = completion_from_stream(chunks)
        want = Completion.model_validate_json(body)
        assert "".join(p.choices[0].text for p in parts if p.choices) == want.choices[0].text
        assert [p.choices[0].finish_reason for p in parts if p.choices][-1] == \
            want.choices[0].finish_reason
    elif api == "responses":
        got = response_from_stream(chunks)
        assert plain(got.model_dump(mode="json")) == \
            plain(Response.model_validate_json(body).model_dump(mode="json"))
    else:
        got_message = message_from_stream(chunks)
        assert got_message.model_dump(mode="json") == \
            Message.model_validate_json(body).model_dump(mode="json")


@pytest.mark.parametrize("piece_chars", [1, 5, 128])
@pytest.mark.parametrize("name", STREAMABLE)
def test_replay_is_read_back_by_the_sdk_and_by_us(captured: dict[str, Captured], name: str,
                                                  piece_chars: int) -> None:
    cap = captured[name]
    api, wire = cap.case.api, cap.case.wire
    chunks = replay(api, wire, cap.body, True, True, piece_chars=piece_chars, chunk_bytes=300)
    sdk_check(api, cap.body, chunks)
    rebuilt = assemble_from_stream(api, wire, chunks)
    assert rebuilt is not None and orjson.loads(rebuilt) == orjson.loads(cap.body)


@pytest.mark.parametrize("name", STREAMABLE)
def test_non_streamed_replay_is_the_body(captured: dict[str, Captured], name: str) -> None:
    cap = captured[name]
    assert replay(cap.case.api, cap.case.wire, cap.body, False, True) == [cap.body]
    assert content_type(False) == "application/json"
    assert content_type(True).startswith("text/event-stream")


@pytest.mark.parametrize("api", ["chat", "completions"])
def test_usage_chunk_only_when_asked(captured: dict[str, Captured],
                                     api: Literal["chat", "completions"]) -> None:
    cap = captured["chat_text" if api == "chat" else "completions"]
    without = [orjson.loads(d) for _, d in events_of(replay(api, "openai", cap.body, True, False))
               if d != b"[DONE]"]
    assert all("usage" not in chunk and chunk["choices"] for chunk in without)
    with_usage = [orjson.loads(d) for _, d in events_of(replay(api, "openai", cap.body, True,
                                                                True)) if d != b"[DONE]"]
    assert all(chunk["usage"] is None for chunk in with_usage[:-1])
    assert with_usage[-1]["choices"] == []
    assert with_usage[-1]["usage"] == orjson.loads(cap.body)["usage"]


def test_replay_follows_the_request(captured: dict[str, Captured]) -> None:
    cap = captured["chat_text"]
    answer = CachedAnswer(api="chat", wire="openai", body=cap.body, model="gpt-4o-mini")
    adapter = OpenAIAdapter()
    plain_req = adapter.parse("chat", cap.case.body)
    assert replay_answer(plain_req, answer) == [cap.body]
    streamed = adapter.parse("chat", cap.case.streamed_body())
    chunks = replay_answer(streamed, answer)
    assert b'"usage":{' in b"".join(chunks)
    quiet = adapter.parse("chat", {**cap.case.body, "stream": True})
    assert b'"usage"' not in b"".join(replay_answer(quiet, answer))


def test_long_answers_are_sent_in_a_few_large_writes(captured: dict[str, Captured]) -> None:
    body = orjson.loads(captured["chat_text"].body)
    body["choices"][0]["message"]["content"] = "word " * 20_000
    raw = orjson.dumps(body)
    chunks = replay("chat", "openai", raw, True, True)
    stream = b"".join(chunks)
    assert len(stream) < 1.6 * len(raw)  # framing costs about half the text
    assert len(chunks) <= len(stream) // (16 * 1024) + 1
    assert all(16 * 1024 <= len(c) < 17 * 1024 for c in chunks[:-1])
    same_chat(chat_from_stream(chunks)[0], raw)


def test_embeddings_and_bad_bodies() -> None:
    body = b'{"object":"list","data":[]}'
    assert replay("embeddings", "openai", body, True, False) == [body]
    with pytest.raises(ValueError):
        replay("chat", "openai", b"not json", True, False)
    with pytest.raises(ValueError):
        replay("chat", "openai", b"[1]", True, False)


# -- properties over generated answers ----------------------------------------------------------

texts = st.text(st.characters(codec="utf-8", exclude_categories=["Cs"]), max_size=300)
names = st.from_regex(r"[a-z_]{1,12}", fullmatch=True)
json_objects = st.dictionaries(names, st.integers(-(2**53), 2**53) | texts | st.booleans(),
                               max_size=4)


@st.composite
def chat_bodies(draw: st.DrawFn) -> dict[str, Any]:
    choices = []
    for index in range(draw(st.integers(1, 3))):
        calls = [
            {"id": f"call_{index}_{k}", "type": "function",
             "function": {"name": draw(names),
                          "arguments": orjson.dumps(draw(json_objects)).decode()}}
            for k in range(draw(st.integers(0, 2)))
        ]
        content = draw(texts) if not calls or draw(st.booleans()) else None
        message: dict[str, Any] = {"role": "assistant", "content": content, "refusal": None,
                                   "annotations": []}
        if calls:
            message["tool_calls"] = calls
            if content == "":
                message["content"] = None
        finish = "tool_calls" if calls else draw(st.sampled_from(["stop", "length"]))
        choices.append({"index": index, "message": message, "logprobs": None,
                        "finish_reason": finish})
    return {"id": "chatcmpl-x", "object": "chat.completion", "created": 1, "model": "m",
            "choices": choices, "service_tier": "default", "system_fingerprint": "fp",
            "usage": {"prompt_tokens": 3, "completion_tokens": 4, "total_tokens": 7}}


@settings(max_examples=60, deadline=None)
@given(body=chat_bodies(), piece=st.integers(1, 40))
def test_any_chat_answer_survives_replay(body: dict[str, Any], piece: int) -> None:
    raw = orjson.dumps(body)
    chunks = replay("chat", "openai", raw, True, True, piece_chars=piece)
    assert orjson.loads(assemble_from_stream("chat", "openai", chunks) or b"null") == body
    same_chat(chat_from_stream(chunks)[0], raw)


@st.composite
def anthropic_bodies(draw: st.DrawFn) -> dict[str, Any]:
    blocks: list[dict[str, Any]] = []
    for k in range(draw(st.integers(0, 4))):
        kind = draw(st.sampled_from(["text", "tool_use", "thinking"]))
        if kind == "text":
            blocks.append({"type": "text", "text": draw(texts)})
        elif kind == "tool_use":
            blocks.append({"type": "tool_use", "id": f"toolu_{k}", "name": draw(names),
                           "input": draw(json_objects)})
        else:
            blocks.append({"type": "thinking", "thinking": draw(texts), "signature": "sig"})
    return {"id": "msg_x", "type": "message", "role": "assistant", "model": "claude-haiku-4-5",
            "content": blocks, "stop_reason": "end_turn", "stop_sequence": None,
            "usage": {"input_tokens": 5, "cache_creation_input_tokens": 0,
                      "cache_read_input_tokens": 0, "output_tokens": draw(st.integers(0, 99)),
                      "service_tier": "standard"}}


@settings(max_examples=60, deadline=None)
@given(body=anthropic_bodies(), piece=st.integers(1, 40))
def test_any_anthropic_answer_survives_replay(body: dict[str, Any], piece: int) -> None:
    raw = orjson.dumps(body)
    chunks = replay("messages", "anthropic", raw, True, False, piece_chars=piece)
    assert orjson.loads(assemble_from_stream("messages", "anthropic", chunks) or b"null") == body
    assert message_from_stream(chunks).model_dump(mode="json") == \
        Message.model_validate(body).model_dump(mode="json")


@st.composite
def responses_bodies(draw: st.DrawFn) -> dict[str, Any]:
    output: list[dict[str, Any]] = []
    for k in range(draw(st.integers(1, 3))):
        if draw(st.booleans()):
            output.append({"type": "message", "id": f"msg_{k}", "status": "completed",
                           "role": "assistant", "content": [
                               {"type": "output_text", "text": draw(texts), "annotations": [],
                                "logprobs": []}]})
        else:
            output.append({"type": "function_call", "id": f"fc_{k}", "call_id": f"call_{k}",
                           "name": draw(names), "status": "completed",
                           "arguments": orjson.dumps(draw(json_objects)).decode()})
    return {"id": "resp_x", "object": "response", "created_at": 1, "status": "completed",
            "model": "gpt-4o-mini", "output": output, "parallel_tool_calls": True,
            "tool_choice": "auto", "tools": [], "error": None, "incomplete_details": None,
            "instructions": None, "metadata": {}, "temperature": 1.0, "top_p": 1.0,
            "usage": {"input_tokens": 3,
                      "input_tokens_details": {"cached_tokens": 0, "cache_write_tokens": 0},
                      "output_tokens": 4, "output_tokens_details": {"reasoning_tokens": 0},
                      "total_tokens": 7}}


@settings(max_examples=40, deadline=None)
@given(body=responses_bodies(), piece=st.integers(1, 40))
def test_any_responses_answer_survives_replay(body: dict[str, Any], piece: int) -> None:
    raw = orjson.dumps(body)
    chunks = replay("responses", "openai", raw, True, False, piece_chars=piece)
    assert orjson.loads(assemble_from_stream("responses", "openai", chunks) or b"null") == body
    got = response_from_stream(chunks)
    assert plain(got.model_dump(mode="json")) == \
        plain(Response.model_validate(body).model_dump(mode="json"))


def test_replay_events_are_single_events(captured: dict[str, Captured]) -> None:
    from tokenstile.cache.replay import group_events, replay_events

    for name in STREAMABLE:
        cap = captured[name]
        events = replay_events(cap.case.api, cap.case.wire, cap.body, True)
        assert all(len(events_of([e])) == 1 for e in events)
        assert group_events(events) == replay(cap.case.api, cap.case.wire, cap.body, True, True)
    with pytest.raises(ValueError):
        replay_events("embeddings", "openai", b"{}", False)


@st.composite
def gemini_bodies(draw: st.DrawFn) -> dict[str, Any]:
    """Gemini answers: text, thoughts and function calls, some with a thought signature; no
    two text parts of the same kind side by side (a stream's pieces of one part)."""
    parts: list[dict[str, Any]] = []
    for kind in draw(st.lists(st.sampled_from(["text", "thought", "call"]), min_size=1,
                              max_size=5)):
        if parts and kind != "call" and bool(parts[-1].get("thought")) == (kind == "thought") \
                and "text" in parts[-1]:
            continue
        part: dict[str, Any] = {"functionCall": {"name": draw(names), "args": draw(
            json_objects)}} if kind == "call" else {"text": draw(st.text(min_size=1,
                                                                           max_size=60))}
        if kind == "thought":
            part["thought"] = True
        if draw(st.booleans()):
            part["thoughtSignature"] = "c2ln"
        parts.append(part)
    return {"candidates": [{"content": {"role": "model", "parts": parts},
                            "finishReason": draw(st.sampled_from(["STOP", "MAX_TOKENS"])),
                            "index": 0}],
            "usageMetadata": {"promptTokenCount": 4, "candidatesTokenCount": 9,
                              "totalTokenCount": 13},
            "modelVersion": "gemini-2.5-flash", "responseId": "r1"}


@settings(max_examples=60, deadline=None)
@given(body=gemini_bodies(), piece=st.integers(1, 40))
def test_any_gemini_answer_survives_replay(body: dict[str, Any], piece: int) -> None:
    raw = orjson.dumps(body)
    chunks = replay("generate_content", "gemini", raw, True, False, piece_chars=piece)
    assert orjson.loads(assemble_from_stream("generate_content", "gemini", chunks)
                        or b"null") == body


def test_a_gemini_stream_without_a_finish_or_with_an_error_is_not_assembled() -> None:
    text = b'data: {"candidates": [{"content": {"parts": [{"text": "hi"}]}, "index": 0}]}\r\n\r\n'
    assert assemble_from_stream("generate_content", "gemini", [text]) is None
    error = b'data: {"error": {"code": 500, "message": "x", "status": "INTERNAL"}}\r\n\r\n'
    finish = b'data: {"candidates": [{"finishReason": "STOP", "index": 0}]}\r\n\r\n'
    assert assemble_from_stream("generate_content", "gemini", [text, error, finish]) is None
    whole = assemble_from_stream("generate_content", "gemini", [text, finish])
    assert whole is not None and orjson.loads(whole) == {"candidates": [
        {"content": {"role": "model", "parts": [{"text": "hi"}]}, "index": 0,
         "finishReason": "STOP"}]}
