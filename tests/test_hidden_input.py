"""What counts as input the gateway cannot see, and the worst case reserved for it."""

from __future__ import annotations

import base64
from typing import Any

import pytest

from tokenstile.config import HiddenInputConfig
from tokenstile.hidden_input import HiddenInput, hidden_sources
from tokenstile.prices import ModelPrice, Pricer

PDF = base64.b64encode(b"%PDF-1.7\n1 0 obj << /Type /Page >> endobj\n").decode()


@pytest.mark.parametrize(("api", "body", "expected"), [
    ("responses", {"input": "hi"}, ()),
    ("responses", {"input": "hi", "previous_response_id": "resp_1"},
     ("previous_response_id",)),
    ("responses", {"input": "hi", "conversation": {"id": "conv_1"}}, ("conversation",)),
    ("responses", {"prompt": {"id": "pmpt_1", "version": "2"}}, ("prompt",)),
    ("responses", {"input": [{"type": "item_reference", "id": "msg_1"}]}, ("item_reference",)),
    ("responses", {"input": [{"role": "user", "content": [
        {"type": "input_file", "file_id": "file-1"}]}]}, ("file",)),
    ("responses", {"input": [{"role": "user", "content": [
        {"type": "input_file", "file_url": "https://x/y.pdf"}]}]}, ("file",)),
    ("responses", {"input": [{"role": "user", "content": [
        {"type": "input_file", "file_data": "data:application/pdf;base64," + PDF}]}]}, ()),
    ("responses", {"input": [{"role": "user", "content": [
        {"type": "input_image", "image_url": "https://x/y.png"}]}]}, ()),  # bounded
    ("responses", {"input": "hi", "tools": [{"type": "mcp", "server_label": "s"}]}, ("mcp",)),
    ("chat", {"messages": [{"role": "user", "content": [
        {"type": "file", "file": {"file_id": "file-1"}}]}]}, ("file",)),
    ("chat", {"messages": [{"role": "user", "content": [
        {"type": "file", "file": {"file_data": PDF}}]}]}, ()),
    ("messages", {"messages": [{"role": "user", "content": [
        {"type": "document", "source": {"type": "file", "file_id": "f"}}]}]}, ("document",)),
    ("messages", {"messages": [{"role": "user", "content": [{"type": "tool_result",
        "content": [{"type": "document", "source": {"type": "url", "url": "u"}}]}]}]},
     ("document",)),
    ("messages", {"messages": [{"role": "user", "content": [
        {"type": "document", "source": {"type": "text", "data": "plain"}}]}]}, ()),
    ("messages", {"messages": [], "mcp_servers": [{"url": "u"}]}, ("mcp",)),
    ("embeddings", {"input": "x", "previous_response_id": "resp_1"}, ()),
])
def test_hidden_sources(api: str, body: dict[str, Any], expected: tuple[str, ...]) -> None:
    assert hidden_sources(api, body) == expected


def test_hidden_sources_survive_hostile_nesting() -> None:
    node: Any = {"type": "file", "file": {"file_id": "f"}}
    for _ in range(5000):
        node = {"content": [node]}
    assert hidden_sources("chat", {"messages": [node]}) == ()
    tool: Any = {"type": "input_file", "file_id": "f"}
    for _ in range(5000):
        tool = {"type": "function_call_output", "output": tool}
    assert hidden_sources("responses", {"input": [tool]}) == ()
    shallow = {"type": "function_call_output", "output": [{"type": "input_file",
                                                           "file_id": "f"}]}
    assert hidden_sources("responses", {"input": [shallow]}) == ("file",)


def test_worst_case_is_the_setting_else_the_context_window_else_the_fallback() -> None:
    config = HiddenInputConfig(max_tokens={"gpt-4o": 5_000, "gpt-4*": 9_000, "gpt-4o-m*": 1},
                               fallback_tokens=70_000)
    hidden = HiddenInput(config, Pricer())
    assert hidden.worst_case("gpt-4o", 100).tokens == 5_100  # exact name beats a pattern
    assert hidden.worst_case("openai/gpt-4o", 100).tokens == 5_100
    assert hidden.worst_case("gpt-4.1", 100).tokens == 9_100
    assert hidden.worst_case("gpt-4o-mini", 100).tokens == 101  # the longer pattern
    # Capped at the context window: no call has more input.
    capped = HiddenInput(HiddenInputConfig(max_tokens={"gpt-4o": 500_000}), Pricer())
    assert capped.worst_case("gpt-4o", 100).tokens == 128_000
    default = HiddenInput(HiddenInputConfig(), Pricer())
    worst = default.worst_case("o4-mini", 300)
    assert (worst.tokens, worst.basis) == (200_000, "the context window of o4-mini, "
                                                    "200,000 tokens")
    assert default.worst_case("gpt-4o", 150_000).tokens == 150_000  # never below visible
    unknown = default.worst_case("my-local-llama", 10)
    assert unknown.tokens == 200_010
    assert "hidden_input.fallback_tokens = 200,000" in unknown.basis


def test_context_windows_come_from_the_price_table() -> None:
    pricer = Pricer({"my-model": ModelPrice(input=1, output=1)})  # type: ignore[arg-type]
    assert pricer.context_window("gpt-4o") == 128_000
    assert pricer.context_window("gpt-4.1-mini") == 1_000_000
    assert pricer.context_window("claude-sonnet-4-5") == 200_000
    assert pricer.context_window("my-model") is None
    assert pricer.context_window("") is None
