"""Counts and tiers read from usage blocks, and the ``messages`` and ``tools`` arrays every
chat-shaped request checks, the same way for every provider."""

from __future__ import annotations

from typing import Any

import pytest

from tokenstile.errors import PREFIX, GatewayError
from tokenstile.providers.anthropic import AnthropicAdapter
from tokenstile.providers.bedrock import BedrockAdapter
from tokenstile.providers.counts import service_tier, token_count, wants_usage_chunk
from tokenstile.providers.messages_over_chat import messages_to_chat
from tokenstile.providers.openai import OpenAIAdapter
from tokenstile.providers.translate import chat_to_messages


@pytest.mark.parametrize(("value", "expected"), [
    (7, 7), (0, 0), (-3, 0), (True, 0), (2.5, 0), ("12", 0), (None, 0),
])
def test_a_count_is_a_positive_integer_or_nothing(value: Any, expected: int) -> None:
    assert token_count(value) == expected


@pytest.mark.parametrize(("value", "expected"), [
    ("Priority", "priority"), ("  flex ", "flex"), ("", None), ("   ", None), (None, None),
    ({"type": "flex"}, None), ("x" * 40, "x" * 32),
])
def test_a_tier_is_a_short_lower_case_name(value: Any, expected: str | None) -> None:
    assert service_tier(value) == expected


def _refusal(parse: Any, body: dict[str, Any]) -> tuple[str | None, str | None]:
    with pytest.raises(GatewayError) as caught:
        parse(body)
    return caught.value.param, caught.value.message.removeprefix(PREFIX)


PARSERS = {
    "chat": lambda body: OpenAIAdapter().parse("chat", {"model": "gpt-4o", **body}),
    "messages": lambda body: AnthropicAdapter().parse(
        "messages", {"model": "claude-haiku-4-5", "max_tokens": 5, **body}),
    "converse": lambda body: BedrockAdapter().parse(
        "converse", {"model": "amazon.nova-lite-v1:0", **body}),
    "chat to messages": lambda body: chat_to_messages({"model": "claude-haiku-4-5", **body}),
}


@pytest.mark.parametrize("name", sorted(PARSERS))
@pytest.mark.parametrize(("body", "param", "message"), [
    ({}, "messages", "'messages' is required"),
    ({"messages": []}, "messages", "'messages' must be a non-empty array"),
    ({"messages": "hi"}, "messages", "'messages' must be a non-empty array"),
    ({"messages": [3]}, "messages[0]", "'messages[0]' must be an object"),
])
def test_every_chat_shaped_request_checks_messages_alike(
        name: str, body: dict[str, Any], param: str, message: str) -> None:
    assert _refusal(PARSERS[name], body) == (param, message)


TOOL_PARSERS = {
    "messages": PARSERS["messages"],
    "chat to messages": PARSERS["chat to messages"],
    "messages to chat": lambda body: messages_to_chat(
        {"model": "gpt-4o", "max_tokens": 5, **body}, 4096),
}


@pytest.mark.parametrize("name", sorted(TOOL_PARSERS))
@pytest.mark.parametrize(("tools", "param", "message"), [
    ({"name": "f"}, "tools", "'tools' must be an array"),
    (["f"], "tools[0]", "'tools[0]' must be an object"),
])
def test_every_tools_array_is_checked_alike(name: str, tools: Any, param: str,
                                            message: str) -> None:
    body = {"messages": [{"role": "user", "content": "hi"}], "tools": tools}
    assert _refusal(TOOL_PARSERS[name], body) == (param, message)


@pytest.mark.parametrize(("body", "expected"), [
    ({"stream_options": {"include_usage": True}}, True),
    ({"stream_options": {"include_usage": "true"}}, False),
    ({"stream_options": {"include_usage": False}}, False),
    ({"stream_options": None}, False),
    ({}, False),
])
def test_only_include_usage_true_asks_for_the_usage_chunk(body: dict[str, Any],
                                                          expected: bool) -> None:
    assert wants_usage_chunk(body) is expected
