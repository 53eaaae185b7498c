"""The response cache through the gateway: hits are free and say what they saved, a stored
answer replays as a stream, clients can skip it, and a blocked budget falls back to it."""

from __future__ import annotations

import asyncio
import uuid
from pathlib import Path
from typing import Any

import openai
import pytest
import redis

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


REDIS = "redis://127.0.0.1:6379/15"
SLOW = [{"role": "user", "content": "One answer for everyone, please. [[fake:delay_ms=400]]"}]


async def identical_requests(gateways: list[Gateway], keys: list[str],
                             count: int) -> list[tuple[str, str]]:
    """``count`` identical requests at once, spread over ``gateways``, every third
    streamed: (x-tokenstile-cache, answer text) of each ("error" for an error)."""
    clients = [openai.AsyncOpenAI(base_url=g.v1, api_key=k, max_retries=0)
               for g, k in zip(gateways, keys, strict=True)]

    async def one(i: int) -> tuple[str, str]:
        api = clients[i % len(clients)]
        if i % 3 == 2:
            async with api.chat.completions.with_streaming_response.create(
                    model="gpt-4o-mini", messages=SLOW, max_tokens=8, stream=True) as raw:
                text = ""
                async for chunk in await raw.parse():
                    if chunk.choices:
                        text += chunk.choices[0].delta.content or ""
                return raw.headers["x-tokenstile-cache"], text
        reply = await api.chat.completions.with_raw_response.create(
            model="gpt-4o-mini", messages=SLOW, max_tokens=8)
        return reply.headers["x-tokenstile-cache"], \
            reply.parse().choices[0].message.content or ""

    async def answer(i: int) -> tuple[str, str]:
        try:
            return await one(i)
        except openai.APIStatusError as err:
            return "error", str(err.status_code)

    try:
        return await asyncio.gather(*(answer(i) for i in range(count)))
    finally:
        for client in clients:
            await client.close()


def check_one_flight(answers: list[tuple[str, str]], rows: list[Any],
                     fake: FakeHandle) -> None:
    assert fake.fake.tally.requests == 1  # one upstream call for ten identical requests
    assert sorted(cache for cache, _ in answers) == ["hit"] * 9 + ["miss"]
    assert len({text for _, text in answers}) == 1  # everyone got the one answer
    billed = [r for r in rows if r.cost_nano > 0]
    hits = [r for r in rows if r.cache == "hit"]
    assert len(rows) == 10 and len(billed) == 1 and len(hits) == 9
    assert billed[0].cache == "miss" and billed[0].outcome == "ok"
    assert all(r.cost_nano == 0 and r.input_tokens == r.output_tokens == 0 and
               r.saved_nano == billed[0].cost_nano for r in hits)


def test_identical_misses_in_flight_go_upstream_once(cached: Gateway,
                                                     fake: FakeHandle) -> None:
    answers = asyncio.run(identical_requests([cached], [cached.key()], 10))
    check_one_flight(answers, cached.rows(), fake)


def test_identical_misses_go_upstream_once_across_gateways_sharing_redis(
        make_gateway: Any, fake: FakeHandle) -> None:
    prefix = f"tstest-flight-{uuid.uuid4().hex[:12]}"
    store = f"{REDIS}?prefix={prefix}"
    gateways = [make_gateway({"cache": {"store": store}}) for _ in range(2)]
    try:
        answers = asyncio.run(identical_requests(gateways, [g.key() for g in gateways], 10))
        check_one_flight(answers, [row for g in gateways for row in g.rows()], fake)
        with redis.Redis.from_url(REDIS) as client:  # the answer stays, the lock is gone
            assert len(list(client.scan_iter(match=f"{prefix}:*"))) == 1
            assert not list(client.scan_iter(match=f"{prefix}:lock:*"))
    finally:
        with redis.Redis.from_url(REDIS) as client:
            keys = list(client.scan_iter(match=f"{prefix}:*"))
            if keys:
                client.delete(*keys)


def test_a_leader_without_an_answer_hands_over(cached: Gateway, fake: FakeHandle) -> None:
    """The first request fails upstream: those waiting on it do not all go upstream; one
    leads next, and the rest are served its answer."""
    fake.fake.script(["[[fake:status=500]]"])
    answers = asyncio.run(identical_requests([cached], [cached.key()], 4))
    assert fake.fake.tally.requests == 2
    assert sorted(cache for cache, _ in answers) == ["error", "hit", "hit", "miss"]
