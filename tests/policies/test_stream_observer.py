"""The stream wrapper on hand-made events: words split anywhere, several choices, events
relayed in order with their text rewritten, usage and billed text untouched."""

from __future__ import annotations

from typing import Any

import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tokenstile.policies.scanner import Finder, Hit, Span, WordFinder, scan_whole
from tokenstile.policies.stream import PolicyStreamObserver
from tokenstile.policies.wordlists import WordMatcher
from tokenstile.providers.openai import OpenAIStreamObserver, ResponsesStreamObserver


class Blocked(Exception):
    pass


def finders(**entries: str) -> list[Finder]:
    hits = {word.replace("_", " "): Hit("response_wordlists", "t", action)
            for word, action in entries.items()}
    return [WordFinder(WordMatcher(hits))]


def on_spans(seen: list[Span]) -> Any:
    def record(spans: list[Span]) -> None:
        seen.extend(spans)
        if any(s.hit.action == "block" for s in spans):
            raise Blocked()

    return record


def chat_event(content: str | None, index: int = 0, finish: str | None = None) -> bytes:
    delta = {} if content is None else {"content": content}
    chunk = {"id": "c", "object": "chat.completion.chunk",
             "choices": [{"index": index, "delta": delta, "finish_reason": finish}]}
    return b"data: " + orjson.dumps(chunk) + b"\n\n"


def relay(observer: PolicyStreamObserver, events: list[bytes]) -> list[dict[str, Any]]:
    out = b"".join(r for e in events if (r := observer.on_event(e)) is not None)
    return [orjson.loads(part[6:]) for part in out.split(b"\n\n")
            if part.startswith(b"data: {")]


def chat_text(chunks: list[dict[str, Any]], index: int = 0) -> str:
    return "".join(c["choices"][0]["delta"].get("content") or "" for c in chunks
                   if c.get("choices") and c["choices"][0]["index"] == index)


def test_a_word_split_inside_itself_is_redacted_and_the_order_kept() -> None:
    inner = OpenAIStreamObserver(strip_usage=True)
    observer = PolicyStreamObserver(inner, "chat", finders(forbidden="redact"), on_spans([]))
    pieces = ["This is for", "bid", "den", " fruit", "."]
    events = [chat_event(""), *(chat_event(p) for p in pieces), chat_event(None, finish="stop"),
              b"data: [DONE]\n\n"]
    chunks = relay(observer, events)
    assert [c["choices"][0]["delta"].get("content") for c in chunks] == [
        "", "This is ****", "", "", " fruit", ".", None]  # the mask where the match starts
    assert chunks[-1]["choices"][0]["finish_reason"] == "stop"
    assert inner.output_text() == "This is forbidden fruit."  # billed as generated


def test_nothing_is_released_that_could_still_become_a_match() -> None:
    observer = PolicyStreamObserver(OpenAIStreamObserver(strip_usage=True), "chat",
                                    finders(top_secret="redact"), on_spans([]))
    assert observer.on_event(chat_event("top")) is None
    assert observer.on_event(chat_event(" sec")) is None
    released = observer.on_event(chat_event("ret plans are here and more"))
    assert released is None or b"top" not in released


def test_choices_are_separate_channels() -> None:
    observer = PolicyStreamObserver(OpenAIStreamObserver(strip_usage=True), "chat",
                                    finders(gamma="redact"), on_spans([]))
    events = [chat_event("gam", 0), chat_event("gam", 1), chat_event("ma!", 0),
              chat_event("mon!", 1), chat_event(None, 0, "stop"), chat_event(None, 1, "stop"),
              b"data: [DONE]\n\n"]
    chunks = relay(observer, events)
    assert chat_text(chunks, 0) == "****!"
    assert chat_text(chunks, 1) == "gammon!"


def test_a_block_raises_before_the_word_leaves() -> None:
    seen: list[Span] = []
    observer = PolicyStreamObserver(OpenAIStreamObserver(strip_usage=True), "chat",
                                    finders(gamma="block"), on_spans(seen))
    out = []
    with pytest.raises(Blocked):
        for event in [*(chat_event(p) for p in ["alpha ", "beta ", "gam", "ma ", "delta"]),
                      chat_event(None, finish="stop"), b"data: [DONE]\n\n"]:
            if (relayed := observer.on_event(event)) is not None:
                out.append(relayed)
    assert b"gam" not in b"".join(out)
    assert seen[0].hit.action == "block"


def test_the_usage_chunk_and_unknown_events_pass_in_order() -> None:
    inner = OpenAIStreamObserver(strip_usage=False)
    observer = PolicyStreamObserver(inner, "chat", finders(gamma="redact"), on_spans([]))
    usage = {"id": "c", "choices": [], "usage": {"prompt_tokens": 3, "completion_tokens": 2}}
    events = [chat_event("a gam"), b": keep-alive\n\n", chat_event("ma"),
              chat_event(None, finish="stop"), b"data: " + orjson.dumps(usage) + b"\n\n",
              b"data: [DONE]\n\n"]
    out = b"".join(r for e in events if (r := observer.on_event(e)) is not None)
    assert out.index(b'"a ****"') < out.index(b"keep-alive") < out.index(b'"usage"') < \
        out.index(b"[DONE]")
    assert observer.usage is not None and observer.usage.output_tokens == 2


