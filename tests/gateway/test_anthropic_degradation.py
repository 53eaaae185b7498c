"""Degradation applies to Claude as to OpenAI models: over-long conversations are trimmed
(keeping Anthropic's user-first rule), and a budget past a threshold switches to a cheaper
Claude model, on /v1/messages and on chat completions served by Claude."""

from __future__ import annotations

from typing import Any

import anthropic
import openai

from tests.conftest import FakeHandle
from tests.gateway.test_anthropic_sdk import anthropic_upstream

SONNET, HAIKU = "claude-sonnet-4-6", "claude-haiku-4-5"


def history(turns: int) -> list[Any]:
    out: list[Any] = []
    for i in range(turns):
        out.append({"role": "user", "content": f"question {i} " + "words " * 30})
        out.append({"role": "assistant", "content": f"answer {i} " + "words " * 30})
    out.append({"role": "user", "content": "and now?"})
    return out


def test_an_over_long_conversation_is_trimmed_user_first(
        make_gateway: Any, fake: FakeHandle) -> None:
    gateway = make_gateway({**anthropic_upstream(fake),
                            "features": {"chat": {"max_input": 120, "over_budget": "trim"}}})
    key = gateway.key()
    api = anthropic.Anthropic(base_url=gateway.url, api_key=key, max_retries=0,
                              default_headers={"x-tokenstile-feature": "chat"})
    sent = history(6)
    api.messages.create(model=HAIKU, max_tokens=5, system="Be brief.", messages=sent)
    record = fake.fake.tally.last
    assert record is not None
    forwarded = record.body["messages"]
    assert 0 < len(forwarded) < len(sent)
    assert forwarded[0]["role"] == "user" and forwarded[-1] == sent[-1]
    assert record.body["system"] == "Be brief."
    assert record.input_tokens <= 120 * 1.2
    [row] = gateway.rows()
    assert "trimmed" in row.degraded and row.input_tokens == record.input_tokens


def test_a_budget_past_its_threshold_switches_to_a_cheaper_claude(
        make_gateway: Any, fake: FakeHandle) -> None:
    gateway = make_gateway({
        **anthropic_upstream(fake),
        "limits": [{"name": "daily", "scope": "project", "window": "day", "unit": "tokens",
                    "amount": 1000, "thresholds": [
                        {"threshold": 0.05, "action": "downgrade", "downgrade_to": HAIKU},
                        {"threshold": 1.0, "action": "block"}]}],
    })
    key = gateway.key()
    claude = anthropic.Anthropic(base_url=gateway.url, api_key=key, max_retries=0)
    gpt = openai.OpenAI(base_url=gateway.v1, api_key=key, max_retries=0)
    hello: list[Any] = [{"role": "user", "content": "hello"}]
    claude.messages.create(model=SONNET, max_tokens=60, messages=[
        {"role": "user", "content": "hello [[fake:output_tokens=60]]"}])  # over 5 %
    second = claude.messages.create(model=SONNET, max_tokens=5, messages=hello)
    translated = gpt.chat.completions.create(model=SONNET, max_tokens=5, messages=hello)
    assert second.model == HAIKU and translated.model == HAIKU
    assert [r.body["model"] for r in fake.fake.tally.records] == [SONNET, HAIKU, HAIKU]
    rows = gateway.rows()
    assert [(r.requested_model, r.served_model) for r in rows] == [
        (SONNET, SONNET), (SONNET, HAIKU), (SONNET, HAIKU)]
    assert [("downgraded" in r.degraded) for r in rows] == [False, True, True]
    assert rows[2].api == "chat" and rows[2].upstream == "anthropic"
