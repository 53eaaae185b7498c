"""Usage blocks of OpenAI-compatible vendors that differ from OpenAI's: xAI counts reasoning
apart from ``completion_tokens``, DeepSeek names its cache reads ``prompt_cache_hit_tokens``,
Groq's last chunk carries usage in ``x_groq``. Each is read as the bill it is, and OpenAI's
own blocks are read as before."""

from __future__ import annotations

from typing import Any

import orjson

from tokenstile.providers.openai import OpenAIStreamObserver, usage_from_openai
from tokenstile.types import Usage


def data(payload: dict[str, Any]) -> bytes:
    return b"data: " + orjson.dumps(payload) + b"\n\n"


def test_xai_reasoning_is_counted_apart_from_completion_tokens() -> None:
    # xAI's documented example: 32 + 9 + 94 = 135.
    usage = usage_from_openai({
        "prompt_tokens": 32, "completion_tokens": 9, "total_tokens": 135,
        "prompt_tokens_details": {"text_tokens": 32, "cached_tokens": 6},
        "completion_tokens_details": {"reasoning_tokens": 94}})
    assert usage == Usage(input_tokens=32, output_tokens=103, reasoning_tokens=94,
                          cached_input_tokens=6)


def test_openai_reasoning_stays_inside_completion_tokens() -> None:
    usage = usage_from_openai({
        "prompt_tokens": 32, "completion_tokens": 103, "total_tokens": 135,
        "completion_tokens_details": {"reasoning_tokens": 94}})
    assert usage == Usage(input_tokens=32, output_tokens=103, reasoning_tokens=94)
    # no total to tell: OpenAI's convention
    usage = usage_from_openai({"prompt_tokens": 32, "completion_tokens": 103,
                               "completion_tokens_details": {"reasoning_tokens": 94}})
    assert usage is not None and usage.output_tokens == 103


def test_deepseek_cache_hits_are_cache_reads_inside_the_prompt() -> None:
    usage = usage_from_openai({
        "prompt_tokens": 100, "completion_tokens": 50, "total_tokens": 150,
        "prompt_cache_hit_tokens": 80, "prompt_cache_miss_tokens": 20})
    assert usage == Usage(input_tokens=100, output_tokens=50, cached_input_tokens=80)
    # OpenAI's nested count wins where a proxy sends both
    usage = usage_from_openai({
        "prompt_tokens": 100, "completion_tokens": 50, "prompt_cache_hit_tokens": 80,
        "prompt_tokens_details": {"cached_tokens": 64}})
    assert usage is not None and usage.cached_input_tokens == 64


def test_groq_usage_in_x_groq_is_read_and_relayed_untouched() -> None:
    observer = OpenAIStreamObserver(strip_usage=True)
    chunk = {"id": "chatcmpl-1", "object": "chat.completion.chunk", "model": "llama",
             "choices": [{"index": 0, "delta": {"content": "hi"}, "finish_reason": None}]}
    last = {**chunk, "choices": [{"index": 0, "delta": {}, "finish_reason": "stop"}],
            "x_groq": {"id": "req_1", "usage": {"prompt_tokens": 12, "completion_tokens": 1,
                                                "total_tokens": 13, "queue_time": 0.01}}}
    assert observer.on_event(data(chunk)) == data(chunk)
    assert observer.usage is None
    assert observer.on_event(data(last)) == data(last)
    assert observer.usage == Usage(input_tokens=12, output_tokens=1)
    assert observer.usage_is_final()