def responses_event(kind: str, **fields: Any) -> bytes:
    return b"event: " + kind.encode() + b"\ndata: " + orjson.dumps(
        {"type": kind, **fields}) + b"\n\n"


def test_responses_events_are_redacted_everywhere() -> None:
    observer = PolicyStreamObserver(ResponsesStreamObserver(), "responses",
                                    finders(gamma_delta="redact"), on_spans([]))
    where = {"item_id": "m", "output_index": 0, "content_index": 0}
    text = "alpha gamma delta"
    part = {"type": "output_text", "text": text}
    events = [responses_event("response.output_text.delta", **where, delta=d)
              for d in ["alpha ga", "mma del", "ta"]]
    events += [responses_event("response.output_text.done", **where, text=text),
               responses_event("response.content_part.done", **where, part=part),
               responses_event("response.completed", response={"output": [
                   {"type": "message", "content": [part]}], "usage": {"input_tokens": 1,
                                                                     "output_tokens": 3}})]
    out = b"".join(r for e in events if (r := observer.on_event(e)) is not None)
    payloads = [orjson.loads(line[6:]) for line in out.splitlines()
                if line.startswith(b"data: ")]
    deltas = "".join(p["delta"] for p in payloads if p["type"].endswith(".delta"))
    assert deltas == "alpha ****"
    assert payloads[3]["text"] == payloads[4]["part"]["text"] == "alpha ****"
    assert payloads[5]["response"]["output"][0]["content"][0]["text"] == "alpha ****"
    assert out.count(b"event: response.") == 6


@settings(max_examples=200, deadline=None)
@given(st.lists(st.sampled_from(["al", "pha", " ", "gam", "ma", "delta", "g", "amma", ".",
                                 "δέλτα", "Gamma"]), max_size=30))
def test_streamed_redaction_equals_whole_redaction(pieces: list[str]) -> None:
    found = finders(gamma="redact", alpha_delta="redact", δέλτα="redact")
    observer = PolicyStreamObserver(OpenAIStreamObserver(strip_usage=True), "chat", found,
                                    on_spans([]))
    events = [*(chat_event(p) for p in pieces), chat_event(None, finish="stop"),
              b"data: [DONE]\n\n"]
    assert chat_text(relay(observer, events)) == scan_whole("".join(pieces), found)[0]


def tool_event(arguments: str, finish: str | None = None, index: int = 0) -> bytes:
    delta = {"tool_calls": [{"index": index, "function": {"arguments": arguments}}]}
    chunk = {"id": "c", "object": "chat.completion.chunk",
             "choices": [{"index": 0, "delta": delta, "finish_reason": finish}]}
    return b"data: " + orjson.dumps(chunk) + b"\n\n"


def tool_arguments(chunks: list[dict[str, Any]], index: int = 0) -> str:
    return "".join(call["function"].get("arguments") or ""
                   for c in chunks if c.get("choices")
                   for call in c["choices"][0]["delta"].get("tool_calls") or ()
                   if call["index"] == index)


def test_tool_arguments_are_checked_once_the_call_ends() -> None:
    seen: list[Span] = []
    observer = PolicyStreamObserver(OpenAIStreamObserver(strip_usage=True), "chat",
                                    finders(top_secret="redact", bad="audit"), on_spans(seen))
    # A phrase split over pieces, a word written with JSON escapes (\u0062 is "b").
    pieces = ['{"q": "the to', 'p sec', 'ret", "n": ["\\u0062ad"', "]}"]
    assert observer.on_event(tool_event(pieces[0])) is None  # held until the call ends
    events = [*(tool_event(p) for p in pieces[1:]), tool_event("", index=1),
              chat_event(None, finish="tool_calls"), b"data: [DONE]\n\n"]
    chunks = relay(observer, events)
    assert orjson.loads(tool_arguments(chunks)) == {"q": "the ****", "n": ["bad"]}
    assert tool_arguments(chunks, 1) == ""
    assert sorted(s.hit.action or "" for s in seen) == ["audit", "redact"]


def test_tool_arguments_that_are_not_json_are_scanned_as_text() -> None:
    observer = PolicyStreamObserver(OpenAIStreamObserver(strip_usage=True), "chat",
                                    finders(gamma="redact"), on_spans([]))
    events = [tool_event('{"q": "gam'), tool_event("ma"), chat_event(None, finish="length")]
    assert tool_arguments(relay(observer, events)) == '{"q": "****'
