"""Answer word lists see the arguments a model writes for a tool, whole and streamed (where
they arrive a token at a time), on chat completions, the Responses API and Anthropic
messages, with the official SDKs against the fake upstream.

The fake calls the tool named by ``[[fake:tool_call=…]]`` with arguments drawn from the
tool's schema: a property with an ``enum`` gets its first value, so the schema below makes
the model write ``{"query": "the Straße to project zeus", "limit": 1}``.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

import anthropic
import openai
import pytest

from tests.conftest import FakeHandle
from tests.gateway.test_anthropic_policies import claude, gateway_with
from tests.policies.conftest import MODEL, PolicyGateway, message

Make = Callable[..., PolicyGateway]
WORDS = {"wordlists": {"secrets": ["project zeus", "STRASSE"]}}
QUERY = "the Straße to project zeus"
SCHEMA = {"type": "object", "properties": {"query": {"type": "string", "enum": [QUERY]},
                                           "limit": {"type": "integer"}}}
TOOL = {"type": "function", "function": {"name": "lookup", "parameters": SCHEMA}}
CALL = "Find it [[fake:tool_call=lookup]]"


def chat_arguments(gw: PolicyGateway, streamed: bool) -> str:
    if not streamed:
        reply = gw.chat(CALL, max_tokens=50, tools=[TOOL])
        return str(reply.choices[0].message.tool_calls[0].function.arguments)
    parts: list[str] = []
    for chunk in gw.chat(CALL, max_tokens=50, tools=[TOOL], stream=True):
        for choice in chunk.choices:
            for call in choice.delta.tool_calls or ():
                if call.function is not None and call.function.arguments:
                    parts.append(call.function.arguments)
    assert len(parts) > 1 or not streamed or "****" in parts[0]
    return "".join(parts)


@pytest.mark.parametrize("streamed", [False, True])
def test_chat_tool_arguments_are_redacted(policy_gateway: Make, streamed: bool) -> None:
    gw = policy_gateway({**WORDS, "response_wordlists": "secrets:redact"})
    arguments = chat_arguments(gw, streamed)
    assert json.loads(arguments) == {"query": "the **** to ****", "limit": 1}
    assert "response_wordlists:redacted" in gw.rows()[0].flags


@pytest.mark.parametrize("streamed", [False, True])
def test_chat_tool_arguments_can_block_the_answer(policy_gateway: Make,
                                                  streamed: bool) -> None:
    gw = policy_gateway({**WORDS, "response_wordlists": "secrets:block"})
    with pytest.raises(openai.APIError) as caught:
        chat_arguments(gw, streamed)
    text = caught.value.message if streamed else message(caught)  # type: ignore[arg-type]
    prefix = "tokenstile: the answer was cut off: " if streamed else "tokenstile: "
    assert text == prefix + ("the answer contains words from the 'secrets' word list, "
                             "blocked for this gateway")
    [row] = gw.rows()
    assert (row.status, row.block_reason) == (422, "policy:wordlist_blocked")


def test_a_streamed_block_sends_no_piece_of_the_arguments(policy_gateway: Make) -> None:
    gw = policy_gateway({**WORDS, "response_wordlists": "secrets:block"})
    seen: list[str] = []
    with pytest.raises(openai.APIError):
        for chunk in gw.chat(CALL, max_tokens=50, tools=[TOOL], stream=True):
            for choice in chunk.choices:
                for call in choice.delta.tool_calls or ():
                    seen.append(call.function.arguments if call.function else "")
    assert "".join(seen) == ""


def test_clean_arguments_pass_unchanged_and_audit_is_recorded(policy_gateway: Make) -> None:
    gw = policy_gateway({"wordlists": {"other": ["nothing here"], "seen": ["zeus"]},
                         "response_wordlists": "other:block,seen:audit"})
    arguments = chat_arguments(gw, streamed=True)
    assert json.loads(arguments) == {"query": QUERY, "limit": 1}
    assert gw.rows()[0].flags == ["response_wordlists:audit:seen"]


@pytest.mark.parametrize("streamed", [False, True])
def test_responses_function_call_arguments_are_redacted(policy_gateway: Make,
                                                        streamed: bool) -> None:
    gw = policy_gateway({**WORDS, "response_wordlists": "secrets:redact"})
    tool = {"type": "function", "name": "lookup", "parameters": SCHEMA}
    api = gw.client().responses
    if not streamed:
        answer = api.create(model=MODEL, input=CALL, tools=[tool])  # type: ignore[list-item]
        arguments = answer.output[0].arguments  # type: ignore[union-attr]
        assert json.loads(arguments) == {"query": "the **** to ****", "limit": 1}
        return
    events = list(api.create(model=MODEL, input=CALL, tools=[tool],  # type: ignore[list-item]
                             stream=True))
    deltas = "".join(e.delta for e in events
                     if e.type == "response.function_call_arguments.delta")
    done = [e.arguments for e in events if e.type == "response.function_call_arguments.done"]
    completed = events[-1]
    assert completed.type == "response.completed"
    final = completed.response.output[0].arguments  # type: ignore[union-attr]
    for text in (deltas, *done, final):
        assert json.loads(text) == {"query": "the **** to ****", "limit": 1}


ANTHROPIC_TOOL = {"name": "lookup", "description": "Look it up", "input_schema": SCHEMA}


@pytest.mark.parametrize("streamed", [False, True])
def test_anthropic_tool_use_input_is_redacted(make_gateway: Any, fake: FakeHandle,
                                              streamed: bool) -> None:
    gateway = gateway_with(make_gateway, fake, {**WORDS, "response_wordlists": "secrets:redact"})
    fields: dict[str, Any] = {"model": "claude-haiku-4-5", "max_tokens": 50,
                              "tools": [ANTHROPIC_TOOL],
                              "messages": [{"role": "user", "content": CALL}]}
    client = claude(gateway)
    if streamed:
        with client.messages.stream(**fields) as stream:
            pieces = [e.delta.partial_json for e in stream
                      if e.type == "content_block_delta" and e.delta.type == "input_json_delta"]
            final = stream.get_final_message()
        assert json.loads("".join(pieces)) == {"query": "the **** to ****", "limit": 1}
    else:
        final = client.messages.create(**fields)
    [block] = [b for b in final.content if b.type == "tool_use"]
    assert block.input == {"query": "the **** to ****", "limit": 1}


def test_anthropic_tool_use_input_can_block(make_gateway: Any, fake: FakeHandle) -> None:
    gateway = gateway_with(make_gateway, fake, {**WORDS, "response_wordlists": "secrets:block"})
    with pytest.raises(anthropic.UnprocessableEntityError):
        claude(gateway).messages.create(
            model="claude-haiku-4-5", max_tokens=50, tools=[ANTHROPIC_TOOL],  # type: ignore[list-item]
            messages=[{"role": "user", "content": CALL}])
    assert gateway.rows()[0].block_reason == "policy:wordlist_blocked"
