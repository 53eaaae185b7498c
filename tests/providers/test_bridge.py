"""The gateway's bridge from chat completions to an Anthropic upstream: what it forwards
after admission or a fallback changed the body, what it answers, what it refuses."""

from __future__ import annotations

from typing import Any

import orjson
import pytest

from tokenstile import tokens
from tokenstile.errors import GatewayError
from tokenstile.limits.caps import set_output_cap
from tokenstile.providers.bridges import bridge_for
from tokenstile.providers.openai import OpenAIAdapter
from tokenstile.providers.translate import (
    ChatOverMessages,
    StreamTranslator,
    chat_to_messages,
)

MODEL = "claude-haiku-4-5"


def chat(**fields: Any) -> dict[str, Any]:
    return {"model": MODEL, "messages": [{"role": "system", "content": "Be brief."},
                                         {"role": "user", "content": "Hello there"}],
            **fields}


def test_a_cap_set_by_admission_is_forwarded_without_translating_again() -> None:
    req = OpenAIAdapter().parse("chat", chat())
    bridge = ChatOverMessages(req.body, default_max_tokens=4096)
    assert bridge.upstream_body(req)["max_tokens"] == 4096
    set_output_cap(req, 300)
    forwarded = bridge.upstream_body(req)
    assert forwarded["max_tokens"] == 300
    assert forwarded == chat_to_messages(req.body, 4096)
    # a fallback's copy with another model
    req.body = {**req.body, "model": "claude-sonnet-4-6"}
    assert bridge.upstream_body(req) == chat_to_messages(req.body, 4096)
    assert bridge.upstream_body(req)["model"] == "claude-sonnet-4-6"


def test_max_completion_tokens_wins_over_max_tokens_when_patching() -> None:
    req = OpenAIAdapter().parse("chat", chat(max_completion_tokens=50, max_tokens=70))
    bridge = ChatOverMessages(req.body, 4096)
    set_output_cap(req, 20)
    assert req.output_cap_field == "max_completion_tokens"
    assert bridge.upstream_body(req)["max_tokens"] == 20 == \
        chat_to_messages(req.body, 4096)["max_tokens"]


def test_a_rewritten_conversation_is_translated_again() -> None:
    req = OpenAIAdapter().parse("chat", chat(max_tokens=10))
    bridge = ChatOverMessages(req.body, 4096)
    req.body = {**req.body, "messages": [{"role": "user", "content": "Hi [redacted]"}]}
    forwarded = bridge.upstream_body(req)
    assert forwarded["messages"] == [{"role": "user", "content": "Hi [redacted]"}]
    assert "system" not in forwarded


def test_input_is_counted_as_claude_would_be_estimated() -> None:
    bridge = ChatOverMessages(chat(), 4096)
    translated = chat_to_messages(chat(), 4096)
    assert bridge.count_input() == tokens.count_anthropic(
        MODEL, translated["messages"], translated.get("system")) > 0


def test_answers_usage_and_errors_are_translated() -> None:
    bridge = ChatOverMessages(chat(), 4096)
    message = {"id": "msg_1", "type": "message", "role": "assistant", "model": MODEL,
               "content": [{"type": "text", "text": "Hi"}], "stop_reason": "end_turn",
               "usage": {"input_tokens": 5, "cache_read_input_tokens": 3,
                         "output_tokens": 2}}
    usage = bridge.usage_from_body(message)
    assert usage is not None and (usage.input_tokens, usage.cached_input_tokens) == (8, 3)
    raw, parsed = bridge.response_body(orjson.dumps(message), message)
    assert orjson.loads(raw) == parsed
    assert parsed["object"] == "chat.completion"
    assert parsed["choices"][0]["message"]["content"] == "Hi"
    assert parsed["choices"][0]["finish_reason"] == "stop"
    assert parsed["usage"]["prompt_tokens"] == 8
    odd = b'{"something": "else"}'
    assert bridge.response_body(odd, orjson.loads(odd)) == (odd, orjson.loads(odd))
    error = orjson.loads(bridge.error_body(429, orjson.dumps(
        {"type": "error", "error": {"type": "rate_limit_error", "message": "slow down"}})))
    assert error == {"error": {"message": "slow down", "type": "rate_limit_exceeded",
                               "param": None, "code": "rate_limit_error"}}
    req = OpenAIAdapter().parse("chat", chat(stream=True,
                                             stream_options={"include_usage": True}))
    assert isinstance(bridge.observer(req), StreamTranslator)


@pytest.mark.parametrize("api", ["completions", "embeddings", "responses"])
def test_other_openai_apis_have_no_bridge_to_anthropic(api: Any) -> None:
    with pytest.raises(GatewayError) as caught:
        bridge_for(api, "openai", "anthropic", "claude", {"model": MODEL}, 4096)
    assert caught.value.status == 400 and caught.value.code == "unsupported_api"
    assert "not supported by the anthropic upstream 'claude'" in caught.value.message


def test_token_counting_has_no_bridge_to_openai_upstreams() -> None:
    with pytest.raises(GatewayError) as caught:
        bridge_for("count_tokens", "anthropic", "openai", "openai", {"model": "gpt-4o"}, 4096)
    assert caught.value.status == 400
    assert "needs an anthropic upstream" in caught.value.message


def test_untranslatable_requests_are_refused_when_the_bridge_is_built() -> None:
    with pytest.raises(GatewayError) as caught:
        bridge_for("chat", "openai", "anthropic", "anthropic", chat(n=3), 4096)
    assert caught.value.param == "n"
