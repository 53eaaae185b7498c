"""Per-request limits that leave no room for an answer refuse the request: one forwarded
without an output cap could write any amount past the limit."""

from __future__ import annotations

from typing import Any

import openai
import pytest

from tests.conftest import FakeHandle, Gateway


def sdk(gateway: Gateway, key: str) -> openai.OpenAI:
    return openai.OpenAI(base_url=gateway.v1, api_key=key, max_retries=0)


def padded(tokens: int) -> list[dict[str, str]]:
    """A chat whose input is about ``tokens`` tokens ("alpha" is one o200k token)."""
    return [{"role": "user", "content": " ".join(["alpha"] * tokens)}]


def test_input_padded_to_a_request_token_limit_is_refused_not_uncapped(
        make_gateway: Any, fake: FakeHandle) -> None:
    gateway = make_gateway({"projects": {"p": {"request_limit": 120}}})
    key = gateway.key(project="p")
    api = sdk(gateway, key)
    # Room left: the cap supplied fits what the input leaves.
    api.chat.completions.create(model="gpt-4o-mini", messages=padded(50))
    record = fake.fake.tally.last
    assert record is not None and 1 <= record.body["max_tokens"] <= 70
    served = fake.fake.tally.requests
    # Input that fills the limit: no cap would fit, so nothing is forwarded.
    for tokens in (113, 120, 200):  # 113 words: 120 tokens with the chat overhead
        with pytest.raises(openai.UnprocessableEntityError) as refused:
            api.chat.completions.create(model="gpt-4o-mini", messages=padded(tokens))
        message = refused.value.message
        assert "leaves no room for output" in message, message
        assert "project 'p' allows 120 tokens per request; shorten the input" in message
        assert refused.value.body["code"] == "request_limit_exceeded"  # type: ignore[index]
    assert fake.fake.tally.requests == served
    blocked = [r for r in gateway.rows() if r.outcome == "blocked"]
    assert [r.block_reason for r in blocked] == \
        ["request_limit:projects.p.request_limit"] * 3


def test_answers_that_cannot_each_get_a_token_are_refused(
        make_gateway: Any, fake: FakeHandle) -> None:
    gateway = make_gateway({"limits": [
        {"name": "short", "scope": "project", "match": "short", "window": "request",
         "unit": "output_tokens", "amount": 3},
        {"name": "room", "scope": "project", "match": "room", "window": "request",
         "unit": "tokens", "amount": 60}]})
    short, room = sdk(gateway, gateway.key(project="short")), \
        sdk(gateway, gateway.key(project="room"))
    # Five answers of at least one token each would pass a 3-token output limit.
    with pytest.raises(openai.UnprocessableEntityError) as refused:
        short.chat.completions.create(model="gpt-4o-mini", messages=padded(5), n=5)
    assert "asks for 5 answers but project 'short' allows 3 output tokens per request" in \
        refused.value.message
    # Input that leaves less room than one token for each of the answers asked for.
    with pytest.raises(openai.UnprocessableEntityError) as refused:
        room.chat.completions.create(model="gpt-4o-mini", messages=padded(52), n=3)
    assert "59 input tokens, which leaves no room for output for each of the 3 answers " \
        "asked for" in refused.value.message
    assert fake.fake.tally.requests == 0
    # Within the limits: forwarded with caps that keep every answer inside them.
    short.chat.completions.create(model="gpt-4o-mini", messages=padded(5), n=3)
    room.chat.completions.create(model="gpt-4o-mini", messages=padded(50), n=3)
    assert [r.body["max_tokens"] for r in fake.fake.tally.records] == [1, 1]
    rows = [r for r in gateway.rows() if r.outcome == "ok"]
    assert rows[0].output_tokens <= 3 and rows[1].input_tokens + rows[1].output_tokens <= 60
