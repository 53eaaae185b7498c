"""The cache key: equal for requests the upstream would answer alike, different otherwise."""

from __future__ import annotations

import copy
import random
from typing import Any

import orjson
from hypothesis import given, settings
from hypothesis import strategies as st

from tokenstile.cache.key import cache_key, uncacheable_reason
from tokenstile.providers.anthropic import AnthropicAdapter
from tokenstile.providers.openai import OpenAIAdapter
from tokenstile.types import ApiKind, CanonicalRequest

CHAT = {
    "model": "gpt-4o-mini",
    "messages": [{"role": "system", "content": "be brief"},
                 {"role": "user", "content": "hello"}],
    "temperature": 0.2,
    "max_tokens": 50,
    "tools": [{"type": "function", "function": {"name": "f", "parameters": {
        "type": "object", "properties": {"a": {"type": "string"}, "b": {"type": "integer"}}}}}],
}


def openai(api: ApiKind, body: dict[str, Any]) -> CanonicalRequest:
    return OpenAIAdapter().parse(api, body)


def anthropic(body: dict[str, Any]) -> CanonicalRequest:
    return AnthropicAdapter().parse("messages", body)


def chat(**changes: Any) -> str | None:
    return cache_key(openai("chat", {**CHAT, **changes}))


def reordered(value: Any, rng: random.Random) -> Any:
    """The same JSON with every object's keys in another order."""
    if isinstance(value, dict):
        items = list(value.items())
        rng.shuffle(items)
        return {k: reordered(v, rng) for k, v in items}
    if isinstance(value, list):
        return [reordered(v, rng) for v in value]
    return value


def test_key_is_sha256_hex() -> None:
    key = chat()
    assert key is not None and len(key) == 64 and int(key, 16) >= 0


def test_reordered_keys_at_every_depth_give_the_same_key() -> None:
    rng = random.Random(7)
    base = chat()
    for _ in range(10):
        assert cache_key(openai("chat", reordered(CHAT, rng))) == base


def test_parameters_that_change_the_answer_change_the_key() -> None:
    base = chat()
    variants = [
        chat(temperature=0.3), chat(max_tokens=51), chat(top_p=0.5), chat(seed=1),
        chat(n=2), chat(stop=["x"]), chat(response_format={"type": "json_object"}),
        chat(tool_choice="none"), chat(tools=None), chat(model="gpt-4o"),
        chat(messages=[{"role": "user", "content": "hello!"}]),
        chat(logprobs=True), chat(parallel_tool_calls=False), chat(some_new_parameter=1),
    ]
    assert base not in variants
    assert len(set(variants)) == len(variants)


def test_streamed_and_attribution_fields_do_not_change_the_key() -> None:
    base = chat()
    assert chat(stream=True) == base
    assert chat(stream=True, stream_options={"include_usage": True}) == base
    assert chat(user="alice") == chat(user="bob") == base
    assert chat(metadata={"feature": "search"}, store=True, service_tier="flex") == base
    assert chat(safety_identifier="u1", prompt_cache_key="k") == base


def test_canonical_scalars() -> None:
    assert chat(temperature=1) == chat(temperature=1.0)
    assert chat(stop="x") == chat(stop=["x"])
    assert chat(seed=None) == chat()
    assert chat(temperature=True) != chat(temperature=1)


def test_api_wire_model_and_namespace_are_part_of_the_key() -> None:
    body = {"model": "gpt-4o-mini", "prompt": "hello", "max_tokens": 5}
    completions = cache_key(openai("completions", body))
    chat_key = cache_key(openai("chat", {"model": "gpt-4o-mini", "max_tokens": 5,
                                         "messages": [{"role": "user", "content": "hello"}]}))
    assert completions != chat_key
    req = openai("chat", CHAT)
    assert cache_key(req, "org-a") != cache_key(req, "org-b")
    assert cache_key(req, "org-a") == cache_key(copy.deepcopy(req), "org-a")


