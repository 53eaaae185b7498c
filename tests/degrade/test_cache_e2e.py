"""The response cache through the gateway: hits are free and say what they saved, a stored
answer replays as a stream, clients can skip it, and a blocked budget falls back to it."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import openai
import pytest

from tests.conftest import FakeHandle, Gateway

HELLO = [{"role": "user", "content": "What is a token budget?"}]


def sdk(gateway: Gateway, key: str) -> openai.OpenAI:
    return openai.OpenAI(base_url=gateway.v1, api_key=key, max_retries=0)


@pytest.fixture
def cached(make_gateway: Any, tmp_path: Path) -> Gateway:
    gateway: Gateway = make_gateway({"cache": {"store": f"sqlite:///{tmp_path}/cache.db"}})
    return gateway


def test_a_repeated_request_is_a_free_hit(cached: Gateway, fake: FakeHandle) -> None:
    api = sdk(cached, cached.key())
    first = api.chat.completions.with_raw_response.create(model="gpt-4o-mini",
                                                          messages=HELLO, max_tokens=8)
    second = api.chat.completions.with_raw_response.create(model="gpt-4o-mini",
                                                           messages=HELLO, max_tokens=8)
    assert first.headers["x-tokenstile-cache"] == "miss"
    assert second.headers["x-tokenstile-cache"] == "hit"
    assert second.parse().choices[0].message.content == \
        first.parse().choices[0].message.content
    assert fake.fake.tally.requests == 1
    miss, hit = cached.rows()
    assert (miss.cache, hit.cache) == ("miss", "hit")
    assert hit.cost_nano == 0 and hit.input_tokens == hit.output_tokens == 0
    assert hit.saved_nano == miss.cost_nano > 0
    assert hit.detail["saved_output_tokens"] == miss.output_tokens


def test_a_stored_answer_replays_as_a_stream_and_back(cached: Gateway,
                                                      fake: FakeHandle) -> None:
    api = sdk(cached, cached.key())
    plain = api.chat.completions.create(model="gpt-4o-mini", messages=HELLO, max_tokens=6)
    chunks = list(api.chat.completions.create(model="gpt-4o-mini", messages=HELLO,
                                              max_tokens=6, stream=True))
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == plain.choices[0].message.content
    assert all(c.usage is None for c in chunks)  # the client did not ask for usage
    streamed_first = [{"role": "user", "content": "Another question, streamed first."}]
    list(api.chat.completions.create(model="gpt-4o-mini", messages=streamed_first,
                                     max_tokens=5, stream=True))
    again = api.chat.completions.with_raw_response.create(model="gpt-4o-mini",
                                                          messages=streamed_first, max_tokens=5)
    assert again.headers["x-tokenstile-cache"] == "hit"
    assert fake.fake.tally.requests == 2


def test_clients_can_skip_the_cache_and_tenants_never_share_it(
        cached: Gateway, fake: FakeHandle) -> None:
    api = sdk(cached, cached.key())
    api.chat.completions.create(model="gpt-4o-mini", messages=HELLO, max_tokens=4)
    skipped = api.chat.completions.with_raw_response.create(
        model="gpt-4o-mini", messages=HELLO, max_tokens=4,
        extra_headers={"x-tokenstile-cache": "skip"})
    assert skipped.headers["x-tokenstile-cache"] == "skip"
    other_org = sdk(cached, cached.key(organization="other"))
    other = other_org.chat.completions.with_raw_response.create(
        model="gpt-4o-mini", messages=HELLO, max_tokens=4)
    assert other.headers["x-tokenstile-cache"] == "miss"
    assert fake.fake.tally.requests == 3


def test_a_blocked_budget_answers_from_the_cache(make_gateway: Any, fake: FakeHandle) -> None:
    gateway = make_gateway({
        "projects": {"p": {"daily_limit": 60}},
        "alerts": [{"threshold": 1.0, "action": "block", "fallback": "cache"}],
    })
    api = sdk(gateway, gateway.key(project="p"))
    first = api.chat.completions.create(model="gpt-4o-mini", messages=HELLO, max_tokens=30)
    # the budget is now too low for this request again: the stored answer is served
    raw = api.chat.completions.with_raw_response.create(model="gpt-4o-mini", messages=HELLO,
                                                        max_tokens=30)
    assert raw.headers["x-tokenstile-degraded"] == "cached"
    assert raw.parse().choices[0].message.content == first.choices[0].message.content
    with pytest.raises(openai.RateLimitError):  # nothing stored for this one
        api.chat.completions.create(model="gpt-4o-mini", max_tokens=30,
                                    messages=[{"role": "user", "content": "new question"}])
    assert fake.fake.tally.requests == 1
    rows = gateway.rows()
    assert [(r.outcome, r.cache, r.degraded) for r in rows] == [
        ("ok", "miss", []), ("ok", "hit", ["cached"]), ("blocked", "miss", [])]