def test_a_rewritten_model_in_the_body_wins() -> None:
    req = openai("chat", CHAT)
    routed = openai("chat", CHAT)
    routed.body = {**routed.body, "model": "gpt-4o"}
    assert cache_key(routed) != cache_key(req)
    assert cache_key(routed) == chat(model="gpt-4o")


def test_embeddings_are_cacheable() -> None:
    a = cache_key(openai("embeddings", {"model": "text-embedding-3-small", "input": "hi"}))
    b = cache_key(openai("embeddings", {"model": "text-embedding-3-small", "input": "ho"}))
    assert a is not None and b is not None and a != b


def test_anthropic_ignores_metadata_and_stream_but_not_system() -> None:
    body = {"model": "claude-haiku-4-5", "max_tokens": 64, "system": "be brief",
            "messages": [{"role": "user", "content": "hi"}]}
    base = cache_key(anthropic(body))
    assert base is not None
    assert cache_key(anthropic({**body, "stream": True, "metadata": {"user_id": "u"}})) == base
    assert cache_key(anthropic({**body, "system": "be long"})) != base
    assert cache_key(anthropic({**body, "tools": [{"name": "f", "input_schema": {}}]})) != base


def test_responses_store_is_part_of_the_key() -> None:
    body = {"model": "gpt-4o-mini", "input": "hi"}
    default = cache_key(openai("responses", body))
    assert cache_key(openai("responses", {**body, "store": True})) == default
    assert cache_key(openai("responses", {**body, "store": False})) != default
    assert cache_key(openai("responses", {**body, "stream": True, "user": "x"})) == default


def test_requests_that_are_never_cached() -> None:
    def responses(**extra: Any) -> CanonicalRequest:
        return openai("responses", {"model": "gpt-4o-mini", "input": "hi", **extra})

    never = [
        responses(tools=[{"type": "web_search"}]),
        responses(tools=[{"type": "function", "name": "f"}, {"type": "mcp", "server_url": "x"}]),
        responses(background=True),
        responses(conversation="conv_1"),
        responses(prompt={"id": "pmpt_1"}),
        openai("chat", {**CHAT, "web_search_options": {}}),
        anthropic({"model": "claude-haiku-4-5", "max_tokens": 9,
                   "messages": [{"role": "user", "content": "hi"}],
                   "tools": [{"type": "web_search_20250305", "name": "web_search"}]}),
        anthropic({"model": "claude-haiku-4-5", "max_tokens": 9,
                   "messages": [{"role": "user", "content": "hi"}],
                   "mcp_servers": [{"type": "url", "url": "https://x", "name": "x"}]}),
        AnthropicAdapter().parse("count_tokens", {"model": "claude-haiku-4-5",
                                                  "messages": [{"role": "user",
                                                                "content": "hi"}]}),
    ]
    for req in never:
        assert cache_key(req) is None
        assert uncacheable_reason(req)
    client_tools = [
        responses(tools=[{"type": "function", "name": "f"}, {"type": "custom", "name": "g"}]),
        responses(prompt={"id": "pmpt_1", "version": "3"}),
        anthropic({"model": "claude-haiku-4-5", "max_tokens": 9,
                   "messages": [{"role": "user", "content": "hi"}],
                   "tools": [{"name": "f", "input_schema": {}},
                             {"type": "bash_20250124", "name": "bash"}]}),
    ]
    for req in client_tools:
        assert cache_key(req) is not None


def test_huge_integers_are_not_cached_rather_than_failing() -> None:
    assert chat(seed=2**70) is None


# -- properties ---------------------------------------------------------------------------------

json_scalars = st.none() | st.booleans() | st.integers(-(2**53), 2**53) | st.text(max_size=8) \
    | st.floats(allow_nan=False, allow_infinity=False)
json_values = st.recursive(
    json_scalars,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=6), inner,
                                                                max_size=4),
    max_leaves=20,
)
param_names = st.sampled_from(["temperature", "top_p", "seed", "stop", "response_format",
                               "tool_choice", "logit_bias", "frequency_penalty", "x_custom"])


@settings(max_examples=200, deadline=None)
@given(params=st.dictionaries(param_names, json_values, max_size=5), seed=st.integers(0, 2**32))
def test_key_ignores_key_order_and_attribution(params: dict[str, Any], seed: int) -> None:
    body = {**CHAT, **params}
    base = cache_key(openai("chat", body))
    assert base is not None
    shuffled = reordered({**body, "user": str(seed), "metadata": {"s": str(seed)},
                          "stream": seed % 2 == 0}, random.Random(seed))
    assert cache_key(openai("chat", shuffled)) == base


@settings(max_examples=200, deadline=None)
@given(name=param_names, a=json_values, b=json_values)
def test_different_values_give_different_keys(name: str, a: Any, b: Any) -> None:
    def key(value: Any) -> str | None:
        return cache_key(openai("chat", {**CHAT, name: value}))

    def same_meaning(x: Any, y: Any) -> bool:
        if isinstance(x, bool) or isinstance(y, bool):
            return type(x) is type(y) and bool(x == y)
        if isinstance(x, int | float) and isinstance(y, int | float):
            return float(x) == float(y)
        if name == "stop" and isinstance(x, str) ^ isinstance(y, str):
            return bool([x] == y) if isinstance(x, str) else bool(x == [y])
        return bool(x == y) and _same_types(x, y)

    assert (key(a) == key(b)) == same_meaning(a, b)


def _same_types(x: Any, y: Any) -> bool:
    """Deep equality that tells 1 from 1.0 and True from 1 below the top level."""
    if type(x) is not type(y):
        return False
    if isinstance(x, dict):
        return x.keys() == y.keys() and all(_same_types(x[k], y[k]) for k in x)
    if isinstance(x, list):
        return len(x) == len(y) and all(_same_types(i, j) for i, j in zip(x, y, strict=True))
    if isinstance(x, float):
        return repr(x) == repr(y)  # -0.0 is spelled differently from 0.0
    return bool(x == y)


def test_answers_stored_after_admission_wrote_a_cap() -> None:
    from tokenstile.cache.key import key_to_store

    req = openai("chat", {"model": "gpt-4o-mini",
                          "messages": [{"role": "user", "content": "hi"}]})
    lookup = cache_key(req)
    req.body = {**req.body, "max_completion_tokens": 4096}  # supplied by admission
    forwarded = cache_key(req)
    assert forwarded != lookup

    def body(finish: str) -> bytes:
        return orjson.dumps({"choices": [{"index": 0, "finish_reason": finish,
                                          "message": {"content": "x"}}]})

    assert key_to_store(lookup, req, body("stop")) == lookup
    assert key_to_store(lookup, req, body("length")) == forwarded
    assert key_to_store(forwarded, req, body("length")) == forwarded
    assert key_to_store(None, openai("responses", {"model": "m", "input": "x",
                                                   "background": True}), b"{}") is None


def test_cut_by_output_cap() -> None:
    from tokenstile.cache.answer import cut_by_output_cap

    assert cut_by_output_cap("messages", "anthropic", b'{"stop_reason":"max_tokens"}')
    assert not cut_by_output_cap("messages", "anthropic", b'{"stop_reason":"end_turn"}')
    assert cut_by_output_cap("responses", "openai", orjson.dumps(
        {"status": "incomplete", "incomplete_details": {"reason": "max_output_tokens"}}))
    assert not cut_by_output_cap("responses", "openai", b'{"status":"completed"}')
    assert cut_by_output_cap("completions", "openai", b'{"choices":[{"finish_reason":"length"}]}')
    assert not cut_by_output_cap("embeddings", "openai", b"nonsense")
    assert cut_by_output_cap("chat", "openai", b"nonsense")
